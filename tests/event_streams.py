"""Event streams as Kafka delivers them in practice, for tests of the stream's logic."""

import random

from schemas.events import Event
from schemas.runtime.sources.synthetic import SyntheticWorld, WorldSpec


def messy_stream(seed: int, count: int, users: int = 30, items: int = 60, block: int = 5) -> list[Event]:
    """A small world's events out of event-time order (shuffled in blocks of `block`), with
    redeliveries close behind the original."""
    rng = random.Random(seed)
    events = list(SyntheticWorld(WorldSpec(users=users, items=items, seed=seed)).events(count))
    blocks = [events[i : i + block] for i in range(0, len(events), block)]
    for part in blocks:
        rng.shuffle(part)
    stream = [event for part in blocks for event in part]
    for position in sorted(rng.sample(range(len(stream)), k=count // 15), reverse=True):
        stream.insert(min(len(stream), position + rng.randrange(1, 8 * block)), stream[position])
    return stream
