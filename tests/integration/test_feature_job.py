"""The streaming feature job on real Kafka, Redis and PyFlink."""

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import orjson
import psutil
import pytest
import redis
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from redis.cluster import RedisCluster
from rich.progress import Progress

from infra.benches.stream import freshness_reports
from infra.stack import kafka_admin
from schemas import sample_log
from schemas.dead_letters import original_payload
from schemas.events import Event
from schemas.features import FeatureSpec
from schemas.redis_format import (
    FEATURE_SPEC_ENTITY,
    TRENDING_ENTITY,
    KeyKind,
    active_namespace_key,
    decode_value,
    entity_of,
    key_pattern,
    redis_key,
)
from schemas.runtime.samples import LABELLED_TYPES
from schemas.runtime.sources.synthetic import SyntheticWorld, WorldSpec
from schemas.runtime.streaming import fold_stream, seen_filters, seen_sets, trending_list
from streams.flink_env import CHANGELOG_DIRECTORY, execution_environment
from streams.publish import Pacer, make_producer
from streams.publish import publish as publish_events
from streams.replay import group_consumer, plan
from tests.conftest import MAKE_DEMO_JVM, REPO_ROOT, Stack, consume_all, consume_to_end, free_port, settings_of
from tests.event_streams import messy_stream
from training.data import bootstrap_rows, read_sample_log

JOB_TIMEOUT_S = 600
JOB_REFUSAL_TIMEOUT_S = 120
BAD_RECORDS = [
    b"not json at all",
    b"\xff\xfe\x00 not utf-8",
    b'{"event_id": "x1"}',
    b'{"event_id": "x2", "user_id": "u1", "item_id": "i1", "type": "teleport", "ts": 1735689600000}',
    b'{"event_id": "x3", "user_id": "u1", "item_id": "i1", "type": "click", "ts": 99}',
    orjson.dumps({"event_id": "x4", "user_id": "u" * 65, "item_id": "i1", "type": "click", "ts": 1735689600000}),
    b"[1, 2, 3]",
    b"x" * 1_000_000,
]


def new_topic_named(stack: Stack, prefix: str, partitions: int = 3) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = kafka_admin(stack.settings)  # kept referenced until the future resolves
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result()
    return name


def publish(stack: Stack, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": stack.settings.stack.kafka_bootstrap, "acks": "all",
                         "enable.idempotence": True, "message.max.bytes": 4 * 1024 * 1024})  # fmt: skip
    for key, value in records:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
    assert producer.flush(60) == 0


def kind_and_entity(key: bytes, namespace: str) -> tuple[KeyKind, str]:
    kind = KeyKind(key.decode().split(":")[3])
    return kind, entity_of(key.decode(), kind, namespace)


def stored_state(client: redis.Redis, namespace: str) -> dict[str, tuple[int | None, object]]:
    """'kind:entity' -> (version, decoded value) of every data key in the namespace; a seen set has
    no version and its value is {item_id: time}. `client` may be a Redis Cluster's."""
    state = {}
    for key in client.scan_iter(match=key_pattern(namespace), count=1000):
        kind, entity = kind_and_entity(key, namespace)
        if kind is KeyKind.USER_SEEN:
            stored = (None, {item.decode(): int(ts) for item, ts in client.zrange(key, 0, -1, withscores=True)})
        elif kind is KeyKind.USER_SEEN_FILTER:
            stored = (None, client.get(key))
        elif kind is KeyKind.FEATURE_SPEC:
            stored = (None, FeatureSpec.model_validate_json(client.get(key)))
        else:
            version, value = client.hmget(key, "version", "value")
            stored = (int(version), decode_value(kind, value))
        state[f"{kind}:{entity}"] = stored
    return state


def assert_state_equals_reference(client: redis.Redis, namespace: str, events: list[Event], spec: FeatureSpec):
    users, items, trending = fold_stream(events, spec)
    seen, filters = seen_sets(events, spec), seen_filters(events, spec)
    stored = stored_state(client, namespace)
    assert len(stored) == 2 * len(users) + len(items) + 1 + len(seen) + len(filters) + 1
    assert stored[f"{KeyKind.FEATURE_SPEC}:{FEATURE_SPEC_ENTITY}"] == (None, spec)  # the job recorded the spec it ran
    assert {user_id: stored[f"{KeyKind.USER_SEEN}:{user_id}"][1] for user_id in seen} == seen
    assert {user_id: stored[f"{KeyKind.USER_SEEN_FILTER}:{user_id}"][1] for user_id in filters} == filters
    for user_id, expected in users.items():
        version, sequence = stored[f"{KeyKind.USER_SEQUENCE}:{user_id}"]
        _, features = stored[f"{KeyKind.USER_FEATURES}:{user_id}"]
        assert (version, sequence.data, sequence.as_of) == (
            expected.version,
            expected.sequence,
            expected.features.last_ts,
        )
        assert replace(features.data, rating_sum=0) == replace(expected.features, rating_sum=0)
        assert features.data.rating_sum == pytest.approx(expected.features.rating_sum)
    for item_id, expected in items.items():
        version, item = stored[f"{KeyKind.ITEM_FEATURES}:{item_id}"]
        assert version == expected.version
        assert replace(item.data, popularity=0) == replace(expected.features, popularity=0)
        assert item.data.popularity == pytest.approx(expected.features.popularity, rel=1e-9)
    version, listed = stored[f"{KeyKind.TRENDING}:global"]
    expected_list = trending_list(trending, spec)
    assert version == trending.version
    assert dict(listed.data.items) == pytest.approx(dict(expected_list.items), rel=1e-9)


