"""Dead letters: what the stream writes to `events.dlq` for a record it cannot accept."""

import base64
from typing import Any

import orjson

from schemas.validation import Problem

PREVIEW_CHARS = 200
# A dead letter carries the rejected record in base64 (4/3 of its size): the broker allows 4 MiB records.
MAX_DEAD_LETTER_BYTES = 4 * 1024 * 1024


def dead_letter(
    raw: bytes, problems: list[Problem], partition: int, offset: int, kafka_timestamp_ms: int | None
) -> bytes:
    """The DLQ record: every reason, where the record came from, and its original bytes (base64)."""
    record: dict[str, Any] = {
        "reason": "; ".join(map(str, problems)),
        "problems": [problem.model_dump() for problem in problems],
        "source": {"partition": partition, "offset": offset, "kafka_timestamp_ms": kafka_timestamp_ms},
        "payload_base64": base64.b64encode(raw).decode(),
        "payload_bytes": len(raw),
        "payload_preview": raw[:PREVIEW_CHARS].decode("utf-8", errors="replace"),
    }
    return orjson.dumps(record)


def original_payload(dead_letter_record: bytes) -> bytes:
    return base64.b64decode(orjson.loads(dead_letter_record)["payload_base64"])
