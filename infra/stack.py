"""Start, stop and inspect Kingfisher's local stack: a KRaft Kafka broker and a Redis server, and
the applications `make demo` runs beside them (the feature job, the service, the retraining scheduler).

Settings come from schemas.config (KF_* environment variables or kingfisher.toml); everything
the services write (data, logs, pid files) goes under KF_RUN_DIR. `up` and `down` are
idempotent: `up` leaves a running, answering service alone, `down` of a stopped one is a no-op.
"""

import argparse
import base64
import errno
import importlib.util
import logging
import os
import random
import re
import shutil
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from schemas.config import Settings
from streams.flink_classpath import with_flink_classpath

INFRA_DIR = Path(__file__).resolve().parent
FLINK_HOME = Path(importlib.util.find_spec("pyflink").submodule_search_locations[0])
"""The Flink distribution inside the apache-flink package: its bin/ scripts, conf/ and lib/."""
POLL_INTERVAL_S = 0.5
STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 15
CLUSTER_BUS_OFFSET = 10_000

console = Console(stderr=True)


class StackError(RuntimeError):
    """A service could not start or stop; the message says why and what to do."""


@dataclass(frozen=True)
class ListenPort:
    port: int
    setting: str

    @property
    def variable(self) -> str:
        return f"KF_{self.setting.upper()}"


START_TIME_TOLERANCE_S = 2.0
"""How far a pid file of an earlier version, which held a wall-clock start time, may be from the
process's start time and still name it."""


def started_ticks(pid: int) -> int:
    """When the process started, in clock ticks after boot (`/proc/<pid>/stat`'s 22nd field). Unlike
    a start time on the wall clock (psutil's `create_time`: boot time + ticks), it does not move
    when the clock is stepped (NTP, a virtual machine's clock sync): compared by wall-clock times,
    the stack took its own Redis and Kafka for strangers after a step, and `make down` left them
    running."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[19])  # fields[0] is the 3rd field, the state


def same_start(process: psutil.Process, recorded: str) -> bool:
    """Whether a pid file's recorded start names `process` rather than a later one that reused its pid."""
    if "." in recorded:  # written by an earlier version: a wall-clock start time
        return abs(process.create_time() - float(recorded)) < START_TIME_TOLERANCE_S
    return started_ticks(process.pid) == int(recorded)


class Service(ABC):
    """One local server process, tracked by a pid file holding its pid and start time."""

    name: str

    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = (settings.stack.run_dir / self.name).resolve()
        self.log_file = (settings.stack.logs_dir / f"{self.name}.log").resolve()
        self.pid_file = self.home / f"{self.name}.pid"

    @property
    @abstractmethod
    def ports(self) -> list[ListenPort]: ...

    @abstractmethod
    def prepare(self) -> None:
        """Write the config file and initialise storage; called before every fresh start."""

    @abstractmethod
    def command(self) -> list[str]: ...

    def environment(self) -> dict[str, str] | None:
        """The process's environment; None: this one's."""
        return None

    @abstractmethod
    def is_ready(self) -> bool:
        """True when the service answers a real request."""

    @property
    def address(self) -> str:
        return f"{self.settings.stack.bind_host}:{self.ports[0].port}" if self.ports else "-"

    def running_process(self) -> psutil.Process | None:
        try:
            pid, started = self.pid_file.read_text().split()
            process = psutil.Process(int(pid))
            alive = process.status() != psutil.STATUS_ZOMBIE
            return process if alive and same_start(process, started) else None
        except (FileNotFoundError, ValueError, psutil.Error):
            return None

    def render(self, template: Path, target: Path, **extra: str) -> Path:
        values = {key: str(value) for key, value in self.settings.flat().items()} | extra
        target.write_text(string.Template(template.read_text()).substitute(values))
        return target