@pytest.fixture(scope="module")
def bounded_run(stack: Stack):
    """Good events (out of order, with redeliveries) and bad records through one bounded job run."""
    topic, dlq = new_topic_named(stack, "events"), new_topic_named(stack, "dlq", partitions=1)
    events = messy_stream(seed=21, count=1500)
    records = [(event.kafka_key, event.to_json()) for event in events]
    for n, bad in enumerate(BAD_RECORDS):
        records.insert(150 * n + 75, (b"bad", bad))
    publish(stack, topic, records)
    # Seen sets of 6 items: most users interact with more, so their seen filters are written and compared too.
    job_stack = stack.with_env(KF_TOPIC_DLQ=dlq, KF_SEEN_CAPACITY="6")
    job = job_stack.run("-m", "streams.feature_job", "--topic", topic, "--namespace", "bounded", "--bounded", "--fresh",
                        timeout=JOB_TIMEOUT_S)  # fmt: skip
    return job_stack, topic, dlq, events, job


def test_1_redis_equals_the_pure_feature_functions_despite_disorder_and_duplicates(bounded_run, redis_client):
    stack, _, _, events, job = bounded_run
    raw_client = redis.Redis(host=stack.settings.stack.bind_host, port=stack.settings.stack.redis_port)

    assert job.returncode == 0, job.stdout + job.stderr
    assert len({e.event_id for e in events}) < len(events)  # the input did hold duplicates
    assert any(a.ts > b.ts for a, b in itertools.pairwise(events))  # and disorder
    assert_state_equals_reference(raw_client, "bounded", events, stack.settings.pipeline.features)
    assert raw_client.pttl(redis_key(KeyKind.USER_SEQUENCE, events[0].user_id, "bounded")) > 0  # inactive users expire


def test_4_every_bad_record_is_a_dead_letter_with_its_reason_and_the_job_went_on(bounded_run):
    stack, topic, dlq, events, job = bounded_run

    letters = [orjson.loads(message.value()) for message in consume_all(stack, dlq, expected=len(BAD_RECORDS))]
    published = consume_all(stack, topic, expected=len(events) + len(BAD_RECORDS))

    assert job.returncode == 0
    assert sorted(original_payload(orjson.dumps(letter)) for letter in letters) == sorted(BAD_RECORDS)
    reasons = {letter["reason"].split(":")[0] for letter in letters}
    assert reasons >= {"$", "user_id", "type", "ts"}
    where = {message.value(): (message.partition(), message.offset(), message.timestamp()[1]) for message in published}
    for letter in letters:  # each names the partition, offset and Kafka time of its own record
        source = letter["source"]
        assert (source["partition"], source["offset"], source["kafka_timestamp_ms"]) == where[
            original_payload(orjson.dumps(letter))
        ]


def logged_rows(stack: Stack, namespace: str) -> list:
    """The rows of the job's sample log, whose snapshots record the feature spec the job ran with."""
    directory = sample_log.log_directory(stack.settings.stack.samples_dir, namespace)
    rows, spec = read_sample_log(
        directory, stack.settings.training.training_window_days, stack.settings.training.training_max_rows
    )
    assert spec == (stack.settings.pipeline.features if rows else None)  # polled: maybe nothing committed yet
    return rows


def test_the_sample_log_holds_one_committed_row_per_labelled_event_and_nothing_in_progress(bounded_run):
    stack, _, _, events, _ = bounded_run
    directory = sample_log.log_directory(stack.settings.stack.samples_dir, "bounded")

    rows = logged_rows(stack, "bounded")

    unique = {e.event_id: e for e in events}
    assert sorted(row.event.event_id for row in rows) == sorted(
        e.event_id for e in unique.values() if e.type in LABELLED_TYPES
    )
    assert sample_log.committed_files(directory, sample_log.today()) and not sample_log.in_progress_files(directory)


def test_the_sample_log_is_what_training_bootstraps_from_the_same_events(bounded_run):
    stack, _, _, events, _ = bounded_run

    logged = logged_rows(stack, "bounded")

    assert logged == bootstrap_rows(events, stack.settings.pipeline.features)


