"""Redis namespaces for operators: which one serving reads, switching it, counting and dropping keys."""

import redis

from schemas.redis_format import FORMAT_VERSION, KEY_PREFIX, NAMESPACE_PATTERN, active_namespace_key

SCAN_BATCH = 1000


def namespace_pattern(namespace: str) -> str:
    if not NAMESPACE_PATTERN.fullmatch(namespace):
        raise ValueError(f"namespace {namespace!r} must match {NAMESPACE_PATTERN.pattern}")
    return f"{KEY_PREFIX}:v{FORMAT_VERSION}:{namespace}:*"


def active_namespace(client: redis.Redis, default: str) -> str:
    """The namespace serving reads: the control key, or `default` (KF_NAMESPACE) while none was set."""
    value = client.get(active_namespace_key())
    return value.decode() if value is not None else default


def switch_namespace(client: redis.Redis, namespace: str) -> str | None:
    """Point serving at `namespace` in one atomic SET; returns the namespace it pointed at before."""
    namespace_pattern(namespace)
    previous = client.set(active_namespace_key(), namespace, get=True)
    return previous.decode() if previous is not None else None


def count_keys(client: redis.Redis, namespace: str) -> int:
    return sum(1 for _ in client.scan_iter(match=namespace_pattern(namespace), count=SCAN_BATCH))


def drop_namespace(client: redis.Redis, namespace: str) -> int:
    """Delete every key of `namespace`; returns how many."""
    dropped = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=namespace_pattern(namespace), count=SCAN_BATCH):
        batch.append(key)
        if len(batch) >= SCAN_BATCH:
            dropped += client.unlink(*batch)
            batch = []
    return dropped + (client.unlink(*batch) if batch else 0)