class Kafka(Service):
    name = "kafka"

    @property
    def ports(self) -> list[ListenPort]:
        return [
            ListenPort(self.settings.stack.kafka_port, "kafka_port"),
            ListenPort(self.settings.stack.kafka_controller_port, "kafka_controller_port"),
        ]

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def prepare(self) -> None:
        self.render(INFRA_DIR / "kafka" / "server.properties.template", self.config_file, data_dir=str(self.data_dir))
        if not (self.data_dir / "meta.properties").exists():
            self._format_storage()

    def _format_storage(self) -> None:
        format_command = [*self._java(), "kafka.tools.StorageTool", "format", "-t", kafka_cluster_id()]
        result = subprocess.run(
            [*format_command, "-c", str(self.config_file)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage in {self.data_dir} failed:\n{result.stdout}{result.stderr}")

    def _java(self) -> list[str]:
        jars = self.settings.stack.jars_dir.resolve() / "kafka"
        if not any(jars.glob("kafka_2.13-*.jar")):
            raise StackError(f"Kafka jars not found in {jars}; run `make setup` to resolve them from Maven Central")
        return [
            find_executable("java", "install a JDK 17 or run `make setup`"),
            f"-Xms{self.settings.stack.kafka_heap}",
            f"-Xmx{self.settings.stack.kafka_heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={INFRA_DIR / 'kafka' / 'log4j2.properties'}",
            "-cp",
            f"{jars}/*",
        ]

    def command(self) -> list[str]:
        return [*self._java(), "kafka.Kafka", str(self.config_file)]

    def is_ready(self) -> bool:
        try:
            kafka_admin(self.settings).list_topics(timeout=2)  # a metadata request
            return True
        except KafkaException:
            return False


class Redis(Service):
    name = "redis"

    @property
    def ports(self) -> list[ListenPort]:
        return [ListenPort(self.settings.stack.redis_port, "redis_port")]

    def prepare(self) -> None:
        self.render(INFRA_DIR / "redis" / "redis.conf.template", self.home / "redis.conf", data_dir=str(self.home))

    def command(self) -> list[str]:
        return [find_executable("redis-server", "run `make setup`"), str(self.home / "redis.conf")]

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.settings.stack.bind_host, port=self.settings.stack.redis_port, socket_timeout=2)

    def is_ready(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


class RedisClusterNode(Redis):
    """One master of the local Redis Cluster: Redis' settings, on KF_REDIS_PORT + index, cluster-enabled."""

    def __init__(self, settings: Settings, index: int):
        self.name, self.port = f"redis-{index}", settings.stack.redis_port + index
        super().__init__(settings)

    @property
    def ports(self) -> list[ListenPort]:
        return [ListenPort(self.port, "redis_port"), ListenPort(self.port + CLUSTER_BUS_OFFSET, "redis_port")]

    def prepare(self) -> None:
        base = self.render(
            INFRA_DIR / "redis" / "redis.conf.template",
            self.home / "base.conf",
            data_dir=str(self.home),
            redis_port=str(self.port),
        )
        self.render(
            INFRA_DIR / "redis" / "cluster-node.conf.template",
            self.home / "redis.conf",
            data_dir=str(self.home),
            base_config=str(base),
        )

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.settings.stack.bind_host, port=self.port, socket_timeout=2)


class FlinkProcess(Service):
    """A process of the local standalone Flink session cluster, started in the foreground by the
    script of the Flink distribution that the pinned apache-flink package ships."""

    script: str

    @property
    def conf_dir(self) -> Path:
        return (self.settings.stack.run_dir / "flink-cluster" / "conf").resolve()

    def prepare(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        for logging_config in (FLINK_HOME / "conf").glob("log4j*.properties"):
            shutil.copy(logging_config, self.conf_dir)
        shipped = (FLINK_HOME / "conf" / "config.yaml").read_text()
        java_options = re.search(r"^\s*all: (.+)$", shipped, re.MULTILINE).group(1)  # the JDK 17 module flags
        self.render(
            INFRA_DIR / "flink" / "config.yaml.template", self.conf_dir / "config.yaml", java_options=java_options
        )

    def command(self) -> list[str]:
        return [str(FLINK_HOME / "bin" / self.script), "start-foreground"]

    def environment(self) -> dict[str, str]:
        directories = {"FLINK_CONF_DIR": str(self.conf_dir), "FLINK_LOG_DIR": str(self.log_file.parent)}
        return with_flink_classpath(self.settings, os.environ) | directories

    def overview(self) -> dict | None:
        """The JobManager's /overview (task managers, slots, jobs), None while it does not answer."""
        try:
            return cluster_rest(self.settings).call("/overview", timeout_s=2)
        except (OSError, ValueError):
            return None


class FlinkJobManager(FlinkProcess):
    name = "flink-jobmanager"
    script = "jobmanager.sh"

    @property
    def ports(self) -> list[ListenPort]:
        return [
            ListenPort(self.settings.stream.flink_rest_port, "flink_rest_port"),
            ListenPort(self.settings.stream.flink_rpc_port, "flink_rpc_port"),
        ]

    def is_ready(self) -> bool:
        return self.overview() is not None


class FlinkTaskManager(FlinkProcess):
    script = "taskmanager.sh"

    def __init__(self, settings: Settings, index: int):
        self.name, self.index = f"flink-taskmanager-{index}", index
        super().__init__(settings)

    @property
    def ports(self) -> list[ListenPort]:
        return []  # its RPC and data ports are chosen when it starts

    def prepare(self) -> None:
        """The JobManager wrote the cluster's configuration."""

    def is_ready(self) -> bool:
        overview = self.overview()
        return overview is not None and overview["taskmanagers"] > self.index


class Application(Service):
    """A Kingfisher program in the background: `python -m <module>` with the stack's settings."""

    module: str

    @property
    def ports(self) -> list[ListenPort]:
        return []

    def prepare(self) -> None:
        """Applications keep their state in Kafka, Redis and KF_RUN_DIR; nothing to write first."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.arguments()]

    def arguments(self) -> list[str]:
        return []

    def is_ready(self) -> bool:
        """Running is all a program without an endpoint can show; the log file tells the rest."""
        return True


class FeatureJob(Application):
    name = "feature-job"
    module = "streams.feature_job"

    def command(self) -> list[str]:
        return feature_job_command(self.settings)


def feature_job_command(settings: Settings, *arguments: str) -> list[str]:
    """The feature job: in a MiniCluster of its own, or with KF_FLINK_CLUSTER submitted by `flink run`
    to the Flink cluster, whose client stays attached (it keeps the sample log's retention)."""
    if not settings.stream.flink_cluster:
        return [sys.executable, "-m", "streams.feature_job", *arguments]
    python = ["-pyclientexec", sys.executable, "-pyexec", sys.executable]
    submit = [str(FLINK_HOME / "bin" / "flink"), "run", "-m", flink_rest_address(settings), *python]
    return [*submit, "-pym", "streams.feature_job", "--", *arguments]


def flink_rest_address(settings: Settings) -> str:
    return f"{settings.stack.bind_host}:{settings.stream.flink_rest_port}"


def flink_rest_url(settings: Settings) -> str:
    return f"http://{flink_rest_address(settings)}"


class FlinkRest:
    """Flink's REST API, the one client of it: a session cluster's JobManager (`make cluster-up`) or a
    job's MiniCluster (the benchmarks), each at its own address."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def call(self, path: str, method: str = "GET", timeout_s: float = 10.0) -> dict:
        """One call, e.g. `/jobs/overview`; OSError when the API does not answer or refuses."""
        request = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
        return orjson.loads(body) if body else {}

    def get(self, path: str) -> dict | None:
        """The answer to GET `path`; None while the cluster is starting (5xx, refused). A 4xx is a
        wrong request and raises."""
        try:
            return self.call(path)
        except urllib.error.HTTPError as error:
            if error.code < 500:
                raise
            return None
        except OSError:
            return None

    def job_ids(self) -> list[str]:
        """The ids of the jobs the cluster has, running or not; empty while it does not answer."""
        return [job["id"] for job in (self.get("/jobs") or {}).get("jobs", [])]

    def all_tasks_running(self, job_id: str) -> bool:
        job = self.get(f"/jobs/{job_id}")
        return job is not None and all(vertex["status"] == "RUNNING" for vertex in job["vertices"])

    def completed_checkpoints(self, job_id: str) -> list[dict]:
        """The job's completed checkpoints in Flink's history (which keeps only the newest few)."""
        checkpoints = self.get(f"/jobs/{job_id}/checkpoints")
        return [c for c in checkpoints["history"] if c["status"] == "COMPLETED"] if checkpoints else []

    def restored_checkpoint(self, job_id: str) -> int | None:
        """The id of the checkpoint the job restored from; None: it started without one."""
        restored = self.call(f"/jobs/{job_id}/checkpoints")["latest"].get("restored")
        return restored["id"] if restored else None


def cluster_rest(settings: Settings) -> FlinkRest:
    """The REST API of the local Flink session cluster (`make cluster-up`)."""
    return FlinkRest(flink_rest_url(settings))


class RecommendationService(Application):
    name = "service"
    module = "serving"

    @property
    def ports(self) -> list[ListenPort]:
        return [ListenPort(self.settings.serving.serve_port, "serve_port")]

    @property
    def url(self) -> str:
        return f"http://{self.address}/"

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}readyz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False


class Retrainer(Application):
    name = "retrainer"
    module = "training.scheduler"

    def arguments(self) -> list[str]:
        # The demo has just trained the first version: the next run is one period away, or at once when
        # that was a quick one (the scheduler reads it from the live manifest).
        return ["--delay", f"{self.settings.training.retrain_every_s}s", "--no-progress"]


def services(settings: Settings) -> list[Service]:
    """The infrastructure in start order; it stops in reverse."""
    return [
        *redis_servers(settings),
        Kafka(settings),
        *(flink_cluster(settings) if settings.stream.flink_cluster else []),
    ]


def flink_cluster(settings: Settings) -> list[FlinkProcess]:
    managers = [FlinkTaskManager(settings, index) for index in range(settings.stream.flink_taskmanagers)]
    return [FlinkJobManager(settings), *managers]


def redis_servers(settings: Settings) -> list[Redis]:
    if not settings.stack.redis_cluster:
        return [Redis(settings)]
    return [RedisClusterNode(settings, index) for index in range(settings.stack.redis_cluster_masters)]


def ensure_redis_cluster(settings: Settings) -> str:
    """Form the local Redis Cluster from its fresh masters, or wait for a formed one (its nodes
    remember it across restarts) to cover every slot; returns which it was."""
    nodes = redis_servers(settings)
    known = int(_cluster_info(nodes[0]).get("cluster_known_nodes", 1))
    formed = "already formed"
    if known == 1:
        addresses = [f"{settings.stack.bind_host}:{node.port}" for node in nodes]
        command = [find_executable("redis-cli", "run `make setup`"), "--cluster", "create", *addresses]
        created = subprocess.run(
            [*command, "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60
        )
        if created.returncode != 0:
            raise StackError(f"redis-cli --cluster create failed:\n{created.stdout[-2000:]}{created.stderr[-2000:]}")
        formed = "created"
    deadline = time.monotonic() + settings.stack.startup_timeout_s
    while not all(_cluster_info(node).get("cluster_state") == "ok" for node in nodes):
        if time.monotonic() > deadline:
            raise StackError(f"the Redis Cluster did not cover all slots in time; see {nodes[0].log_file}")
        time.sleep(POLL_INTERVAL_S)
    return formed


def _cluster_info(node: Redis) -> dict[str, str]:
    client = node.client()
    try:
        return {key: str(value) for key, value in client.cluster("info").items()}
    finally:
        client.close()


def applications(settings: Settings) -> list[Application]:
    """The programs `make demo` starts after the infrastructure, in start order."""
    return [FeatureJob(settings), RecommendationService(settings), Retrainer(settings)]


def kafka_cluster_id(random_bytes: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A KRaft cluster id: 16 random bytes in URL-safe base64, as `kafka-storage random-uuid` prints.

    Like Kafka's own `Uuid.randomUuid`, ids starting with "-" are drawn again: the storage tool's
    argument parser would read such an id as an option (1 start in 64 failed that way).
    """
    while (cluster_id := base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")).startswith("-"):
        pass
    return cluster_id


def kafka_admin(settings: Settings) -> AdminClient:
    # librdkafka logs every refused connection; while polling for readiness that is noise.
    quiet = logging.getLogger("kingfisher.stack.kafka-admin")
    quiet.setLevel(logging.CRITICAL)
    return AdminClient({"bootstrap.servers": settings.stack.kafka_bootstrap, "logger": quiet})


def find_executable(name: str, remedy: str) -> str:
    java_home = os.environ.get("JAVA_HOME")
    if name == "java" and java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    path = shutil.which(name)
    if path is None:
        raise StackError(f"`{name}` not found on PATH; {remedy}")
    return path


def ports_below_ephemeral() -> range:
    """Ports for the servers a test or bench starts: below the kernel's ephemeral range, since a
    port the kernel hands out can be taken by any process's outgoing connection (CI saw a JVM's)
    before the server binds it."""
    try:
        top = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        top = 32768
    return range(top - 6_000, top) if top > 16_000 else range(26_000, 32_000)


def free_port(candidates: range, handed_out: set[int]) -> int:
    """A port of `candidates` that is free now and not in `handed_out`, which it joins."""
    while True:
        port = random.choice(candidates)
        if port in handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        handed_out.add(port)
        return port


def ensure_port_free(host: str, listen: ListenPort) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as the servers use it: only a listening socket, not TIME_WAIT, blocks the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, listen.port))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            raise StackError(
                f"port {listen.port} ({listen.setting}) on {host} is already in use by {port_owner(listen.port)}. "
                f"Stop that process, or pick a free port: {listen.variable}=<port> make up"
            ) from None


def port_owner(port: int) -> str:
    for connection in psutil.net_connections(kind="inet"):
        if connection.laddr and connection.laddr.port == port and connection.status == psutil.CONN_LISTEN:
            if connection.pid is None:
                break
            process = psutil.Process(connection.pid)
            return f"pid {process.pid} ({' '.join(process.cmdline())[:120]})"
    return "another process"


def log_tail(path: Path) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])


