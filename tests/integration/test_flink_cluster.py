"""The feature job on a standalone Flink session cluster (a JobManager and two TaskManagers started
from the apache-flink package's distribution, as `make cluster-up` starts them), at parallelism 2:
the same module the MiniCluster runs, submitted with `flink run`."""

import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from infra.stack import (
    FLINK_HOME,
    FlinkTaskManager,
    StackError,
    cluster_rest,
    feature_job_command,
    flink_cluster,
    flink_jobs,
    flink_rest_address,
    start,
    start_all,
    stop,
)
from schemas import sample_log
from schemas.events import Event
from schemas.redis_format import TRENDING_ENTITY, KeyKind, redis_key
from schemas.runtime.samples import LABELLED_TYPES
from streams.replay import plan
from tests.conftest import REPO_ROOT, Stack, free_port
from tests.event_streams import messy_stream
from tests.integration.test_feature_job import (
    assert_state_equals_reference,
    committed_offsets,
    logged_rows,
    new_topic_named,
    publish,
    version_of,
)
from tests.integration.test_serving import wait_until

JOB_TIMEOUT_S = 600
APPLY_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def cluster(stack: Stack, tmp_path_factory) -> Iterator[Stack]:
    configured = stack.with_env(
        KF_RUN_DIR=str(tmp_path_factory.mktemp("flink-cluster")),
        KF_FLINK_CLUSTER="true",
        KF_FLINK_REST_PORT=str(free_port()),
        KF_FLINK_RPC_PORT=str(free_port()),
        KF_FLINK_PARALLELISM="2",
        # Embedded Python (thread mode) loads libpython once per JVM: a second job, or a restarted one, in
        # the same TaskManager cannot load it again. Python workers in processes can.
        KF_PYTHON_EXECUTION_MODE="process",
        KF_STREAM_KEY_BUCKETS="8",
        # As infra/kubernetes runs it; the MiniCluster tests run make demo's heap backend.
        KF_STATE_BACKEND="rocksdb",
        KF_TOPIC_DLQ=new_topic_named(stack, "dlq-cluster", partitions=1),
    )
    processes = flink_cluster(configured.settings)
    try:
        start_all(configured.settings, processes)
    except StackError as error:
        pytest.fail(f"the local Flink cluster did not start: {error}", pytrace=False)
    yield configured
    for process in reversed(processes):
        stop(process)


def job_of(cluster: Stack, namespace: str) -> dict | None:
    """The newest job of `namespace`'s feature job name on the cluster."""
    name = cluster.settings.feature_job_name(namespace)
    return next((job for job in flink_jobs(cluster.settings) if job["name"] == name), None)


def submitted(cluster: Stack, log: Path, *arguments: str) -> subprocess.Popen:
    """The attached `flink run` client of the feature job (it keeps the sample log's retention)."""
    with log.open("w") as output:
        return subprocess.Popen(feature_job_command(cluster.settings, *arguments), env=cluster.env, cwd=REPO_ROOT,
                                stdout=output, stderr=subprocess.STDOUT)  # fmt: skip


def equal_to_reference(cluster: Stack, namespace: str, events: list[Event]) -> bool:
    client = redis.Redis(host=cluster.settings.stack.bind_host, port=cluster.settings.stack.redis_port)
    try:
        assert_state_equals_reference(client, namespace, events, cluster.settings.pipeline.features)
        return True
    except (AssertionError, KeyError):
        return False
    finally:
        client.close()


def labelled_once(cluster: Stack, namespace: str, events: list[Event]) -> bool:
    expected = sorted({e.event_id for e in events if e.type in LABELLED_TYPES})
    return sorted(row.event.event_id for row in logged_rows(cluster, namespace)) == expected


def completed_checkpoints(cluster: Stack, job_id: str) -> int:
    return cluster_rest(cluster.settings).call(f"/jobs/{job_id}/checkpoints")["counts"]["completed"]


def cancel(cluster: Stack, namespace: str, client: subprocess.Popen) -> None:
    job = job_of(cluster, namespace)
    if job is not None and job["state"] == "RUNNING":
        cluster_rest(cluster.settings).call(f"/jobs/{job['jid']}?mode=cancel", method="PATCH")
    client.terminate()
    client.wait(timeout=60)


def busy_taskmanager(cluster: Stack) -> FlinkTaskManager:
    """A TaskManager running some of the job's tasks (the only job on the cluster then)."""
    reported = cluster_rest(cluster.settings).call("/taskmanagers")["taskmanagers"]
    busy = [m["id"] for m in reported if m["freeSlots"] < m["slotsNumber"]]
    managers = [manager for manager in flink_cluster(cluster.settings) if isinstance(manager, FlinkTaskManager)]
    return next(manager for manager in managers if any(id_ in manager.log_file.read_text() for id_ in busy))


def publish_events(cluster: Stack, topic: str, events: list[Event]) -> None:
    publish(cluster, topic, [(event.kafka_key, event.to_json()) for event in events])


def live_job_with_a_first_half(cluster: Stack, namespace: str, seed: int, log: Path):
    """A fresh topic, half of a messy stream on it, and a live job on the cluster that has applied
    it; returns the topic, the job's client, and the two halves."""
    topic = new_topic_named(cluster, f"events-{namespace}", partitions=4)
    events = messy_stream(seed=seed, count=2000)
    first, second = events[:1000], events[1000:]
    publish_events(cluster, topic, first)
    client = submitted(cluster, log, "--topic", topic, "--namespace", namespace, "--fresh")
    try:
        wait_until(lambda: equal_to_reference(cluster, namespace, first), APPLY_TIMEOUT_S, "the first half in Redis")
    except BaseException:
        cancel(cluster, namespace, client)
        raise
    return topic, client, first, second


