"""What every Kingfisher Flink job stands on: its execution environment, Kafka source and sinks."""

import os
import site
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow.fs
from find_libpython import find_libpython
from pyflink.common import Configuration
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors import Sink
from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource
from pyflink.java_gateway import get_gateway

from schemas.config import Settings
from schemas.features import FeatureSpec
from streams.flink_classpath import flink_jars_directory, with_flink_classpath
from streams.key_layout import KEY_GROUPS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PYFLINK_WORKER_MODE_VARIABLE = "_python_worker_execution_mode"  # PyFlink's own spelling (pyflink.datastream)
JOB_LOGGING = Path(__file__).with_name("log4j.properties")
CHANGELOG_DIRECTORY = "changelog"
"""Beside the job directories of a job's checkpoints: the state changelog's files."""


def changelog_in_use(settings: Settings) -> bool:
    return settings.stream.state_changelog and settings.stream.state_backend == "hashmap"


def connector_jar_urls(settings: Settings) -> list[str]:
    directory = flink_jars_directory(settings)
    jars = sorted(directory.glob("flink-sql-connector-kafka-*.jar"))
    if not jars:
        raise FileNotFoundError(f"no Flink Kafka connector jar in {directory}; run `make setup` to resolve it")
    return [jar.as_uri() for jar in jars]


def checkpoint_uri(settings: Settings, namespace: str) -> str:
    """Where the job writing `namespace` checkpoints: under KF_CHECKPOINT_URI, else the stack's directory."""
    base = settings.stream.checkpoint_uri or settings.stack.checkpoints_dir.resolve().as_uri()
    return f"{base.rstrip('/')}/{namespace}"


def rocksdb_directory(settings: Settings) -> Path:
    """RocksDB's working files: on the process's own disk (KF_SCRATCH_DIR), not a shared volume, and
    not in the system's temporary directory."""
    return settings.stack.scratch.resolve() / "flink" / "rocksdb"


def local_directory(uri: str) -> Path | None:
    """The directory a file: URI names; None for a remote file system (s3:, hdfs:, ...)."""
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def latest_checkpoint(uri: str) -> str | None:
    """The newest completed checkpoint under `uri` (by its _metadata's time, then its number), if any."""
    completed = completed_checkpoints(uri)
    return max(completed, key=lambda path: (completed[path], int(path.rsplit("-", 1)[1])), default=None)


def completed_checkpoints(uri: str) -> dict[str, float]:
    """The completed checkpoints under `uri` with the time their _metadata was written (epoch s):
    each <job id>/chk-<n> whose _metadata exists, on any file system pyarrow reaches (local, S3,
    GCS, HDFS; credentials from the usual environment)."""
    filesystem, root = pyarrow.fs.FileSystem.from_uri(uri)
    jobs = filesystem.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    checkpoints = [
        entry.path
        for job in jobs
        if job.type == pyarrow.fs.FileType.Directory
        for entry in filesystem.get_file_info(pyarrow.fs.FileSelector(job.path, allow_not_found=True))
        if entry.base_name.startswith("chk-")
    ]
    metadata = filesystem.get_file_info([f"{path}/_metadata" for path in checkpoints])
    return {
        path: info.mtime.timestamp()
        for path, info in zip(checkpoints, metadata, strict=True)
        if info.type == pyarrow.fs.FileType.File
    }


FEATURE_SPEC_FILE = "feature_spec.json"


class FeatureSpecChanged(RuntimeError):
    """The job's checkpoints hold state built with another feature spec than its settings'."""