def test_3_a_full_replay_into_a_new_namespace_equals_the_live_state_key_by_key_and_value_by_value(bounded_run):
    stack, topic, _, events, _ = bounded_run
    client = redis.Redis(host=stack.settings.stack.bind_host, port=stack.settings.stack.redis_port)
    replay_dlq = new_topic_named(stack, "dlq-replay", partitions=1)
    replay_stack = stack.with_env(KF_TOPIC_DLQ=replay_dlq)

    dry = replay_stack.kingfisher("replay", "--namespace", "rebuilt", "--topic", topic, "--dry-run", "--no-progress")
    result = replay_stack.kingfisher("replay", "--namespace", "rebuilt", "--topic", topic, "--no-progress",
                                     "--samples", timeout=JOB_TIMEOUT_S)  # fmt: skip
    live, rebuilt = stored_json(client, "bounded"), stored_json(client, "rebuilt")
    letters = [orjson.loads(message.value()) for message in consume_to_end(stack, replay_dlq)]

    assert dry.returncode == 0 and "dry run: nothing replayed" in " ".join(dry.stderr.split())
    assert result.returncode == 0, result.stdout + result.stderr
    assert live.keys() == rebuilt.keys()
    for key, stored in live.items():
        assert_same_json(rebuilt[key], stored, key)
    assert client.get(active_namespace_key()) == b"rebuilt"
    # The replay's dead letters: each bad record once, with its reason and source, as the live job wrote them.
    live_letters = [orjson.loads(message.value()) for message in consume_to_end(stack, bounded_run[2])]
    assert sorted(map(orjson.dumps, letters)) == sorted(map(orjson.dumps, live_letters))
    assert sorted(original_payload(orjson.dumps(letter)) for letter in letters) == sorted(BAD_RECORDS)
    # Its sample log: the rows training bootstraps from the same events, as the live job's log gives.
    assert logged_rows(stack, "rebuilt") == bootstrap_rows(events, stack.settings.pipeline.features)


def test_a_replay_with_the_flink_job_onto_a_redis_cluster_equals_the_pure_feature_functions_and_switches_serving(
    bounded_run, redis_cluster
):
    stack, topic, _, events, _ = bounded_run
    cluster = stack.with_env(KF_REDIS_CLUSTER="true", KF_REDIS_PORT=str(redis_cluster.settings.stack.redis_port),
                             KF_TOPIC_DLQ=new_topic_named(stack, "dlq-cluster", partitions=1))  # fmt: skip
    client = RedisCluster(host=cluster.settings.stack.bind_host, port=cluster.settings.stack.redis_port)

    result = cluster.kingfisher("replay", "--namespace", "on-cluster", "--topic", topic, "--no-progress", "--flink",
                                timeout=JOB_TIMEOUT_S)  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert_state_equals_reference(client, "on-cluster", events, stack.settings.pipeline.features)
    assert client.get(active_namespace_key()) == b"on-cluster"
    client.close()