def wait_ready(service: Service, process: subprocess.Popen | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StackError(
                f"{service.name} exited with code {process.returncode} while starting; see {service.log_file}:\n"
                f"{log_tail(service.log_file)}"
            )
        if service.is_ready():
            return
        time.sleep(POLL_INTERVAL_S)
    raise StackError(f"{service.name} did not answer within {timeout_s:.0f}s; see {service.log_file}")


def start(service: Service) -> str:
    if service.running_process() is not None:
        wait_ready(service, None, service.settings.stack.startup_timeout_s)
        return "already running"
    service.home.mkdir(parents=True, exist_ok=True)
    service.log_file.parent.mkdir(parents=True, exist_ok=True)
    service.prepare()
    with service.log_file.open("ab") as log:
        process = subprocess.Popen(
            service.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=service.environment(),
        )
    service.pid_file.write_text(f"{process.pid} {started_ticks(process.pid)}")
    try:
        wait_ready(service, process, service.settings.stack.startup_timeout_s)
    except StackError:
        stop(service)
        raise
    return "started"


def stop(service: Service) -> str:
    process = service.running_process()
    service_state = "not running"
    if process is not None:
        family = [process, *process.children(recursive=True)]
        for member in family:
            member.terminate()
        _, alive = psutil.wait_procs(family, timeout=STOP_TIMEOUT_S)
        for member in alive:
            member.kill()
        psutil.wait_procs(alive, timeout=STOP_TIMEOUT_S)
        service_state = "stopped" if not alive else "killed after a graceful stop timed out"
    service.pid_file.unlink(missing_ok=True)
    return service_state


def topic_specs(settings: Settings) -> list[NewTopic]:
    """Every topic of the system. `items` is compacted (latest record per item_id); the low-volume
    topics have one partition, which also keeps model announcements in total order."""
    return [
        NewTopic(settings.stack.topic_events, num_partitions=settings.stack.events_partitions, replication_factor=1),
        NewTopic(
            settings.stack.topic_items, num_partitions=1, replication_factor=1, config={"cleanup.policy": "compact"}
        ),
        NewTopic(settings.stack.topic_dlq, num_partitions=1, replication_factor=1),
        NewTopic(settings.stack.topic_model_updates, num_partitions=1, replication_factor=1),
    ]


def ensure_topics(settings: Settings) -> list[str]:
    """Create the missing topics; returns the names created."""
    admin = kafka_admin(settings)
    existing = admin.list_topics(timeout=10).topics
    missing = [topic for topic in topic_specs(settings) if topic.topic not in existing]
    if not missing:
        return []
    created = []
    for name, future in admin.create_topics(missing).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as error:
            # Another `up` may have created it meanwhile: the goal is reached either way.
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise StackError(f"creating topic {name} failed: {error}") from None
    wait_for_leaders(settings, created)
    return created


def wait_for_leaders(settings: Settings, topics: list[str]) -> None:
    """Until every partition of `topics` answers an offsets request: for a moment after creation
    the metadata names a leader that still answers "not leader for partition"."""
    consumer = Consumer({"bootstrap.servers": settings.stack.kafka_bootstrap, "group.id": "kingfisher-stack"})
    deadline = time.monotonic() + settings.stack.startup_timeout_s
    try:
        for name in topics:
            for partition in consumer.list_topics(name, timeout=10).topics[name].partitions:
                while True:
                    try:
                        consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=5)
                        break
                    except KafkaException as error:
                        if time.monotonic() > deadline:
                            raise StackError(f"topic {name} partition {partition} did not answer: {error}") from None
                        time.sleep(POLL_INTERVAL_S)
    finally:
        consumer.close()


