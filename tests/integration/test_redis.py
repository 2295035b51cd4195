"""The Redis server the local stack runs (the feature store's contract is in test_feature_store.py)."""

import redis

from tests.conftest import Stack


def test_values_round_trip(redis_client: redis.Redis):
    redis_client.set("kf:test:string", "ünïcode ✓")
    redis_client.hset("kf:test:hash", mapping={"clicks": 3, "last_item": "42"})

    assert redis_client.get("kf:test:string") == "ünïcode ✓"
    assert redis_client.hgetall("kf:test:hash") == {"clicks": "3", "last_item": "42"}


def test_server_runs_with_the_project_config(stack: Stack, redis_client: redis.Redis):
    config = redis_client.config_get("*")

    assert config["bind"] == stack.settings.stack.bind_host
    assert config["appendonly"] == "yes"
    assert config["maxmemory-policy"] == stack.settings.stack.redis_maxmemory_policy
    assert config["dir"] == str((stack.settings.stack.run_dir / "redis").resolve())