def test_a_replay_from_a_kafka_time_folds_exactly_the_events_published_from_then_on(stack: Stack):
    topic, events = new_topic_named(stack, "from-time"), messy_stream(seed=33, count=400)
    records = [(event.kafka_key, event.to_json()) for event in events]
    publish(stack, topic, records[:250])
    time.sleep(0.5)  # Kafka stamps records with the producer's clock, in milliseconds: a clear gap
    since_ms = int(time.time() * 1000)
    publish(stack, topic, records[250:])
    client = redis.Redis(host=stack.settings.stack.bind_host, port=stack.settings.stack.redis_port)

    result = stack.with_env(KF_TOPIC_DLQ=new_topic_named(stack, "dlq-from-time", partitions=1)).kingfisher(
        "replay", "--namespace", "from-time", "--topic", topic, "--from-timestamp", str(since_ms), "--no-switch",
        "--no-progress", timeout=JOB_TIMEOUT_S,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"replay {len(records) - 250} events" in " ".join(result.stderr.split())
    assert_state_equals_reference(client, "from-time", events[250:], stack.settings.pipeline.features)


def stored_json(client: redis.Redis, namespace: str) -> dict[str, object]:
    """'kind:entity' -> the stored hash (version and value as JSON), seen set or seen filter (bytes) of
    every data key."""
    state = {}
    for key in client.scan_iter(match=key_pattern(namespace), count=1000):
        if client.type(key) == b"zset":
            state[key.decode().split(":", 3)[3]] = client.zrange(key, 0, -1, withscores=True)
        elif kind_and_entity(key, namespace)[0] is KeyKind.USER_SEEN_FILTER:
            state[key.decode().split(":", 3)[3]] = client.get(key)
        elif client.type(key) == b"string":
            state[key.decode().split(":", 3)[3]] = orjson.loads(client.get(key))
        else:
            version, value = client.hmget(key, "version", "value")
            state[key.decode().split(":", 3)[3]] = {"version": int(version), "value": orjson.loads(value)}
    return state


def assert_same_json(actual: object, expected: object, where: str) -> None:
    """Equal, floats to 1e-9 (an item's decayed sums may add the same terms in another order)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for name, value in expected.items():
            assert_same_json(actual[name], value, f"{where}.{name}")
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple) and len(actual) == len(expected), where
        for n, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_json(a, e, f"{where}[{n}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-9), where
    else:
        assert actual == expected, where


def test_the_job_computes_the_same_at_parallelism_2_with_its_python_in_worker_processes(bounded_run):
    """Two subtasks of each keyed stage, their buckets under the keys `streams.key_layout` spreads,
    each slot's Python in a worker process of its own."""
    stack, topic, _, events, _ = bounded_run
    process_mode = stack.with_env(KF_PYTHON_EXECUTION_MODE="process", KF_FLINK_PARALLELISM="2",
                                  KF_TOPIC_DLQ=new_topic_named(stack, "dlq-process", partitions=1))  # fmt: skip
    client = redis.Redis(host=stack.settings.stack.bind_host, port=stack.settings.stack.redis_port)

    job = process_mode.run("-m", "streams.feature_job", "--topic", topic, "--namespace", "process-mode", "--bounded",
                           "--fresh", "--no-samples", timeout=JOB_TIMEOUT_S)  # fmt: skip

    assert job.returncode == 0, job.stdout + job.stderr
    assert_state_equals_reference(client, "process-mode", events, stack.settings.pipeline.features)


def test_a_checkpoint_is_refused_by_the_job_at_a_parallelism_with_another_key_layout(stack: Stack, tmp_path):
    """Above parallelism 1 the buckets sit under other keys (`streams.key_layout`): restored there,
    a parallelism-1 checkpoint's state would sit where no bucket reads it."""
    topic = new_topic_named(stack, "events-layout", partitions=1)
    job_stack = stack.with_env(KF_CHECKPOINT_INTERVAL_S="1", KF_RUN_DIR=str(tmp_path / "run"),
                               KF_TOPIC_DLQ=new_topic_named(stack, "dlq-layout", 1))  # fmt: skip
    publish(stack, topic, [(e.kafka_key, e.to_json()) for e in clicks("a", ["i1", "i2"], 0)])
    job = start_job(job_stack, topic, "layout", tmp_path / "first.log")
    try:
        ends = plan(stack.settings, topic, "layout", None).end
        wait_for(lambda: committed_offsets(stack, topic, "layout") == ends, "a checkpoint covering the events")
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()

    log = tmp_path / "wider.log"
    wider = start_job(job_stack.with_env(KF_FLINK_PARALLELISM="2"), topic, "layout", log)
    try:
        returncode = wider.wait(timeout=JOB_REFUSAL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        returncode = None  # still running: it restored the checkpoint
    finally:
        os.killpg(wider.pid, signal.SIGKILL)
        wider.wait()

    assert returncode not in (None, 0), log.read_text()
    assert "Cannot map checkpoint/savepoint state for operator" in log.read_text()


def committed_offsets(stack: Stack, topic: str, namespace: str) -> dict[int, int]:
    """partition -> the offset the job's consumer group committed (on a completed checkpoint), -1 if none."""
    replay = plan(stack.settings, topic, namespace, None)
    consumer = group_consumer(stack.settings, replay.group_id)
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in replay.end], timeout=10)
        return {tp.partition: tp.offset for tp in committed}
    finally:
        consumer.close()


