"""The feature store's contract, run against each Redis deployment it supports: one Redis server
and a Redis Cluster of three masters.

Every way Kingfisher reaches Redis goes through `schemas.runtime.feature_store`, so these tests are the
guarantees the job, replay, serving and the benchmarks rely on."""

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import EventType
from schemas.features import FeatureSpec, ItemFeatures, SequenceEntry, UserFeatures, UserSequence
from schemas.redis_format import TRENDING_ENTITY, KeyKind, Trending, redis_key, seen_filter_of
from schemas.runtime.feature_store import (
    KEYS_PER_CALL,
    MEMBERS_PER_ZADD,
    AsyncFeatureStore,
    EntityWrite,
    FeatureStore,
    SeenAddition,
)
from schemas.runtime.features import update_seen
from tests.conftest import Stack

DEPLOYMENTS = ["single", "cluster"]

seen_entries = st.lists(
    st.tuples(st.sampled_from(["i1", "i2", "i10", "ï3", "a", "b:c"]), st.integers(0, 6)), max_size=30
)


@pytest.fixture(params=DEPLOYMENTS)
def deployment(request) -> Stack:
    return request.getfixturevalue("stack" if request.param == "single" else "redis_cluster")


@pytest.fixture
def store(deployment: Stack) -> Iterator[FeatureStore]:
    store = connected(deployment)
    yield store
    store.close()


def connected(deployment: Stack) -> FeatureStore:
    stack = deployment.settings.stack
    return FeatureStore.connect(stack.bind_host, stack.redis_port, timeout_s=5, cluster=stack.redis_cluster)


@pytest.fixture
def namespace(store: FeatureStore) -> Iterator[str]:
    name = f"contract-{uuid.uuid4().hex[:12]}"
    yield name
    store.drop_namespace(name)


def write_of(kind: KeyKind, entity: str, version: int, data, ttl_ms: int = 0) -> EntityWrite:
    return EntityWrite(kind, entity, version, data, 1_000 + version, ttl_ms)


def features(clicks: int) -> UserFeatures:
    return UserFeatures(event_counts={"click": clicks}, last_ts=1_000)


def test_a_write_lands_unless_the_stored_version_is_newer(store: FeatureStore, namespace: str):
    first = [write_of(KeyKind.USER_FEATURES, "a", 2, features(2)),
             write_of(KeyKind.USER_FEATURES, "b", 5, features(5))]  # fmt: skip
    second = [write_of(KeyKind.USER_FEATURES, "a", 1, features(1)),
              write_of(KeyKind.USER_FEATURES, "b", 5, features(50)),
              write_of(KeyKind.USER_FEATURES, "c", 1, features(1))]  # fmt: skip

    written = [store.write(namespace, first), store.write(namespace, second)]

    assert written == [2, 2]  # a's version 1 is older than the stored 2; b's equal version is rewritten
    assert store.read(KeyKind.USER_FEATURES, "a", namespace)[0] == 2
    assert store.read(KeyKind.USER_FEATURES, "a", namespace)[1].data == features(2)
    assert store.read(KeyKind.USER_FEATURES, "b", namespace)[1].data == features(50)
    assert store.read(KeyKind.USER_FEATURES, "c", namespace)[1].as_of == 1_001
    assert store.read(KeyKind.USER_FEATURES, "d", namespace) is None


def test_a_write_with_a_ttl_expires_and_one_without_does_not(store: FeatureStore, namespace: str):
    store.write(namespace, [write_of(KeyKind.ITEM_FEATURES, "x", 1, ItemFeatures(), ttl_ms=60_000),
                 write_of(KeyKind.ITEM_FEATURES, "y", 1, ItemFeatures())])  # fmt: skip

    assert 0 < store.client.pttl(redis_key(KeyKind.ITEM_FEATURES, "x", namespace)) <= 60_000
    assert store.client.pttl(redis_key(KeyKind.ITEM_FEATURES, "y", namespace)) == -1


def test_more_writes_than_one_script_call_takes_all_land_with_their_own_values(store: FeatureStore, namespace: str):
    count = 2 * KEYS_PER_CALL + 7
    writes = [write_of(KeyKind.USER_FEATURES, f"u{n}", n + 1, features(n)) for n in range(count)]

    assert store.write(namespace, writes) == count
    version, stored = store.read(KeyKind.USER_FEATURES, f"u{KEYS_PER_CALL + 3}", namespace)
    assert (version, stored.data) == (KEYS_PER_CALL + 4, features(KEYS_PER_CALL + 3))
    assert sorted(store.entities(namespace, KeyKind.USER_FEATURES)) == sorted(f"u{n}" for n in range(count))


