"""The feature job's Python operators driven without Flink: a fake keyed state that pickles what it
holds (as Flink's does, so a restore copies nothing by reference), a writer that keeps Redis
writes in memory, and checkpoints that are copies of the state."""

import copy
import pickle
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pyflink.common import Row

from schemas import sample_log
from schemas.config import Settings
from schemas.events import Event
from schemas.features import FeatureSpec
from schemas.redis_format import KeyKind, redis_key
from schemas.runtime.features import update_seen
from streams.operators import SAMPLES, JobParameters, UserFeaturesFunction


class FakeMapState:
    def __init__(self, stored: dict[str, bytes]):
        self.stored = stored

    def get(self, key: str) -> Any:
        value = self.stored.get(key)
        return None if value is None else pickle.loads(value)

    def put_all(self, entries: dict[str, Any]) -> None:
        self.stored.update((key, pickle.dumps(value)) for key, value in entries.items())

    def items(self) -> list[tuple[str, Any]]:
        return [(key, pickle.loads(value)) for key, value in self.stored.items()]


class FakeValueState:
    """One value per key, as Flink's: the key of `keyed`'s current call."""

    def __init__(self, stored: dict[Any, bytes], keyed: "KeyedState"):
        self.stored, self.keyed = stored, keyed

    def value(self) -> Any:
        value = self.stored.get(self.keyed.current_key)
        return None if value is None else pickle.loads(value)

    def update(self, value: Any) -> None:
        self.stored[self.keyed.current_key] = pickle.dumps(value)

    def clear(self) -> None:
        self.stored.pop(self.keyed.current_key, None)


class MemoryWriter:
    """Keeps the newest (version, value) per key, as WRITE_FEATURES leaves Redis, under the keys the
    feature store builds in the operators' namespace."""

    def __init__(self, namespace: str = "test") -> None:
        self.namespace = namespace
        self.stored: dict[str, tuple[int, Any]] = {}
        self.pending: dict[str, tuple[int, Any]] = {}
        self.latest: dict[str, float] = {}
        self.seen: dict[str, dict[str, int]] = {}
        """The seen sets, as ZADD GT and the trim leave them."""
        self.ttls: dict[str, int] = {}
        """Each key's time to live at its newest write, in ms."""

    def put(self, kind: KeyKind, entity_id: str, version: int, value: Any, as_of: int, ttl_ms: int) -> None:
        key = redis_key(kind, entity_id, self.namespace)
        self.pending[key], self.ttls[key] = (version, value), ttl_ms

    def add_seen(self, user_id: str, item_id: str, ts: int, capacity: int, ttl_ms: int) -> None:
        key = redis_key(KeyKind.USER_SEEN, user_id, self.namespace)
        self.seen[key] = update_seen(self.seen.get(key, {}), (item_id, ts), FeatureSpec(seen_capacity=capacity))

    def applied(self, event_times, append_times) -> None:
        pass

    def flush(self) -> None:
        for key, (version, value) in self.pending.items():
            if key not in self.stored or self.stored[key][0] <= version:
                self.stored[key] = (version, value)
        self.pending = {}

    def close(self) -> None:
        self.flush()


@dataclass
class KeyedState:
    """Every state descriptor's entries of one operator instance: what a checkpoint holds."""

    maps: dict[str, dict[str, bytes]] = field(default_factory=dict)
    timers: set[tuple[int, Any]] = field(default_factory=set)
    """Processing-time timers registered and not yet fired, (epoch ms, key): a checkpoint holds them too."""
    current_key: Any = None
    """The key value states read and write: set by `ProcessingTime.key`."""

    def context(self) -> SimpleNamespace:
        counters = SimpleNamespace(inc=lambda *_: None)
        return SimpleNamespace(
            get_map_state=lambda descriptor: FakeMapState(self.maps.setdefault(descriptor.name, {})),
            get_state=lambda descriptor: FakeValueState(self.maps.setdefault(descriptor.name, {}), self),
            get_metrics_group=lambda: SimpleNamespace(counter=lambda _name: counters, gauge=lambda *_: None),
        )

    def checkpoint(self) -> "KeyedState":
        return copy.deepcopy(self)