def test_2_a_job_killed_mid_stream_restores_its_checkpoint_and_logs_every_event_and_dead_letter_once(
    stack: Stack, tmp_path
):
    topic, dlq = new_topic_named(stack, "events-crash"), new_topic_named(stack, "dlq-crash", 1)
    job_stack = stack.with_env(KF_CHECKPOINT_INTERVAL_S="1", KF_TOPIC_DLQ=dlq, KF_RUN_DIR=str(tmp_path / "run"))
    # The first run's checkpoints are far apart, so the kill falls seconds after one and long before the next.
    first_run = job_stack.with_env(KF_CHECKPOINT_INTERVAL_S="15")
    client = redis.Redis(host=stack.settings.stack.bind_host, port=stack.settings.stack.redis_port)
    events = messy_stream(seed=33, count=1200)
    trending_key = redis_key(KeyKind.TRENDING, TRENDING_ENTITY, "crash")
    first, second = events[:600], events[600:]
    bad = [(b"bad", record) for record in BAD_RECORDS[:5]]
    applied = lambda part: len({e.event_id for e in part})  # noqa: E731

    publish(stack, topic, [bad[0], *[(e.kafka_key, e.to_json()) for e in first]])
    job = start_job(first_run, topic, "crash", tmp_path / "first.log")
    try:
        wait_for(lambda: version_of(client, trending_key) >= applied(first), "the first part in Redis")
        ends = plan(stack.settings, topic, "crash", None).end
        wait_for(lambda: committed_offsets(stack, topic, "crash") == ends, "a checkpoint covering the first part")
        # Gone from Kafka: only the checkpoint still holds the first part, so a restart from the
        # beginning of the topic could not rebuild it.
        admin = kafka_admin(stack.settings)  # kept referenced until its futures resolve
        for future in admin.delete_records([TopicPartition(topic, p, o) for p, o in ends.items()]).values():
            future.result(timeout=60)
        publish(stack, topic, [*bad[1:3], *[(e.kafka_key, e.to_json()) for e in second[:300]], *bad[3:4]])
        wait_for(lambda: version_of(client, trending_key) > applied(first), "part of the second part in Redis")
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # kill -9 of the job, its JVM and its Python
        job.wait()
    # What the killed job did after its last checkpoint (Redis writes, dead letters, log lines) is redone.
    assert committed_offsets(stack, topic, "crash") == ends
    # No full copy of the state yet (KF_CHANGELOG_MATERIALIZE_S): the checkpoint holds the first part as logged changes.
    changelog = job_stack.settings.stack.checkpoints_dir / "crash" / CHANGELOG_DIRECTORY
    assert any(path.is_file() for path in changelog.rglob("*")), "the checkpoint did not log the state's changes"
    publish(stack, topic, [*[(e.kafka_key, e.to_json()) for e in second[300:]], bad[4]])

    restarted = start_job(job_stack, topic, "crash", tmp_path / "second.log")
    directory = sample_log.log_directory(job_stack.settings.stack.samples_dir, "crash")
    try:
        wait_for_every_event(client, "crash", events, stack.settings.pipeline.features)
        assert_state_equals_reference(client, "crash", events, stack.settings.pipeline.features)
        wait_for(lambda: not sample_log.in_progress_files(directory), "no sample-log file in progress")
        assert logged_rows(job_stack, "crash") == bootstrap_rows(events, stack.settings.pipeline.features)
        letters = [orjson.loads(m.value()) for m in consume_to_end(stack, dlq)]
        assert sorted(original_payload(orjson.dumps(letter)) for letter in letters) == sorted(r for _, r in bad)
    finally:
        os.killpg(restarted.pid, signal.SIGKILL)
        restarted.wait()


DAY_MS = 1_735_689_600_000


def clicks(user_id: str, item_ids: list[str], first: int) -> list[Event]:
    """Clicks of `user_id` on `item_ids`, numbered from `first`, a second apart."""
    return [
        Event(event_id=f"{user_id}-{n}", user_id=user_id, item_id=item_id, type="click", ts=DAY_MS + 1000 * n)
        for n, item_id in enumerate(item_ids, start=first)
    ]


@pytest.mark.parametrize("backend", ["hashmap", "rocksdb"])
def test_an_idle_user_expires_in_flink_state_and_redis_alike_and_stays_expired_after_a_restore(
    stack: Stack, tmp_path, backend
):
    ttl_s, namespace = 5.0, f"ttl-{backend}"
    # One partition: a partition without events would never have an offset committed to wait for.
    topic = new_topic_named(stack, f"events-ttl-{backend}", partitions=1)
    job_stack = stack.with_env(KF_ENTITY_TTL_H=str(ttl_s / 3600), KF_STATE_BACKEND=backend,
                               KF_CHECKPOINT_INTERVAL_S="1", KF_RUN_DIR=str(tmp_path / "run"),
                               KF_TOPIC_DLQ=new_topic_named(stack, f"dlq-ttl-{backend}", 1))  # fmt: skip
    client = redis.Redis(host=stack.settings.stack.bind_host, port=stack.settings.stack.redis_port)
    spec = stack.settings.pipeline.features
    first = clicks("a", ["i1", "i2", "i3"], 0) + clicks("b", ["i1", "i4"], 0)
    second, third = clicks("a", ["i2", "i5"], 10), clicks("b", ["i6"], 20)
    key = lambda kind, entity: redis_key(kind, entity, namespace)  # noqa: E731
    sequence_of = lambda user: decode_value(KeyKind.USER_SEQUENCE, client.hget(key(KeyKind.USER_SEQUENCE, user),  # noqa: E731
                                                                                "value")).data  # fmt: skip

    job = start_job(job_stack, topic, namespace, tmp_path / "first.log")
    try:
        publish(stack, topic, [(e.kafka_key, e.to_json()) for e in first])
        wait_for(lambda: version_of(client, key(KeyKind.USER_SEQUENCE, "b")) >= 2, "the first events in Redis")
        wait_for(lambda: not client.exists(key(KeyKind.USER_SEQUENCE, "a")), "a's keys to expire", ttl_s + 30, 0.1)
        time.sleep(0.5)  # Flink's entry was stamped when its batch committed, a moment after the Redis write
        publish(stack, topic, [(e.kafka_key, e.to_json()) for e in second])
        wait_for(lambda: version_of(client, key(KeyKind.USER_SEQUENCE, "a")) >= 2, "a's new events", poll_s=0.05)
        wait_for(lambda: version_of(client, key(KeyKind.ITEM_FEATURES, "i2")) >= 1, "i2's new event", poll_s=0.05)
        a_after, i2_after = sequence_of("a"), version_of(client, key(KeyKind.ITEM_FEATURES, "i2"))
        ends = plan(stack.settings, topic, namespace, None).end
        wait_for(lambda: committed_offsets(stack, topic, namespace) == ends, "a checkpoint after the second events")
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    time.sleep(ttl_s)  # b's state in the checkpoint has expired by the time the job resumes from it
    restarted = start_job(job_stack, topic, namespace, tmp_path / "second.log")
    try:
        publish(stack, topic, [(e.kafka_key, e.to_json()) for e in third])
        wait_for(lambda: version_of(client, key(KeyKind.USER_SEQUENCE, "b")) >= 1, "b's new event", poll_s=0.05)
        b_after = (version_of(client, key(KeyKind.USER_SEQUENCE, "b")), sequence_of("b"))
    finally:
        os.killpg(restarted.pid, signal.SIGKILL)
        restarted.wait()

    users, items, _ = fold_stream(second, spec)
    assert (a_after, i2_after) == (users["a"].sequence, items["i2"].version)  # both started from empty state
    users, _, _ = fold_stream(third, spec)
    assert b_after == (users["b"].version, users["b"].sequence)


