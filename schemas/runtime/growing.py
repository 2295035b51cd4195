"""Tables that grow at their end without copying what they hold.

A bundle that takes new items (`schemas.runtime.loaded_bundle.LoadedBundle.with_items`) is a copy whose tables have
rows the live bundle's lack; requests in flight keep reading the live one. Copying every table for
every new item costs milliseconds that requests wait for. `appended` instead writes the new rows
into spare rows after a table's last one and returns a longer view of the same buffer: a view
already handed out never reads past its own length, so it is unchanged. Only the newest view of a
buffer grows in place; appending to an older one copies (it would overwrite rows a newer view holds).
"""

import threading
import weakref

import numpy as np

GROWTH = 2
"""A full buffer is replaced by one this many times as long (amortised: each row is copied O(1) times)."""

_rows_used: dict[int, int] = {}
"""id(buffer) -> the length of its newest view, while the buffer lives."""
_lock = threading.Lock()


def appended(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`table` [N, ...] with `rows` [R, ...] after its rows: [N + R, ...]; `table` is unchanged."""
    length, added = len(table), len(rows)
    with _lock:
        buffer = table.base
        if buffer is not None and _rows_used.get(id(buffer)) == length and length + added <= len(buffer):
            buffer[length : length + added] = rows
            _rows_used[id(buffer)] = length + added
            return buffer[: length + added]
        buffer = np.empty((max(GROWTH * length, length + added), *table.shape[1:]), table.dtype)
        buffer[:length], buffer[length : length + added] = table, rows
        _rows_used[id(buffer)] = length + added
        weakref.finalize(buffer, _rows_used.pop, id(buffer), None)
        return buffer[: length + added]