def check_feature_spec(checkpoints: str, spec: FeatureSpec, resuming: bool) -> None:
    """Record `spec` beside the job's checkpoints, which hold state built with it; when `resuming`,
    first refuse checkpoints recorded with another spec (their sequences, seen sets and popularity
    were kept by other rules) or with none: those are of a version before the state classes moved
    into `schemas.features`, and their pickles name modules that are no more."""
    filesystem, root = pyarrow.fs.FileSystem.from_uri(checkpoints)
    path = f"{root}/{FEATURE_SPEC_FILE}"
    remedy = "start the job with --fresh, or rebuild the namespace with `kingfisher replay`"
    if resuming:
        if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
            raise FeatureSpecChanged(
                f"the checkpoints under {checkpoints} are of an earlier version (README, Upgrading): {remedy}"
            )
        with filesystem.open_input_stream(path) as stream:
            recorded = FeatureSpec.model_validate_json(stream.read())
        if recorded != spec:
            raise FeatureSpecChanged(
                f"the checkpoints under {checkpoints} hold state built with another feature spec "
                f"({recorded.differences(spec)}): {remedy}, to apply the new one"
            )
    filesystem.create_dir(root, recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(spec.model_dump_json().encode())


def restore_location(requested: str | None, checkpoints: Path | None) -> str | None:
    """The URI to resume from: the one asked for (a path or URI), else the newest local checkpoint.
    Remote checkpoints are resumed from by asking (or by the cluster's own high availability)."""
    if requested:
        return requested if urlparse(requested).scheme else Path(requested).resolve().as_uri()
    newest = latest_checkpoint(checkpoints.resolve().as_uri()) if checkpoints is not None else None
    return Path(newest).as_uri() if newest is not None else None


def prepare_local_jvm(settings: Settings) -> None:
    """The environment of the JVM PyFlink starts for a local job: it logs through JOB_LOGGING (a
    rolling file, without a warning Flink repeats at every checkpoint) unless LOG4J_PROPERTIES names
    another configuration, reads the size and count of the files from the environment, and starts
    with KF_FLINK_JVM_OPTIONS when they are set."""
    os.environ.setdefault("LOG4J_PROPERTIES", str(JOB_LOGGING))
    os.environ["KF_FLINK_LOG_FILE_SIZE"] = settings.stream.flink_log_file_size
    os.environ["KF_FLINK_LOG_FILES"] = str(settings.stream.flink_log_files)
    if settings.stream.flink_jvm_options is not None:
        os.environ["JVM_ARGS"] = settings.stream.flink_jvm_options  # what PyFlink's launcher passes to java


def execution_environment(
    settings: Settings, parallelism: int, checkpoints: str | None = None, restore_from: str | None = None
) -> StreamExecutionEnvironment:
    """A local MiniCluster when run as a script, the cluster's environment under `flink run -py`.

    With `checkpoints` (a URI), the job checkpoints there every KF_CHECKPOINT_INTERVAL_S into
    KF_STATE_BACKEND and keeps the checkpoints when it is cancelled or killed; `restore_from`
    (a URI) resumes from one of them."""
    prepare_local_jvm(settings)
    if changelog_in_use(settings):
        # PyFlink starts the MiniCluster's JVM from this process's environment at its first Java call.
        os.environ.update(with_flink_classpath(settings, os.environ))
    config = Configuration()
    # A MiniCluster's REST API (the bench reads checkpoint statistics from it) on a free port of this host only.
    config.set_string("rest.bind-address", settings.stack.bind_host)
    config.set_string("rest.address", settings.stack.bind_host)
    # Python operators must run in the interpreter that has Kingfisher's packages, not the first `python` on PATH.
    config.set_string("python.executable", sys.executable)
    config.set_string("python.client.executable", sys.executable)
    config.set_string("python.execution-mode", settings.stream.python_execution_mode)
    if parallelism > 1:  # the key layout's (streams.key_layout); Flink's default, fixed
        config.set_string("pipeline.max-parallelism", str(KEY_GROUPS))
    if settings.stream.python_execution_mode == "process":
        # On a MiniCluster PyFlink otherwise runs the Python workers as threads of this process
        # ("loopback"), all behind its one interpreter lock; as on a cluster, each slot's worker is
        # then a process of its own.
        os.environ[PYFLINK_WORKER_MODE_VARIABLE] = "process"
    if settings.stream.python_execution_mode == "thread":
        if find_libpython() is None:
            raise RuntimeError(
                f"KF_PYTHON_EXECUTION_MODE=thread embeds Python in Flink's JVM, which needs a shared libpython that "
                f"{sys.executable} lacks: use a Python built with --enable-shared, or KF_PYTHON_EXECUTION_MODE=process"
            )
        # The interpreter embedded in the JVM starts from the base Python, without this virtualenv's
        # packages or the project's modules: give it both.
        config.set_string("python.pythonpath", os.pathsep.join([*site.getsitepackages(), str(PROJECT_ROOT)]))
    # Process mode: small bundles bound the time a record waits in the Python worker (<= 0 silently means 1000 ms).
    config.set_string("python.fn-execution.bundle.size", str(settings.stream.python_bundle_size))
    config.set_string("python.fn-execution.bundle.time", str(settings.stream.python_bundle_time_ms))
    config.set_string("execution.buffer-timeout.interval", f"{settings.stream.network_flush_ms} ms")
    if settings.stream.flink_profile_python:
        config.set_string("python.profile.enabled", "true")
    if checkpoints is not None:
        config.set_string(
            "execution.checkpointing.interval", f"{round(settings.stream.checkpoint_interval_s * 1000)} ms"
        )
        config.set_string("execution.checkpointing.dir", checkpoints)
        config.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
        config.set_string("state.backend.type", settings.stream.state_backend)
        config.set_string("state.backend.rocksdb.localdir", str(rocksdb_directory(settings)))
        config.set_string("execution.checkpointing.incremental", str(settings.stream.checkpoint_incremental).lower())
        if changelog_in_use(settings):
            config.set_string("state.changelog.enabled", "true")
            config.set_string("state.changelog.storage", "filesystem")
            config.set_string("state.changelog.dstl.dfs.base-path", f"{checkpoints}/{CHANGELOG_DIRECTORY}")
            config.set_string(
                "state.changelog.periodic-materialize.interval",
                f"{round(settings.stream.changelog_materialize_s * 1000)} ms",
            )
    if restore_from is not None:
        config.set_string("execution.state-recovery.path", restore_from)
        if changelog_in_use(settings):
            # Flink's default (NO_CLAIM) makes the first checkpoint a full one, which the changelog
            # cannot take: the job owns what it resumes from, and deletes it once newer ones cover it.
            config.set_string("execution.state-recovery.claim-mode", "CLAIM")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(parallelism)
    env.add_jars(*connector_jar_urls(settings))
    return env


def kafka_text_source(settings: Settings, topic: str, group_id: str, *, bounded: bool) -> KafkaSource:
    """Read `topic` from its earliest offset; a bounded source stops at the offsets the topic had at start."""
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(settings.stack.kafka_bootstrap)
        .set_topics(topic)
        .set_group_id(group_id)
        .set_starting_offsets(KafkaOffsetsInitializer.earliest())
        .set_value_only_deserializer(SimpleStringSchema())
    )
    if bounded:
        builder.set_bounded(KafkaOffsetsInitializer.latest())
    return builder.build()


def discarding_sink() -> Sink:
    """End of a pipeline whose last operator writes to Redis itself: Flink needs a sink to run a job."""
    return Sink(get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink())
