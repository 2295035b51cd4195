"""Kingfisher's one typed configuration: every setting with its default, in one place, in sections.

The sections are the processes' concerns: `stack` (services, topics, files), `pipeline` (what the
stream keeps and a recommendation considers, shared by all three processes), `stream` (the
feature job), `training` (with the models' hyper-parameters in `training.model`), `serving` and
`demo`. Code reads `settings.<section>.<name>`; every name is unique across sections, so a
setting also has one flat name.

Values come from, highest precedence first: arguments to ``Settings(...)`` (flat or by section),
environment variables by section ``KF_<SECTION>__<NAME>`` (``KF_STACK__KAFKA_PORT=19092``,
``KF_TRAINING__MODEL__RANKER_WIDTH=32``), flat environment variables ``KF_<NAME>``
(``KF_KAFKA_PORT=19092``), the TOML file named by ``KF_CONFIG_FILE`` (default ``kingfisher.toml``
in the working directory, if present; tables ``[stack]``, ``[training.model]``… or flat keys),
then the defaults below. The README's configuration table lists the same settings.
"""

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from schemas.experiments import Experiment
from schemas.features import FeatureSpec
from schemas.hyperparameters import Hyperparameters
from schemas.validation import json_text

Port = Annotated[int, Field(ge=1, le=65535)]

CONFIG_FILE_VARIABLE = "KF_CONFIG_FILE"
DEFAULT_CONFIG_FILE = "kingfisher.toml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StackSettings(Section):
    """Where the local stack's services listen, its topics, Redis and files."""

    run_dir: Path = Field(Path(".run"), description="Data, logs and pid files of the local stack.")
    scratch_dir: Path | None = Field(
        None,
        description="Each process's own working files on local disk (the service workers' Prometheus files, RocksDB's "
        "working directory), never shared between pods; unset: KF_RUN_DIR.",
    )
    jars_dir: Path = Field(Path(".deps/jars"), description="Jars resolved from Maven Central by `make setup`.")
    bind_host: str = Field("127.0.0.1", description="Address every local service listens on.")
    kafka_servers: str | None = Field(
        None,
        description="Kafka bootstrap servers the programs connect to (host:port,...), e.g. a cluster's; "
        "unset: the local broker at KF_BIND_HOST:KF_KAFKA_PORT.",
    )
    redis_host: str | None = Field(
        None,
        description="Host of the Redis server (or a Redis Cluster node) the programs connect to; unset: KF_BIND_HOST.",
    )
    kafka_port: Port = Field(9092, description="Kafka client listener.")
    kafka_controller_port: Port = Field(9093, description="Kafka KRaft controller listener.")
    kafka_heap: str = Field("1g", description="JVM heap of the Kafka broker (-Xms and -Xmx).")
    topic_events: str = Field("events", description="User events, keyed by user_id.")
    topic_items: str = Field("items", description="Catalogue records, compacted by item_id.")
    topic_dlq: str = Field("events.dlq", description="Events that failed validation, with the reason.")
    topic_model_updates: str = Field("model-updates", description="Announcements of published model bundles.")
    events_partitions: int = Field(4, ge=1, description="Partitions of the events topic (the others have 1).")
    redis_port: Port = Field(6379, description="Redis server port (with KF_REDIS_CLUSTER: a cluster node's).")
    redis_cluster: bool = Field(
        False,
        description="Redis is a Redis Cluster, reached through the node at KF_REDIS_PORT; `make up` starts "
        "KF_REDIS_CLUSTER_MASTERS masters on that port and the next ones. false: one Redis server.",
    )
    redis_cluster_masters: int = Field(3, ge=3, description="Masters of the local Redis Cluster (KF_REDIS_CLUSTER).")
    redis_maxmemory: str = Field("2gb", description="Redis memory limit.")
    redis_maxmemory_policy: str = Field(
        "volatile-lru",
        description="Eviction when full: only keys with a TTL (per-user/per-item features), least recently used first.",
    )
    namespace: str = Field("live", description="Redis namespace the feature job writes to.")
    movielens_path: Path | None = Field(
        None, description="MovieLens directory (CSV or .dat layout); unset: ../shared/datasets/ml-latest-small."
    )
    startup_timeout_s: float = Field(
        90.0, gt=0, description="How long `make up` and `make demo` wait for each service or program to answer."
    )

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka_servers or f"{self.bind_host}:{self.kafka_port}"

    @property
    def redis_address(self) -> str:
        return self.redis_host or self.bind_host

    @property
    def scratch(self) -> Path:
        return self.scratch_dir or self.run_dir

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def samples_dir(self) -> Path:
        return self.run_dir / "samples"

    @property
    def models_dir(self) -> Path:
        return self.run_dir / "models"

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "flink" / "checkpoints"


