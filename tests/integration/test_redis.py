import redis

from schemas.redis_format import UPSERT_IF_NOT_OLDER, UPSERT_KEYS_PER_CALL, upsert_calls
from tests.conftest import Stack


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