def test_a_row_is_committed_within_an_interval_and_a_checkpoint_of_its_event_reaching_redis(stack: Stack, tmp_path):
    interval_s = 2.0
    topic = new_topic_named(stack, "events-visible")
    job_stack = stack.with_env(KF_CHECKPOINT_INTERVAL_S=str(interval_s), KF_RUN_DIR=str(tmp_path / "run"),
                               KF_TOPIC_DLQ=new_topic_named(stack, "dlq-visible", 1))  # fmt: skip
    client = redis.Redis(host=stack.settings.stack.bind_host, port=stack.settings.stack.redis_port)
    trending_key = redis_key(KeyKind.TRENDING, TRENDING_ENTITY, "visible")
    warm_up, burst = messy_stream(seed=41, count=300), messy_stream(seed=42, count=900)
    directory = sample_log.log_directory(job_stack.settings.stack.samples_dir, "visible")
    job = start_job(job_stack, topic, "visible", tmp_path / "job.log")
    try:
        publish(stack, topic, [(e.kafka_key, e.to_json()) for e in warm_up])
        wait_for(lambda: version_of(client, trending_key) >= len({e.event_id for e in warm_up}), "the warm-up")
        # One burst, then nothing: a day directory whose files receive nothing after it.
        publish(stack, topic, [(e.kafka_key, e.to_json()) for e in burst])
        expected = {e.event_id for e in [*warm_up, *burst] if e.type in LABELLED_TYPES}
        wait_for(lambda: version_of(client, trending_key) >= len({e.event_id for e in [*warm_up, *burst]}),
                 "the burst in Redis", poll_s=0.05)  # fmt: skip
        in_redis = time.monotonic()
        wait_for(lambda: {row.event.event_id for row in logged_rows(job_stack, "visible")} >= expected,
                 "every row committed", timeout_s=4 * interval_s + 60, poll_s=0.1)  # fmt: skip
        committed_after = time.monotonic() - in_redis
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()

    # The next checkpoint starts within an interval and commits the files when it completes; the
    # slack is this test's polling and the file rename after the completion.
    bound_s = interval_s + slowest_checkpoint_s(job_stack) + 0.5
    assert committed_after <= bound_s, f"committed {committed_after:.2f} s after the events reached Redis (> {bound_s})"
    assert not sample_log.in_progress_files(directory)


def test_the_jobs_flink_log_rolls_over_at_its_size_and_holds_no_warning_per_checkpoint(stack: Stack, tmp_path):
    topic = new_topic_named(stack, "events-logs")
    size_bytes, kept = 64 * 1024, 2
    job_stack = stack.with_env(KF_CHECKPOINT_INTERVAL_S="1", KF_RUN_DIR=str(tmp_path / "run"),
                               KF_FLINK_LOG_FILE_SIZE="64KB", KF_FLINK_LOG_FILES=str(kept),
                               KF_TOPIC_DLQ=new_topic_named(stack, "dlq-logs", 1))  # fmt: skip
    logs = job_stack.settings.stack.logs_dir
    job = start_job(job_stack, topic, "logs", tmp_path / "job.log")
    try:
        publish(stack, topic, [(e.kafka_key, e.to_json()) for e in messy_stream(seed=43, count=300)])
        # Past the start-up's lines, which fill the first files: checkpoints of a running job, with
        # every sink committing, in files that are still kept.
        wait_for(lambda: len(logs_text(logs).split("Completed checkpoint")) > 10, "ten checkpoints in the kept logs")
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()

    files = sorted(path.name for path in logs.glob("flink-*.log*"))
    current = next(name for name in files if name.endswith(".log"))
    newest_first = [current, *(f"{current}.{n}" for n in range(1, kept + 1))]
    assert files == sorted(newest_first), files
    started = [LOG_EVENT_START.match((logs / name).read_bytes()).group() for name in newest_first]
    assert started == sorted(started, reverse=True), started
    # Log4j starts a new file once one has passed the size: each held at most the size before its last event.
    assert all(size_before_last_event(logs / name) <= size_bytes for name in files), files
    assert "pendingCommittables" not in logs_text(logs)