class PipelineSettings(Section):
    """What the stream keeps per user and item and what a recommendation considers (all processes)."""

    features: FeatureSpec = Field(
        FeatureSpec(), description="What the stream keeps per user and item: the feature spec (`schemas/features.py`)."
    )
    label_threshold: float = Field(3.5, description="A rating at least this is a positive label (as SparrowRecSys).")
    candidates: int = Field(80, ge=1, description="Candidates retrieved by Faiss and ranked by DIN (M).")
    trending_candidates: int = Field(
        50, ge=0, description="Top trending items ranked by DIN besides the M Faiss candidates (fresh items' way in)."
    )
    new_item_candidates: int = Field(
        10,
        ge=0,
        description="Items published since the live model's training ranked besides the others: the user's nearest "
        "of them by retrieval score (new items' way in before they have interactions).",
    )
    covisitation_candidates: int = Field(
        20,
        ge=0,
        description="Items that most often followed the user's newest behaviours in the training data, ranked besides "
        "the others (those not already candidates).",
    )
    faiss_exact_max_items: int = Field(
        50_000, ge=1, description="Catalogues up to this size get an exact Faiss index; larger ones HNSW."
    )


class StreamSettings(Section):
    """The feature job: Flink, its Python operators, exactly-once and expiry."""

    redis_write_timeout_s: float = Field(
        5.0, gt=0, description="A feature-job write Redis leaves unanswered this long is retried (a hung server)."
    )
    checkpoint_interval_s: float = Field(10.0, gt=0, description="Flink checkpoint interval.")
    checkpoint_uri: str | None = Field(
        None,
        description="Base URI of the feature job's checkpoints, e.g. s3://bucket/kingfisher (needs Flink's filesystem "
        "plugin); unset: KF_RUN_DIR/flink/checkpoints, from which a restarted job resumes on its own.",
    )
    state_backend: Literal["hashmap", "rocksdb"] = Field(
        "hashmap",
        description="Where Flink keeps the job's state: hashmap (on the JVM heap, full checkpoints) or rocksdb "
        "(on local disk, state larger than memory, incremental checkpoints).",
    )
    checkpoint_incremental: bool = Field(
        True, description="RocksDB checkpoints upload only the files written since the previous checkpoint."
    )
    state_changelog: bool = Field(
        True,
        description="With the hashmap backend, a checkpoint writes Flink's log of the state changes since the "
        "last full copy of the state, which is taken every KF_CHANGELOG_MATERIALIZE_S: while a full copy is "
        "written, the first write to each user bucket copies the bucket's whole map, and those copies held every "
        "event back by a few hundred ms. Not used with rocksdb, which copies nothing.",
    )
    changelog_materialize_s: float = Field(
        120.0,
        gt=0,
        description="How often the state changelog (KF_STATE_CHANGELOG) takes a full copy of the state; a "
        "restarted job replays the changes logged since the newest one.",
    )
    flink_log_file_size: str = Field(
        "100MB",
        pattern=r"^[1-9][0-9]*(KB|MB|GB)$",
        description="A local job's Flink log (KF_RUN_DIR/logs/flink-*.log) starts a new file at this size, e.g. 64KB, "
        "100MB, 1GB.",
    )
    flink_log_files: int = Field(
        10, ge=1, description="Full Flink log files a local job keeps beside the current one (.1 the newest)."
    )
    python_execution_mode: Literal["thread", "process"] = Field(
        "thread",
        description="Where the job's Python operators run: thread (inside Flink's JVM) or process (a Python worker "
        "process per task slot, on the local MiniCluster too).",
    )
    python_bundle_size: int = Field(1000, ge=1, description="Flink Python bundle size (records; process mode).")
    python_bundle_time_ms: int = Field(
        50, ge=1, description="Flink Python bundle time (process mode); must be > 0 (0 silently means 1000 ms)."
    )
    python_state_cache_size: int = Field(
        200_000, ge=1, description="Users' and items' states each feature operator keeps in memory (the rest in Flink)."
    )
    stream_batch_ms: int = Field(
        100,
        ge=1,
        description="The feature job hands Python its records in batches gathered this long; its item and trending "
        "stages write each key at most once per this long.",
    )
    network_flush_ms: int = Field(
        5,
        ge=0,
        description="Flink sends the records in an output buffer that is not full after at most this long "
        "(`execution.buffer-timeout.interval`, Flink's default 100): each event crosses two such exchanges "
        "on its way to Redis, and at a low rate a buffer seldom fills; 0 sends each record at once.",
    )
    python_gc_thresholds: Annotated[tuple[int, int, int], BeforeValidator(json_text)] = Field(
        (50_000, 20, 100),
        description="`gc.set_threshold` of the feature job's and the backfill's Python: they hold every active "
        "user's and item's state and replace much of it each batch, where the default (700, 10, 10) collects often.",
    )
    python_gc_per_batch: bool = Field(
        True,
        description="The feature job's Python collects garbage once per batch, at its end, and then freezes what "
        "survives (`gc.freeze`), so no collection walks the states it holds again; off: collections come by "
        "KF_PYTHON_GC_THRESHOLDS, and each full one pauses the job while it walks every state.",
    )
    replay_batch_ms: int = Field(
        5000,
        ge=1,
        description="`kingfisher replay --flink` runs its job with batches gathered this long: a key is written "
        "once per batch, and a replay needs only each key's last state.",
    )
    backfill_workers: int = Field(
        2, ge=1, description="Processes `kingfisher replay` folds the topic in (at most one per partition)."
    )
    backfill_flush_s: float = Field(
        60.0,
        gt=0,
        description="A `kingfisher replay` worker writes its changed users once per this long and at its end "
        "(what it holds meanwhile grows with the events read).",
    )
    stream_key_buckets: int = Field(
        4,
        ge=1,
        description="Users and items are keyed into this many buckets, best a multiple of KF_FLINK_PARALLELISM: above "
        "parallelism 1 the buckets' keys spread them evenly over the subtasks (`streams/key_layout.py`). A checkpoint "
        "restores only into the same buckets: above parallelism 1 another number, or a move to or from parallelism 1, "
        "is refused on restore; at parallelism 1 another number is not detected (start --fresh and replay).",
    )
    flink_jvm_options: str | None = Field(
        None,
        description="Options of the JVM PyFlink starts for a local job (the MiniCluster), space-separated, e.g. "
        "-XX:TieredStopAtLevel=1 for jobs of seconds (the tests'); unset: the JVM_ARGS environment variable's, if "
        "any. Not used on a session cluster, whose JVMs read its config.yaml.",
    )
    flink_profile_python: bool = Field(
        False, description="Profile the Python operators into Flink's log (process mode)."
    )
    watermark_out_of_orderness_ms: int = Field(5000, ge=0, description="How late an event may be for event time.")
    source_idleness_s: float = Field(
        30.0, gt=0, description="A partition without events this long stops holding watermarks back."
    )
    dedupe_ttl_h: float = Field(24.0, gt=0, description="A user's remembered event ids expire after this long idle.")
    dedupe_capacity: int = Field(500, ge=1, description="Event ids remembered per user to drop redeliveries.")
    entity_ttl_h: float = Field(720.0, gt=0, description="Inactive users' and items' keys expire after this long.")
    flink_parallelism: int = Field(1, ge=1, description="Parallelism of the feature job's operators.")
    flink_cluster: bool = Field(
        False,
        description="Run the feature job on a standalone Flink session cluster (`make cluster-up` starts one "
        "locally) instead of a MiniCluster inside its own process.",
    )
    flink_rest_port: Port = Field(8081, description="REST port of the Flink cluster's JobManager (and its web UI).")
    flink_rpc_port: Port = Field(6123, description="RPC port of the local Flink cluster's JobManager.")
    flink_taskmanagers: int = Field(2, ge=1, description="TaskManagers of the local Flink cluster.")
    flink_slots: int = Field(2, ge=1, description="Task slots per TaskManager of the local Flink cluster.")
    sample_retention_days: int = Field(
        30, ge=1, description="UTC days of the training-sample log kept; the feature job deletes older days hourly."
    )