def test_more_seen_sets_and_items_than_one_call_and_one_zadd_take_all_land(store: FeatureStore, namespace: str):
    users = [f"u{n}" for n in range(KEYS_PER_CALL + 7)]
    heavy = {f"i{n}": 10_000 + n for n in range(3 * MEMBERS_PER_ZADD + 1)}
    seen = {user: SeenAddition({"i1": 5, "i2": 7}, capacity=10) for user in users}
    seen["heavy"] = SeenAddition(dict(heavy), capacity=len(heavy) - 1)
    writes = [write_of(KeyKind.USER_FEATURES, user, 1, features(1)) for user in users]

    assert store.write(namespace, writes, seen) == len(users)
    assert store.read_seen(users[KEYS_PER_CALL + 3], namespace) == {"i1": 5, "i2": 7}
    assert store.read_seen("heavy", namespace) == {item: ts for item, ts in heavy.items() if item != "i0"}
    assert store.read(KeyKind.USER_FEATURES, users[-1], namespace)[0] == 1


def test_writes_go_on_after_redis_forgets_the_script(store: FeatureStore, namespace: str):
    store.write(namespace, [write_of(KeyKind.USER_FEATURES, "a", 1, features(1))])
    store.client.script_flush()  # as a restarted Redis without its script cache

    assert store.write(namespace, [write_of(KeyKind.USER_FEATURES, "a", 2, features(2))]) == 1
    assert store.read(KeyKind.USER_FEATURES, "a", namespace)[0] == 2


