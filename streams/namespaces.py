"""Redis namespaces for operators: which one serving reads, switching it, counting and dropping keys."""

import redis

from schemas.redis_format import active_namespace_key, key_pattern

SCAN_BATCH = 1000


def active_namespace(client: redis.Redis, default: str) -> str:
    """The namespace serving reads: the control key, or `default` (KF_NAMESPACE) while none was set."""
    value = client.get(active_namespace_key())
    return value.decode() if value is not None else default


def switch_namespace(client: redis.Redis, namespace: str) -> str | None:
    """Point serving at `namespace` in one atomic SET; returns the namespace it pointed at before."""
    key_pattern(namespace)  # refuses an invalid name before the switch
    previous = client.set(active_namespace_key(), namespace, get=True)
    return previous.decode() if previous is not None else None


def count_keys(client: redis.Redis, namespace: str) -> int:
    return sum(1 for _ in client.scan_iter(match=key_pattern(namespace), count=SCAN_BATCH))


def drop_namespace(client: redis.Redis, namespace: str) -> int:
    """Delete every key of `namespace`; returns how many."""
    dropped = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=key_pattern(namespace), count=SCAN_BATCH):
        batch.append(key)
        if len(batch) >= SCAN_BATCH:
            dropped += client.unlink(*batch)
            batch = []
    return dropped + (client.unlink(*batch) if batch else 0)