class TrainingSettings(Section):
    """Retraining: its data, evaluation, gate, registry and schedule; the models' hyper-parameters in `model`."""

    training_window_days: int = Field(
        30, ge=1, description="Training reads the sample log of the newest N UTC days (today included)."
    )
    training_max_rows: int = Field(
        2_000_000, ge=1, description="Most sample rows of the window a training run uses: the newest by event time."
    )
    train_seed: int = Field(
        0, description="Seed of sampling, initialisation and shuffling: same data and seed, same models."
    )
    holdout_fraction: float = Field(
        0.2, gt=0, lt=1, description="Newest share of events held out: first half validates, second half tests."
    )
    eval_max_queries: int = Field(
        2000, ge=1, description="Validation and test queries sampled from the time split's holdout."
    )
    eval_last_n: int = Field(
        0,
        ge=0,
        description="Also measure each retraining on a leave-last-N-per-user split (its models trained for "
        "measuring only, which about doubles a run); 0: the time split only. make bench-train measures N=5.",
    )
    gate_margin: float = Field(
        0.01,
        ge=0,
        description="A new model may trail the live one by this much (the served pipeline's NDCG@10, DIN's AUC "
        "within its pools), or popularity's NDCG@10 when no live one is comparable, and still publish.",
    )
    keep_versions: int = Field(5, ge=1, description="Model versions kept in the registry; older ones are deleted.")
    retrain_every_s: float = Field(
        900.0,
        gt=0,
        description="Period of the retraining scheduler; a run continues the live models on the events since their "
        "data (skipping when few are new) and trains from scratch once every KF_FULL_RETRAIN_EVERY_S.",
    )

    full_retrain_every_s: float = Field(
        86_400.0,
        gt=0,
        description="A scheduled retraining continues the live models on the events since their data (incremental) "
        "until the from-scratch run they descend from is this old; then it trains from scratch.",
    )
    incremental_min_rows: int = Field(
        1000, ge=1, description="An incremental retraining with fewer new sample rows than this skips the run."
    )
    incremental_replay: float = Field(
        1.0,
        ge=0,
        description="An incremental retraining also replays this many older training sequences per new one, "
        "sampled from all the older rows, so the models do not forget them.",
    )
    incremental_epochs: int = Field(
        2,
        ge=1,
        description="Epochs of each model in an incremental retraining (at KF_FINAL_LEARNING_RATE for retrieval).",
    )

    model: Hyperparameters = Field(Hyperparameters(), description="The models' hyper-parameters.")


