"""Shared fixtures. Integration tests run against a real stack that this test session starts
itself, on free ports and in a temporary run directory, so a developer's own stack is untouched."""

import functools
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import hypothesis
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from confluent_kafka.admin import NewTopic

from infra.stack import (
    CLUSTER_BUS_OFFSET,
    StackError,
    ensure_redis_cluster,
    kafka_admin,
    ports_below_ephemeral,
    redis_servers,
    start_all,
    stop,
)
from infra.stack import free_port as stack_free_port
from schemas.config import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.skip_guard", "pytester"]
# Shared 2-core machines stall for hundreds of milliseconds at times: a slow example is not a bug.
hypothesis.settings.register_profile("kingfisher", deadline=None)
hypothesis.settings.load_profile("kingfisher")


def this_workers_share(ports: range) -> range:
    """This pytest-xdist worker's own slice of `ports`: each worker picks ports in its own slice,
    since a port another worker probed free may be bound by that worker's server a moment later
    (CI saw one worker's Kafka controller port taken by the other's Redis)."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    width = len(ports) // workers
    return ports[worker * width : (worker + 1) * width]


HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range, in this worker's share of it."""
    return stack_free_port(this_workers_share(ports_below_ephemeral()), HANDED_OUT)


@dataclass(frozen=True)
class Stack:
    settings: Settings
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run a Python command of the project (e.g. `-m infra.benches.smoke`) configured for this stack."""
        return self.run_program(sys.executable, *args, timeout=timeout)

    def kingfisher(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run the installed `kingfisher` console script configured for this stack."""
        return self.run_program(str(Path(sys.executable).parent / "kingfisher"), *args, timeout=timeout)

    def with_env(self, **variables: str) -> "Stack":
        """The same stack with more settings for the programs it runs."""
        env = self.env | variables
        return replace(self, settings=settings_of(env), env=env)

    def run_program(self, *command: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


# The tests' Flink jobs run seconds on a few thousand events: the JIT's optimising tier costs them more
# CPU than it saves (README, Two commands). The environment's value wins; the demo and the freshness
# bound run the JVM as `make demo` does.
QUICK_START_JVM = {"KF_FLINK_JVM_OPTIONS": "-XX:TieredStopAtLevel=1"}
MAKE_DEMO_JVM = {"KF_FLINK_JVM_OPTIONS": ""}


def stack_environment(run_dir: Path) -> dict[str, str]:
    return (
        QUICK_START_JVM
        | os.environ
        | {
            "KF_RUN_DIR": str(run_dir),
            "KF_KAFKA_PORT": str(free_port()),
            "KF_KAFKA_CONTROLLER_PORT": str(free_port()),
            "KF_REDIS_PORT": str(free_port()),
            "KF_KAFKA_HEAP": "512m",
        }
    )


def settings_of(env: dict[str, str]) -> Settings:
    """The settings the programs of `env` read: flat KF_<NAME> and sectioned KF_<SECTION>__<NAME> alike."""
    overrides: dict = {}
    for variable, value in env.items():
        if variable.startswith("KF_"):
            *sections, name = variable[3:].lower().split("__")
            functools.reduce(lambda table, section: table.setdefault(section, {}), sections, overrides)[name] = value
    return Settings(**overrides)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A running Kafka broker and Redis server; a failure to start fails the tests that need them."""
    stack = Stack(settings_of(env := stack_environment(tmp_path_factory.mktemp("run"))), env)
    started = stack.run("infra/stack.py", "up")
    if started.returncode != 0:
        stack.run("infra/stack.py", "down")
        pytest.fail(f"the local stack did not start:\n{started.stdout}{started.stderr}", pytrace=False)
    yield stack
    stack.run("infra/stack.py", "down")


def free_cluster_ports(masters: int) -> int:
    """A base port such that it, the next `masters - 1` ports and their cluster-bus ports (+10000) are free."""
    share = this_workers_share(range(10_000, 16_000))  # its bus ports too stay below free_port's range
    while True:
        base = random.choice(share[: len(share) - masters + 1])  # the whole span inside this worker's share
        try:
            for port in (p + bus for p in range(base, base + masters) for bus in (0, CLUSTER_BUS_OFFSET)):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A local Redis Cluster of three masters, started as `make up` starts one (KF_REDIS_CLUSTER=true)."""
    run_dir = tmp_path_factory.mktemp("cluster")
    env = os.environ | {
        "KF_RUN_DIR": str(run_dir),
        "KF_REDIS_CLUSTER": "true",
        "KF_REDIS_PORT": str(free_cluster_ports(3)),
    }
    cluster = Stack(settings_of(env), env)
    servers = redis_servers(cluster.settings)
    try:
        start_all(cluster.settings, servers)
        ensure_redis_cluster(cluster.settings)
    except StackError as error:
        pytest.fail(f"the local Redis Cluster did not start: {error}", pytrace=False)
    yield cluster
    for server in reversed(servers):
        stop(server)


@pytest.fixture
def redis_client(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis(
        host=stack.settings.stack.bind_host, port=stack.settings.stack.redis_port, decode_responses=True
    )
    yield client
    client.close()


RECEIVE_TIMEOUT_S = 60


@pytest.fixture
def new_topic(stack: Stack) -> Iterator[str]:
    """A fresh, empty topic with three partitions, deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    admin = kafka_admin(stack.settings)
    admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])[name].result()
    yield name
    admin.delete_topics([name])[name].result()


def consume_all(stack: Stack, topic: str, expected: int) -> list[Message]:
    """Every record of `topic` from the beginning, waiting until `expected` have arrived (or a timeout)."""
    partitions = kafka_admin(stack.settings).list_topics(topic, timeout=10).topics[topic].partitions
    consumer = Consumer(
        {"bootstrap.servers": stack.settings.stack.kafka_bootstrap, "group.id": f"test-{uuid.uuid4().hex}"}
    )
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in partitions])
    received: list[Message] = []
    deadline = time.monotonic() + RECEIVE_TIMEOUT_S
    while len(received) < expected and time.monotonic() < deadline:
        received.extend(
            message for message in consumer.consume(num_messages=10_000, timeout=0.5) if not message.error()
        )
    consumer.close()
    return received


def consume_to_end(stack: Stack, topic: str) -> list[Message]:
    """Every committed record of `topic`, from the beginning to the end offsets at call time (a
    transactional topic's end includes its commit markers, which a read_committed consumer skips)."""
    admin_topics = kafka_admin(stack.settings).list_topics(topic, timeout=10).topics[topic].partitions
    consumer = Consumer(
        {"bootstrap.servers": stack.settings.stack.kafka_bootstrap, "group.id": f"test-{uuid.uuid4().hex}"}
    )
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in admin_topics}
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in ends])
    received: list[Message] = []
    deadline = time.monotonic() + RECEIVE_TIMEOUT_S
    while time.monotonic() < deadline:
        received.extend(m for m in consumer.consume(num_messages=10_000, timeout=0.5) if not m.error())
        positions = consumer.position([TopicPartition(topic, partition) for partition in ends])
        if all(tp.offset >= ends[tp.partition] for tp in positions):
            break
    consumer.close()
    return received


# Longest first (`make test` prints each test's duration): the parallel pass hands whole modules to
# its workers in collection order, and a long module started last would run on alone.
LONGEST_MODULES = (
    "test_feature_job.py",
    "test_demo.py",
    "test_serving.py",
    "test_training.py",
    "test_flink_cluster.py",
    "test_broker_faults.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in item.nodeid:
            item.add_marker(pytest.mark.integration)
    rank = {name: position for position, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