def up(settings: Settings) -> None:
    start_all(settings, services(settings))
    if settings.stack.redis_cluster:
        console.print(f"redis cluster {ensure_redis_cluster(settings)}")
    created = ensure_topics(settings)
    console.print(f"topics: {', '.join(created) + ' created' if created else 'all present'}")


def start_all(settings: Settings, stack: list[Service]) -> None:
    # Every port is checked before anything starts, so a conflict leaves no half-started stack.
    for service in stack:
        if service.running_process() is None:
            for listen in service.ports:
                ensure_port_free(settings.stack.bind_host, listen)
    for service in stack:
        where = f" on {service.address}" if service.ports else ""
        console.print(f"{service.name:<11} {start(service)}{where} (log: {service.log_file})")


def down(settings: Settings) -> None:
    cluster = [] if settings.stream.flink_cluster else running(flink_cluster(settings))
    for service in [*reversed(applications(settings)), *reversed(cluster), *reversed(services(settings))]:
        console.print(f"{service.name:<11} {stop(service)}")


def cluster_up(settings: Settings) -> None:
    start_all(settings, flink_cluster(settings))
    console.print(f"flink cluster: {flink_rest_url(settings)} (web UI and REST)")


def cluster_down(settings: Settings) -> None:
    for service in reversed(flink_cluster(settings)):
        console.print(f"{service.name:<11} {stop(service)}")