class ServingSettings(Section):
    """The recommendation service: its port, budgets, limits and model calls."""

    serve_port: Port = Field(8080, description="Port of the recommendation service (on KF_BIND_HOST).")
    serve_workers: int = Field(
        1,
        ge=1,
        description="Service processes sharing KF_SERVE_PORT (SO_REUSEPORT), each loading and hot-swapping the "
        "models itself; /metrics of any one covers all (Prometheus multiprocess mode). Above 300 requests/s on two "
        "cores, 2: a process's Python runs on one core at a time (README, Serving performance).",
    )
    request_budget_ms: int = Field(
        100, ge=1, description="Time a request may wait for Redis before answering from trending/popularity."
    )
    events_ack_timeout_s: float = Field(
        10.0, gt=0, description="POST /v1/events answers 503 for a batch Kafka has not acknowledged within this."
    )
    model_budget_ms: float = Field(
        200,
        gt=0,
        description="Time a request may wait for the models (queue and call) before answering from "
        "trending/popularity: under overload the service sheds model work instead of queueing without end.",
    )
    max_k: int = Field(100, ge=1, description="Largest k a client may ask for.")
    admin_token: str | None = Field(None, description="Bearer token of the admin routes; unset: they answer 403.")
    model_poll_s: float = Field(5.0, gt=0, description="How often serving checks the registry for a new version.")
    serve_model_threads: int = Field(
        1,
        ge=1,
        description="Threads of a service process that run model and Faiss calls. The NumPy models hold the GIL "
        "between small operations, so a second thread in one process mostly waits for it; KF_SERVE_WORKERS "
        "uses more cores.",
    )
    serve_max_batch: int = Field(
        4, ge=1, le=64, description="Most concurrent recommendation requests ranked in one model call."
    )
    experiment: Annotated[Experiment | None, BeforeValidator(json_text)] = Field(
        None,
        description="The experiment the service starts with, as JSON (schemas/EXPERIMENTS.md), e.g. "
        '{"name": "v2-vs-v1", "arms": [{"name": "champion", "share": 0.5}, {"name": "challenger", "version": 2, '
        '"share": 0.5}]}; one set by POST /v1/admin/experiments (kept in the registry) takes its place. Unset: none.',
    )