def test_the_job_at_parallelism_2_on_the_cluster_leaves_redis_equal_to_fold_stream_with_each_sample_once(cluster):
    topic, namespace = new_topic_named(cluster, "events-cluster", partitions=4), "cluster-bounded"
    events = messy_stream(seed=33, count=1500)
    publish_events(cluster, topic, events)

    job = subprocess.run(feature_job_command(cluster.settings, "--topic", topic, "--namespace", namespace, "--bounded",
                                             "--fresh"), env=cluster.env, cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=JOB_TIMEOUT_S)  # fmt: skip

    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    vertices = cluster_rest(cluster.settings).call(f"/jobs/{job_of(cluster, namespace)['jid']}")["vertices"]
    assert max(vertex["parallelism"] for vertex in vertices) == 2
    assert equal_to_reference(cluster, namespace, events)
    assert labelled_once(cluster, namespace, events)


def first_applied(events: list[Event]) -> int:
    """Trending's version once `events` are applied: one per distinct event (redeliveries are dropped)."""
    return len({event.event_id for event in events})


def latest_completed_checkpoint(cluster: Stack, job_id: str) -> int | None:
    completed = cluster_rest(cluster.settings).call(f"/jobs/{job_id}/checkpoints")["latest"]["completed"]
    return completed["id"] if completed else None


def test_a_taskmanager_killed_between_checkpoints_restarts_the_job_from_the_last_one_and_counts_nothing_twice(
    cluster, tmp_path
):
    namespace = "cluster-kill"
    topic, client, first, second = live_job_with_a_first_half(cluster, namespace, 34, tmp_path / "job.log")
    directory = sample_log.log_directory(cluster.settings.stack.samples_dir, namespace)
    trending = redis.Redis(host=cluster.settings.stack.bind_host, port=cluster.settings.stack.redis_port)
    trending_key = redis_key(KeyKind.TRENDING, TRENDING_ENTITY, namespace)
    applied_first, victim = first_applied(first), None
    try:
        job_id = job_of(cluster, namespace)["jid"]
        ends = plan(cluster.settings, topic, namespace, None).end
        wait_until(lambda: committed_offsets(cluster, topic, namespace) == ends, 60, "a checkpoint of the first half")
        checkpoints = completed_checkpoints(cluster, job_id)
        # Right after a checkpoint, so the kill falls seconds after it and long before the next.
        wait_until(lambda: completed_checkpoints(cluster, job_id) > checkpoints, 60, "a checkpoint after it")
        covering = latest_completed_checkpoint(cluster, job_id)
        publish_events(cluster, topic, second)
        wait_until(lambda: version_of(trending, trending_key) > applied_first, 60, "some of the second half in Redis")
        orphans = wait_until(lambda: sample_log.in_progress_files(directory), 60, "its sample lines in progress")
        assert latest_completed_checkpoint(cluster, job_id) == covering, "a checkpoint came before the kill"
        victim = busy_taskmanager(cluster)
        # The machine is lost: the TaskManager's JVM and its Python workers die together.
        process = victim.running_process()
        for member in [process, *process.children(recursive=True)]:
            member.send_signal(signal.SIGKILL)

        wait_until(lambda: equal_to_reference(cluster, namespace, first + second), APPLY_TIMEOUT_S, "every event")
        wait_until(lambda: labelled_once(cluster, namespace, first + second), 60, "the sample log's commit")
        # The keeper deletes the killed tasks' files three checkpoints on; the idle job has none of its own.
        wait_until(lambda: not sample_log.in_progress_files(directory), 120, "no sample-log file in progress")
        failures = cluster_rest(cluster.settings).call(f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]
        checkpoint_stats = cluster_rest(cluster.settings).call(f"/jobs/{job_id}/checkpoints")["latest"]
        state = cluster_rest(cluster.settings).call(f"/jobs/{job_id}")["state"]
    finally:
        trending.close()
        cancel(cluster, namespace, client)
        if victim is not None:
            start(victim)

    assert state == "RUNNING" and failures  # the same job, restarted after the failure it recorded
    # What it had applied of the second half was after that checkpoint: read and applied again.
    assert checkpoint_stats["restored"]["id"] == covering
    assert orphans and labelled_once(cluster, namespace, first + second)


def test_a_job_stopped_with_a_savepoint_resumes_from_it_and_counts_nothing_twice(cluster, tmp_path):
    namespace = "cluster-savepoint"
    topic, client, first, second = live_job_with_a_first_half(cluster, namespace, 35, tmp_path / "first.log")
    try:
        stopped = subprocess.run([str(FLINK_HOME / "bin" / "flink"), "stop", "-m", flink_rest_address(cluster.settings),
                                  "--savepointPath", (tmp_path / "savepoints").as_uri(),
                                  job_of(cluster, namespace)["jid"]],
                                 env=cluster.env, capture_output=True, text=True, timeout=120)  # fmt: skip
        client.wait(timeout=120)  # the attached client ends with its job
    finally:
        cancel(cluster, namespace, client)
    savepoint = re.search(r"Savepoint completed\. Path: (\S+)", stopped.stdout)
    assert stopped.returncode == 0 and savepoint, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    publish_events(cluster, topic, second)  # while the job is stopped

    resumed = submitted(cluster, tmp_path / "second.log", "--topic", topic, "--namespace", namespace, "--restore",
                        savepoint.group(1).removeprefix("file:"))  # fmt: skip
    try:
        wait_until(lambda: equal_to_reference(cluster, namespace, first + second), APPLY_TIMEOUT_S, "every event")
        wait_until(lambda: labelled_once(cluster, namespace, first + second), 60, "the sample log's commit")
    finally:
        cancel(cluster, namespace, resumed)