def running(candidates: list[Service]) -> list[Service]:
    return [service for service in candidates if service.running_process() is not None]


def status(settings: Settings) -> bool:
    """Print a table of every component; True when the infrastructure answers and every
    application that was started still runs and answers."""
    table = Table("component", "state", "pid", "address", "log")
    healthy = True
    cluster = [] if settings.stream.flink_cluster else running(flink_cluster(settings))
    for service in [*services(settings), *cluster, *applications(settings)]:
        process = service.running_process()
        ready = process is not None and service.is_ready()
        started = process is not None or service.pid_file.exists()
        if isinstance(service, Application):
            healthy &= ready or not started
            state = "ready" if ready else ("not answering" if process else "exited" if started else "not started")
        else:
            healthy &= ready
            state = "ready" if ready else ("not answering" if process else "stopped")
        pid = str(process.pid) if process else "-"
        table.add_row(service.name, state, pid, service.address, str(service.log_file))
    Console().print(table)
    for job in flink_jobs(settings):
        Console().print(f"flink job {job['name']} ({job['jid']}): {job['state']}")
    return healthy


def flink_jobs(settings: Settings) -> list[dict]:
    """The Flink cluster's jobs, newest first; none when no JobManager answers."""
    try:
        jobs = cluster_rest(settings).call("/jobs/overview", timeout_s=2)["jobs"]
    except (OSError, ValueError):
        return []
    return sorted(jobs, key=lambda job: -job["start-time"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="infra/stack.py",
        description="Start, stop and inspect the local Kafka broker, Redis server and the demo's programs "
        "(settings: KF_* variables).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start every service that is not running, wait until it answers, create topics")
    commands.add_parser("down", help="stop every program and service; leaves data and logs in KF_RUN_DIR")
    commands.add_parser("status", help="show each component's state; exit code 0 only when all started ones answer")
    commands.add_parser("cluster-up", help="start the local Flink session cluster: a JobManager and its TaskManagers")
    commands.add_parser("cluster-down", help="stop the local Flink session cluster")
    arguments = parser.parse_args(argv)
    settings = Settings()
    actions = {"up": up, "down": down, "status": status, "cluster-up": cluster_up, "cluster-down": cluster_down}
    return exit_code(lambda: actions[arguments.command](settings))


def exit_code(command: Callable[[], object]) -> int:
    """Run one of the stack CLIs' commands: 1 when it fails (a StackError, shown in one red line)
    or reports an unhealthy state (returns False), else 0."""
    try:
        return 1 if command() is False else 0
    except StackError as error:
        console.print(f"[bold red]error:[/] {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