class DemoSettings(Section):
    """What `make demo` loads."""

    demo_source: Literal["auto", "movielens", "synthetic"] = Field(
        "auto",
        description="History `make demo` loads. auto: KF_MOVIELENS_PATH, else ../shared/datasets/ml-latest-small, "
        "else a download of KF_MOVIELENS_URL, else the synthetic generator.",
    )
    movielens_url: str = Field(
        "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
        description="Where `make demo` downloads ml-latest-small when no copy is on disk (into KF_RUN_DIR/datasets).",
    )
    demo_synthetic_events: int = Field(50_000, ge=1, description="Events `make demo` publishes from the generator.")


class Settings(BaseSettings):
    """All settings of the local stack and the jobs; see the README for what each one does."""

    model_config = SettingsConfigDict(env_prefix="KF_", env_nested_delimiter="__", extra="forbid", frozen=True)

    stack: StackSettings = StackSettings()
    pipeline: PipelineSettings = PipelineSettings()
    stream: StreamSettings = StreamSettings()
    training: TrainingSettings = TrainingSettings()
    serving: ServingSettings = ServingSettings()
    demo: DemoSettings = DemoSettings()

    @staticmethod
    def feature_job_name(namespace: str) -> str:
        """The feature job's Flink job name and Kafka consumer group for `namespace`: operators and
        `make demo` read its committed offsets to see how far the stream has applied the topic."""
        return f"kingfisher-features-{namespace}"

    def flat(self) -> dict[str, Any]:
        """Every setting under its flat name (the config templates' placeholders)."""
        return {name: getattr(functools.reduce(getattr, path, self), name) for name, path in SETTING_PATHS.items()}

    def updated(self, **changes: Any) -> "Settings":
        """A copy with some settings changed, by flat name, validated like the originals."""
        return type(self)(**self.model_dump(), **changes)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = os.environ.get(CONFIG_FILE_VARIABLE, DEFAULT_CONFIG_FILE)
        return (
            _Sectioned(settings_cls, init_settings),
            env_settings,
            _FlatEnvironment(settings_cls),
            _Sectioned(settings_cls, TomlConfigSettingsSource(settings_cls, toml_file=config_file)),
        )


def setting_paths(model: type[BaseModel], path: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Each setting of `model` -> the sections it sits in; a name in two sections is an error (its
    flat name would be ambiguous)."""
    paths: dict[str, tuple[str, ...]] = {}
    for name, field in model.model_fields.items():
        inner = field.annotation
        found = (
            setting_paths(inner, (*path, name))
            if isinstance(inner, type) and issubclass(inner, BaseModel)
            else {name: path}
        )
        if twice := paths.keys() & found.keys():
            raise TypeError(f"settings {sorted(twice)} are in two sections: their flat names would be ambiguous")
        paths |= found
    return paths


SETTING_PATHS: Mapping[str, tuple[str, ...]] = setting_paths(Settings)
"""Each setting's flat name -> the sections it sits in, e.g. ``ranker_width -> (training, model)``."""


def environment_variable(name: str) -> str:
    """The variable that sets a setting, by its flat name, over every other environment variable:
    its sectioned form (``stream_batch_ms`` -> ``KF_STREAM__STREAM_BATCH_MS``)."""
    return "KF_" + "__".join(part.upper() for part in (*SETTING_PATHS[name], name))


def sectioned(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with every flat name moved into its section; a flat value wins over its section's.
    Unknown names stay where they are, for validation to reject by name."""
    nested: dict[str, Any] = {}
    for name, value in values.items():
        if name not in SETTING_PATHS:
            _merge(nested, name, value.model_dump() if isinstance(value, BaseModel) else value)
    for name, value in values.items():
        if name in SETTING_PATHS:
            section = functools.reduce(lambda table, key: table.setdefault(key, {}), SETTING_PATHS[name], nested)
            section[name] = value
    return nested


def _merge(into: dict[str, Any], name: str, value: Any) -> None:
    if isinstance(value, Mapping) and isinstance(into.get(name), dict):
        for key, inner in value.items():
            _merge(into[name], key, inner)
    else:
        into[name] = dict(value) if isinstance(value, Mapping) else value


class _Sectioned(PydanticBaseSettingsSource):
    """A source whose values may use flat names (arguments, TOML files written before sections)."""

    def __init__(self, settings_cls: type[BaseSettings], source: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self.source = source

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return sectioned(self.source())


class _FlatEnvironment(PydanticBaseSettingsSource):
    """`KF_<NAME>` for every setting, the names used before sections."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return sectioned(
            {name: os.environ[f"KF_{name.upper()}"] for name in SETTING_PATHS if f"KF_{name.upper()}" in os.environ}
        )