# Each example writes a user of its own, so sharing the one store across examples is harmless.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seen_entries, st.integers(min_value=1, max_value=4), st.randoms(use_true_random=False))
def test_seen_additions_in_any_batches_and_order_equal_update_seen_and_an_overflowed_set_filters_every_item(
    store: FeatureStore, namespace: str, entries, capacity, rng
):
    user = uuid.uuid4().hex  # not random: Hypothesis seeds it per example
    key, spec, expected = redis_key(KeyKind.USER_SEEN, user, namespace), FeatureSpec(seen_capacity=capacity), {}
    for entry in entries:
        expected = update_seen(expected, entry, spec)
    replayed = entries + entries[: len(entries) // 2]  # a restart writes some entries again
    rng.shuffle(replayed)

    for start in range(0, len(replayed), 4):
        addition = SeenAddition({}, capacity, ttl_ms=60_000)
        for item, ts in replayed[start : start + 4]:
            addition.add(item, ts)
        store.write(namespace, [], {user: addition})

    assert store.read_seen(user, namespace) == expected
    assert not entries or 0 < store.client.pttl(key) <= 60_000
    interacted = {item for item, _ in entries}
    overflowed = len(interacted) > capacity  # the script's SHA-1 bits (redis.sha1hex) equal Python's
    assert store.read_seen_filter(user, namespace) == (seen_filter_of(interacted) if overflowed else None)
    filter_key = redis_key(KeyKind.USER_SEEN_FILTER, user, namespace)
    assert not overflowed or 0 < store.client.pttl(filter_key) <= 60_000


def test_switching_namespaces_is_what_serving_follows_and_dropping_one_leaves_the_others(
    store: FeatureStore, namespace: str
):
    other = f"{namespace}-b"
    store.write(namespace, [write_of(KeyKind.USER_FEATURES, "a", 1, features(1))])
    store.write(other, [write_of(KeyKind.USER_FEATURES, n, 1, features(1)) for n in ("a", "b")])
    before = store.active_namespace("fallback")

    try:
        switched_from = store.switch_namespace(other)
        assert store.active_namespace("fallback") == other
        assert (store.count_keys(namespace), store.count_keys(other)) == (1, 2)
        assert store.drop_namespace(other) == 2
        assert (store.count_keys(namespace), store.count_keys(other)) == (1, 0)
    finally:
        store.client.delete(redis_key(KeyKind.ACTIVE_NAMESPACE, "current", "control"))
        if before != "fallback":
            store.switch_namespace(before)
    assert switched_from == (None if before == "fallback" else before)
    with pytest.raises(ValueError, match="namespace"):
        store.switch_namespace("Not:Valid")


def test_serving_reads_what_the_stream_wrote_in_one_round_trip(deployment: Stack, store: FeatureStore, namespace: str):
    sequence = UserSequence(
        (SequenceEntry("e1", "i1", EventType.CLICK, 1_000), SequenceEntry("e2", "i2", EventType.PLAY, 2_000))
    )
    trending = Trending(items=(("i2", 3.0), ("i1", 1.5)), at_ts=2_000)
    store.write(
        namespace,
        [
            write_of(KeyKind.USER_SEQUENCE, "u1", 2, sequence),
            write_of(KeyKind.USER_FEATURES, "u1", 2, features(2)),
            write_of(KeyKind.TRENDING, TRENDING_ENTITY, 7, trending),
        ],
        {"u1": SeenAddition({"i1": 1_000, "i9": 500}, capacity=10)},
    )

    async def read():
        stack = deployment.settings.stack
        reader = AsyncFeatureStore.connect(stack.bind_host, stack.redis_port, timeout_s=5, cluster=stack.redis_cluster)
        try:
            return (await reader.read_user("u1", namespace, seen=True), await reader.read_user("u2", namespace),
                    await reader.users(namespace, 10))  # fmt: skip
        finally:
            await reader.close()

    known, unknown, users = asyncio.run(read())

    assert (known.sequence.data, known.features.data, known.trending.data) == (sequence, features(2), trending)
    assert known.seen_set == {"i1", "i9"} and known.seen == {"i1", "i2", "i9"} and known.sequence.as_of == 1_002
    assert (unknown.sequence, unknown.features, unknown.trending.data, unknown.seen) == (None, None, trending, set())
    assert users == ["u1"]


def test_the_blocking_and_the_async_store_answer_every_read_alike(
    deployment: Stack, store: FeatureStore, namespace: str
):
    sequence = UserSequence((SequenceEntry("e1", "i1", EventType.CLICK, 1_000),))
    store.write(
        namespace,
        [
            write_of(KeyKind.USER_SEQUENCE, "u1", 1, sequence),
            write_of(KeyKind.TRENDING, TRENDING_ENTITY, 4, Trending((("i1", 1.0),), 1_000)),
        ],
        {"u1": SeenAddition({"i1": 1_000, "i2": 900, "i3": 800}, capacity=2)},  # overflowed: a filter
    )
    store.record_feature_spec(namespace, FeatureSpec(sequence_length=7))
    reads = [
        ("read", (KeyKind.USER_SEQUENCE, "u1", namespace)),
        ("read", (KeyKind.USER_FEATURES, "u1", namespace)),
        ("read_user", ("u1", namespace, True)),
        ("read_user", ("nobody", namespace)),
        ("read_seen", ("u1", namespace)),
        ("read_seen_filter", ("u1", namespace)),
        ("trending", (namespace,)),
        ("experiment_tallies", ("absent", namespace)),
        ("feature_spec", (namespace,)),
        ("feature_spec", (f"{namespace}-none",)),
        ("active_namespace", ("fallback-of-the-test",)),
    ]

    async def read_async():
        stack = deployment.settings.stack
        reader = AsyncFeatureStore.connect(stack.bind_host, stack.redis_port, timeout_s=5, cluster=stack.redis_cluster)
        try:
            return [await getattr(reader, name)(*arguments) for name, arguments in reads]
        finally:
            await reader.close()

    blocking = [getattr(store, name)(*arguments) for name, arguments in reads]

    assert blocking == asyncio.run(read_async())
    assert blocking[0][0] == 1 and blocking[0][1].data == sequence and blocking[1] is None
    assert (
        blocking[4] == {"i2": 900, "i1": 1_000}
        and blocking[5] == blocking[2].seen_filter == seen_filter_of(["i1", "i2", "i3"])
        and blocking[8] == FeatureSpec(sequence_length=7)
        and blocking[9] is None
    )


def test_on_a_cluster_one_entitys_keys_share_a_master_and_a_batch_spreads_over_all(redis_cluster: Stack):
    store, namespace = connected(redis_cluster), f"contract-{uuid.uuid4().hex[:12]}"
    users = [f"u{n}" for n in range(60)]
    kinds = (KeyKind.USER_SEQUENCE, KeyKind.USER_FEATURES)
    try:
        store.write(
            namespace,
            [write_of(kind, user, 1, features(1)) for user in users for kind in kinds],
            {user: SeenAddition({"i1": 1, "i2": 2}, capacity=1) for user in users},  # and a seen filter each
        )
        masters = {
            node.port: set(node.redis_connection.scan_iter(match=f"*{namespace}*"))
            for node in store.client.get_primaries()
        }
        holders = [
            {port for port, keys in masters.items() if redis_key(kind, user, namespace).encode() in keys}
            for user in users
            for kind in (*kinds, KeyKind.USER_SEEN, KeyKind.USER_SEEN_FILTER)
        ]
        assert all(len(holder) == 1 for holder in holders)  # every key is on exactly one master
        assert all(len({*map(frozenset, holders[n : n + 4])}) == 1 for n in range(0, len(holders), 4))
        assert len(masters) == 3 and all(len(keys) > 0 for keys in masters.values())
    finally:
        store.drop_namespace(namespace)
        store.close()


def test_on_a_cluster_a_write_after_its_slot_moved_to_another_master_lands(redis_cluster: Stack):
    store, namespace = connected(redis_cluster), f"contract-{uuid.uuid4().hex[:12]}"
    key = redis_key(KeyKind.USER_FEATURES, "mover", namespace)
    slot = store.client.keyslot(key)
    owner = store.client.get_node_from_key(key)
    target = next(node for node in store.client.get_primaries() if node.name != owner.name)
    target_id = target.redis_connection.cluster("myid")
    try:
        store.write(namespace, [write_of(KeyKind.USER_FEATURES, "other", 1, features(1))])  # the old slot map is cached
        for node in store.client.get_primaries():  # the slot is empty, so it moves without migrating keys
            node.redis_connection.cluster("setslot", slot, "node", target_id)

        assert store.write(namespace, [write_of(KeyKind.USER_FEATURES, "mover", 3, features(3))]) == 1
        assert target.redis_connection.exists(key) == 1
        assert store.read(KeyKind.USER_FEATURES, "mover", namespace)[1].data == features(3)
    finally:
        store.drop_namespace(namespace)  # a slot moves only while it is empty
        for node in store.client.get_primaries():
            node.redis_connection.cluster("setslot", slot, "node", owner.redis_connection.cluster("myid"))
        store.close()