def size_before_last_event(path: Path) -> int:
    """Where the file's last event starts: its last line that begins with a timestamp (an event
    can span lines, e.g. a stack trace)."""
    starts = [found.start() for found in LOG_EVENT_START.finditer(path.read_bytes())]
    return starts[-1] if starts else 0


LOG_EVENT_START = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.MULTILINE)


def logs_text(logs: Path) -> str:
    return "\n".join(path.read_text(errors="replace") for path in logs.glob("flink-*.log*"))


def slowest_checkpoint_s(stack: Stack) -> float:
    """The longest checkpoint the job's Flink log reports (`checkpointDuration=… ms`), in seconds."""
    logs = stack.settings.stack.logs_dir.glob("flink-*.log")
    durations = [int(ms) for log in logs for ms in re.findall(r"checkpointDuration=(\d+) ms", log.read_text())]
    assert durations, "no completed checkpoint in the job's log"
    return max(durations) / 1000


def start_job(stack: Stack, topic: str, namespace: str, log_path) -> subprocess.Popen:
    command = [sys.executable, "-m", "streams.feature_job", "--topic", topic, "--namespace", namespace]
    with log_path.open("wb") as log:
        return subprocess.Popen(command, env=stack.env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def version_of(client: redis.Redis, key: str) -> int:
    version = client.hget(key, "version")
    return int(version) if version is not None else 0


def wait_for_every_event(client: redis.Redis, namespace: str, events: list[Event], spec: FeatureSpec) -> None:
    """Wait for a live job to have written every event: trending counting them all, and each item's
    key its last. The user stage writes before it passes a batch on, but the item and trending
    stages each write at their batch window's end, neither waiting for the other."""
    _, items, _ = fold_stream(events, spec)
    trending_key = redis_key(KeyKind.TRENDING, TRENDING_ENTITY, namespace)
    wait_for(
        lambda: version_of(client, trending_key) >= len({e.event_id for e in events}), "trending to count every event"
    )
    item_keys = {
        redis_key(KeyKind.ITEM_FEATURES, item_id, namespace): state.version for item_id, state in items.items()
    }
    wait_for(
        lambda: all(version_of(client, key) >= version for key, version in item_keys.items()), "every item's last event"
    )


def wait_for(condition, what: str, timeout_s: float = 240, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def jvm_command(job: subprocess.Popen) -> list[str] | None:
    """The command line of the job's JVM, None until it runs (a child may exit while it is read)."""
    for child in psutil.Process(job.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.name() == "java":
                return child.cmdline()
    return None


def test_a_local_job_starts_its_jvm_with_the_configured_options_first(stack: Stack, tmp_path):
    options = ["-XX:TieredStopAtLevel=1", "-Dkingfisher.probe=jvm-options"]
    job_stack = stack.with_env(KF_RUN_DIR=str(tmp_path / "run"), KF_FLINK_JVM_OPTIONS=" ".join(options))
    job = start_job(job_stack, new_topic_named(stack, "events-jvm"), "jvm-options", tmp_path / "job.log")
    try:
        wait_for(lambda: jvm_command(job) is not None, "the job's JVM", 120)
        command = jvm_command(job)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)

    assert command[1:3] == options, command


# A latency bound: measured with nothing else running (make test's second, serial pass).
@pytest.mark.serial
def test_6_reported_freshness_p99_stays_within_1_s_at_500_events_per_second(stack: Stack, tmp_path):
    topic = new_topic_named(stack, "events-fresh")
    job_stack = stack.with_env(
        KF_RUN_DIR=str(tmp_path / "run"), KF_TOPIC_DLQ=new_topic_named(stack, "dlq-fresh", 1), **MAKE_DEMO_JVM
    )
    client = redis.Redis(host=stack.settings.stack.bind_host, port=stack.settings.stack.redis_port)
    trending_key = redis_key(KeyKind.TRENDING, TRENDING_ENTITY, "fresh")
    producer = make_producer(stack.settings)
    job = start_job(job_stack, topic, "fresh", tmp_path / "job.log")
    try:
        warm_up = publish_now(producer, topic, count=500, rate=500)
        wait_for(lambda: version_of(client, trending_key) >= warm_up, "the warm-up in Redis")
        warmed_up = time.strftime("%Y-%m-%d %H:%M:%S")
        sent = publish_now(producer, topic, count=500 * 30, rate=500)  # three of the writer's 10 s windows
        wait_for(lambda: version_of(client, trending_key) >= warm_up + sent, "every event in Redis")
        # The writer's first report after the warm-up covers the warm-up too (and the job's start).
        reports = freshness_p99s(job_stack, warmed_up)[1:]
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()

    assert len(reports) >= 2, reports  # the gauges freshness_event_p99_ms, ... publish these same numbers
    # The README promises Redis within a second of the event; each report is a 10 s window's p99.
    assert all(0 < event_p99 <= 1000 and 0 <= append_p99 <= 1000 for event_p99, append_p99 in reports), reports


def test_the_job_sends_buffered_records_on_after_the_configured_flush_time():
    # Flink's own default (100 ms per exchange) is what the setting replaces; 7 is neither.
    settings = settings_of({"KF_NETWORK_FLUSH_MS": "7"})
    assert execution_environment(settings, parallelism=1).get_buffer_timeout() == 7


def publish_now(producer, topic: str, count: int, rate: int) -> int:
    """`count` synthetic events stamped with the time they are sent, at `rate` per second."""
    world = SyntheticWorld(WorldSpec(users=2000, seed=count))
    events = (e.model_copy(update={"ts": int(time.time() * 1000), "event_id": uuid.uuid4().hex})
              for e in world.events(count))  # fmt: skip
    with Progress(disable=True) as quiet:
        return publish_events(events, producer, topic, Pacer(rate=rate), quiet).sent


def freshness_p99s(stack: Stack, since: str) -> list[tuple[int, int]]:
    """(event p99, append p99) in ms of every freshness report the users' Redis writer logged after `since`."""
    reports = freshness_reports(stack.settings.stack.logs_dir, since)
    return [(round(report.event_p99_ms), round(report.append_p99_ms)) for report in reports]


class PrivateRedis:
    """A redis-server of this test alone, with an append-only file, that it may stop, hang and restart."""

    def __init__(self, directory):
        self.port, self.directory = free_port(), directory
        directory.mkdir(parents=True, exist_ok=True)
        self.process = self._start()

    def _start(self) -> subprocess.Popen:
        process = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = self.client()
        wait_for(lambda: _pings(client), "redis to start", timeout_s=30, poll_s=0.1)
        return process

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    def restart(self) -> None:
        self.process = self._start()


def _pings(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def test_2_redis_hung_then_stopped_under_the_live_job_loses_and_doubles_nothing(stack: Stack, tmp_path):
    server = PrivateRedis(tmp_path / "redis")
    topic, dlq = new_topic_named(stack, "events-redis-down"), new_topic_named(stack, "dlq-redis-down", 1)
    job_stack = stack.with_env(KF_REDIS_PORT=str(server.port), KF_RUN_DIR=str(tmp_path / "run"), KF_TOPIC_DLQ=dlq,
                               KF_CHECKPOINT_INTERVAL_S="2")  # fmt: skip
    events, bad = messy_stream(seed=51, count=1200), [(b"bad", record) for record in BAD_RECORDS[:3]]
    parts = [events[:400], events[400:800], events[800:]]
    trending_key = redis_key(KeyKind.TRENDING, TRENDING_ENTITY, "down")
    publish(stack, topic, [bad[0], *[(e.kafka_key, e.to_json()) for e in parts[0]]])
    job = start_job(job_stack, topic, "down", tmp_path / "job.log")
    try:
        wait_for(lambda: version_of(server.client(), trending_key) >= len({e.event_id for e in parts[0]}), "part 1")
        server.process.send_signal(signal.SIGSTOP)  # hung: connections open, nothing answers
        publish(stack, topic, [bad[1], *[(e.kafka_key, e.to_json()) for e in parts[1]]])
        time.sleep(8)
        server.process.send_signal(signal.SIGCONT)
        server.stop()  # down: connections refused
        publish(stack, topic, [bad[2], *[(e.kafka_key, e.to_json()) for e in parts[2]]])
        time.sleep(8)
        server.restart()
        wait_for_every_event(server.client(), "down", events, stack.settings.pipeline.features)
        directory = sample_log.log_directory(job_stack.settings.stack.samples_dir, "down")
        expected_rows = bootstrap_rows(events, stack.settings.pipeline.features)
        wait_for(lambda: len(logged_rows(job_stack, "down")) >= len(expected_rows), "every row committed")
        wait_for(lambda: not sample_log.in_progress_files(directory), "no sample-log file in progress")
        assert_state_equals_reference(server.client(), "down", events, stack.settings.pipeline.features)
        assert logged_rows(job_stack, "down") == expected_rows
        letters = [orjson.loads(m.value()) for m in consume_to_end(stack, dlq)]
        assert sorted(original_payload(orjson.dumps(letter)) for letter in letters) == sorted(r for _, r in bad)
        flink_log = "\n".join(
            path.read_text(errors="replace") for path in job_stack.settings.stack.logs_dir.glob("flink-*.log")
        )
        assert "failed (Timeout" in flink_log and "failed (Error 111" in flink_log  # it met the hang and the outage
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        server.process.send_signal(signal.SIGCONT)
        server.stop()
