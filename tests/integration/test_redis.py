import uuid

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.features import FeatureSpec, update_seen
from schemas.redis_format import UPSERT_IF_NOT_OLDER, UPSERT_KEYS_PER_CALL, add_seen, upsert_calls
from tests.conftest import Stack

seen_entries = st.lists(
    st.tuples(st.sampled_from(["i1", "i2", "i10", "ï3", "a", "b:c"]), st.integers(0, 6)), max_size=30
)


def test_values_round_trip(redis_client: redis.Redis):
    redis_client.set("kf:test:string", "ünïcode ✓")
    redis_client.hset("kf:test:hash", mapping={"clicks": 3, "last_item": "42"})

    assert redis_client.get("kf:test:string") == "ünïcode ✓"
    assert redis_client.hgetall("kf:test:hash") == {"clicks": "3", "last_item": "42"}


def test_server_runs_with_the_project_config(stack: Stack, redis_client: redis.Redis):
    config = redis_client.config_get("*")

    assert config["bind"] == stack.settings.bind_host
    assert config["appendonly"] == "yes"
    assert config["maxmemory-policy"] == stack.settings.redis_maxmemory_policy
    assert config["dir"] == str((stack.settings.run_dir / "redis").resolve())


def test_upsert_writes_each_key_unless_its_stored_version_is_newer(redis_client: redis.Redis):
    upsert = redis_client.register_script(UPSERT_IF_NOT_OLDER)
    first = [("kf:test:a", 2, b"a2", 0), ("kf:test:b", 5, b"b5", 60_000)]
    second = [("kf:test:a", 1, b"a1", 0), ("kf:test:b", 5, b"b5-again", 60_000), ("kf:test:c", 1, b"c1", 0)]

    written = [sum(upsert(keys=keys, args=arguments) for keys, arguments in upsert_calls(writes))
               for writes in (first, second)]  # fmt: skip

    assert written == [2, 2]  # a's version 1 is older than the stored 2; b's equal version is rewritten
    assert redis_client.hgetall("kf:test:a") == {"version": "2", "value": "a2"}
    assert redis_client.hgetall("kf:test:b") == {"version": "5", "value": "b5-again"}
    assert redis_client.hget("kf:test:c", "value") == "c1"
    assert 0 < redis_client.pttl("kf:test:b") <= 60_000 and redis_client.pttl("kf:test:a") == -1


def test_upsert_calls_split_many_writes_and_keep_each_key_with_its_arguments(redis_client: redis.Redis):
    upsert = redis_client.register_script(UPSERT_IF_NOT_OLDER)
    writes = [(f"kf:test:many:{n}", n, f"value {n}".encode(), 0) for n in range(2 * UPSERT_KEYS_PER_CALL + 7)]

    calls = list(upsert_calls(writes))

    assert [len(keys) for keys, _ in calls] == [UPSERT_KEYS_PER_CALL, UPSERT_KEYS_PER_CALL, 7]
    assert sum(upsert(keys=keys, args=arguments) for keys, arguments in calls) == len(writes)
    assert redis_client.hgetall(f"kf:test:many:{UPSERT_KEYS_PER_CALL + 3}") == {
        "version": str(UPSERT_KEYS_PER_CALL + 3),
        "value": f"value {UPSERT_KEYS_PER_CALL + 3}",
    }


# Each example writes a key of its own, so sharing the one client across examples is harmless.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seen_entries, st.integers(min_value=1, max_value=4), st.randoms(use_true_random=False))
def test_seen_set_writes_in_any_batches_and_order_equal_update_seen(redis_client: redis.Redis, entries, capacity, rng):
    key = f"kf:test:seen:{uuid.uuid4().hex}"  # not random: Hypothesis seeds it per example
    spec, expected = FeatureSpec(seen_capacity=capacity), {}
    for entry in entries:
        expected = update_seen(expected, entry, spec)
    replayed = entries + entries[: len(entries) // 2]  # a restart writes some entries again
    rng.shuffle(replayed)

    for start in range(0, len(replayed), 4):
        pipeline = redis_client.pipeline(transaction=False)
        batch: dict[str, int] = {}
        for item, ts in replayed[start : start + 4]:
            batch[item] = max(ts, batch.get(item, ts))
        add_seen(pipeline, key, batch, capacity, 60_000)
        pipeline.execute()

    assert dict(redis_client.zrange(key, 0, -1, withscores=True, score_cast_func=int)) == expected
    assert not entries or 0 < redis_client.pttl(key) <= 60_000