class ProcessingTime:
    """What an operator's call gets as its context: a processing-time timer service over the timers
    of a keyed state, on a clock the test moves, and the key of the call (set `key` before it)."""

    def __init__(self, state: KeyedState, now_ms: int = 0, key: Any = None):
        self.state, self.now_ms = state, now_ms
        self.key = key

    @property
    def key(self) -> Any:
        return self.state.current_key

    @key.setter
    def key(self, key: Any) -> None:
        self.state.current_key = key

    def timer_service(self) -> "ProcessingTime":
        return self

    def get_current_key(self) -> Any:
        return self.key

    def current_processing_time(self) -> int:
        return self.now_ms

    def register_processing_time_timer(self, timestamp_ms: int) -> None:
        self.state.timers.add((timestamp_ms, self.key))

    def advance(self, function: Any, ms: int) -> None:
        """Move the clock on by `ms`, calling `function.on_timer` for each timer then due, oldest
        first, with its key as the current key."""
        self.now_ms += ms
        for timer in sorted((timer for timer in self.state.timers if timer[0] <= self.now_ms), key=lambda t: t[0]):
            self.state.timers.discard(timer)
            self.key = timer[1]
            list(function.on_timer(timer[0], self))


def opened(kind: type, state: KeyedState, writer: MemoryWriter, settings: Settings | None = None,
           log_samples: bool = True, bounded: bool = False):  # fmt: skip
    """An opened operator of `kind` over `state`, writing to `writer`."""
    parameters = JobParameters.of(settings or Settings(), "test", log_samples, bounded)
    function = kind(parameters)
    function.parameters = _WithWriter(parameters, writer)
    function.open(state.context())
    return function


def user_stage(state: KeyedState, settings: Settings | None = None, log_samples: bool = True) -> UserFeaturesFunction:
    """An opened user-features operator over `state`, writing to memory."""
    return opened(UserFeaturesFunction, state, MemoryWriter(), settings, log_samples)


class _WithWriter:
    """The job's parameters, but every writer is `writer`."""

    def __init__(self, parameters: JobParameters, writer: MemoryWriter):
        self._parameters, self._writer = parameters, writer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parameters, name)

    def writer(self, _name: str, _gc_pauses: object = None) -> MemoryWriter:
        return self._writer


def batch_of(records: Iterable[tuple[bytes, int, int]], bucket: int = 0) -> Row:
    """A batch as Flink SQL hands it over: (bucket, payloads, partitions, offsets, append times)."""
    payloads, partitions, offsets = zip(*records, strict=True) if records else ((), (), ())
    return Row(bucket, list(payloads), list(partitions), list(offsets), [0] * len(payloads))


def kafka_records(events: Iterable[Event], partitions: int = 3) -> list[tuple[bytes, int, int]]:
    """(payload, partition, offset) of each event as a topic keyed by user would hold them, in order."""
    next_offset: dict[int, int] = {}
    records = []
    for event in events:
        partition = zlib.crc32(event.user_id.encode()) % partitions
        offset = next_offset.get(partition, 0)
        next_offset[partition] = offset + 1
        records.append((event.to_json(), partition, offset))
    return records


def sample_lines(outputs: Iterator) -> list[bytes]:
    """The sample-log lines among an operator call's outputs."""
    return [line.encode() for tag, text in outputs if tag is SAMPLES for line in text.split("\n")]


def write_sample_log(directory: Path, events: list[Event], settings: Settings | None = None) -> None:
    """The sample log the user stage writes for `events`, as today's committed file under `directory`."""
    operator = user_stage(KeyedState(), settings)
    lines = sample_lines(operator.process_element(batch_of(kafka_records(events)), None))
    day = directory / f"{sample_log.DAY_PREFIX}{sample_log.today().isoformat()}"
    day.mkdir(parents=True, exist_ok=True)
    (day / f"{sample_log.PART_PREFIX}-test-0-0{sample_log.PART_SUFFIX}").write_bytes(b"\n".join(lines) + b"\n")
