"""Prometheus metrics of the service (exposed at /metrics).

With several service processes (KF_SERVE_WORKERS), the supervisor gives them one
PROMETHEUS_MULTIPROC_DIR: prometheus-client then keeps every value in a file there, and any
process's /metrics sums the counters and histograms of all of them (the model version is one
series per live process, labelled `pid`), which is what a scrape of the port expects.
"""

import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "kingfisher_request_seconds",
            "Request latency by route.",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.stage = Histogram(
            "kingfisher_stage_seconds",
            "Time per recommendation stage (redis, queue for the models, retrieval, ranking).",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.errors = Counter(
            "kingfisher_errors_total", "Answers with a 4xx or 5xx status.", ["route", "status"], registry=self.registry
        )
        self.fallbacks = Counter(
            "kingfisher_fallbacks_total",
            "Answers without the models or live state, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.candidates = Histogram(
            "kingfisher_candidates",
            "Candidates ranked per request.",
            buckets=(0, 10, 50, 100, 200, 300, 500, 1000),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "kingfisher_model_batch_size",
            "Recommendation requests ranked together in one model call.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.model_version = Gauge(
            "kingfisher_model_version",
            "Version of the live model bundle (0: none).",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.catalogue_items = Gauge(
            "kingfisher_catalogue_items",
            "Items of the live model's catalogue changed since its training: added (embedded from their content) "
            "and withdrawn.",
            ["change"],
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.gc_pauses = Histogram(
            "kingfisher_gc_pause_seconds",
            "Collections of Python's cyclic garbage collector by generation: every thread waits them out.",
            ["generation"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.arm_answers = Counter(
            "kingfisher_experiment_answers_total",
            "Recommendation answers by experiment and arm (a shadow arm: the requests it ranked beside the answer).",
            ["experiment", "arm"],
            registry=self.registry,
        )
        self.arm_tallies = Gauge(
            "kingfisher_experiment_events",
            "Impressions and clicks the stream attributed to each arm (read from Redis every KF_MODEL_POLL_S).",
            ["experiment", "arm", "type"],
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.arm_ctr = Gauge(
            "kingfisher_experiment_ctr",
            "Each arm's clicks per impression (bound=estimate) and its 95 % Wilson interval (bound=low, high).",
            ["experiment", "arm", "bound"],
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.events = Counter(
            "kingfisher_events_accepted_total", "Events accepted by POST /v1/events.", registry=self.registry
        )

    def model_live(self, version: int, added: int, withdrawn: int) -> None:
        """The live bundle's version and its catalogue changes since training (`serving.models.ModelHolder`)."""
        self.model_version.set(version)
        self.catalogue_items.labels("added").set(added)
        self.catalogue_items.labels("withdrawn").set(withdrawn)

    def experiment_report(self, report: dict) -> None:
        """The tallies and intervals of `schemas.experiments.experiment_report`."""
        for arm in report["arms"]:
            labels = (report["name"], arm["name"])
            self.arm_tallies.labels(*labels, "impression").set(arm["impressions"])
            self.arm_tallies.labels(*labels, "click").set(arm["clicks"])
            if arm["ctr"] is not None:
                low, high = arm["ctr_interval"]
                for bound, value in (("estimate", arm["ctr"]), ("low", low), ("high", high)):
                    self.arm_ctr.labels(*labels, bound).set(value)

    def exposition(self) -> bytes:
        """The text format of this process's metrics, or of every service process's."""
        if MULTIPROCESS_DIR not in os.environ:
            return generate_latest(self.registry)
        everyone = CollectorRegistry()
        MultiProcessCollector(everyone)
        return generate_latest(everyone)

    @staticmethod
    def workers_with_a_model() -> int:
        """How many of the supervisor's workers have a model live: their model-version series in the
        shared directory (only under the supervisor, where MULTIPROCESS_DIR is set)."""
        everyone = CollectorRegistry()
        MultiProcessCollector(everyone)
        live = [sample.value for family in everyone.collect() for sample in family.samples
                if sample.name == "kingfisher_model_version"]  # fmt: skip
        return sum(version > 0 for version in live)

    def observe_batch(self, waits_s: list[float]) -> None:
        """One model call's batch: its size, and how long each of its requests queued."""
        self.batch_size.observe(len(waits_s))
        for waited in waits_s:
            self.stage.labels("queue").observe(waited)


class GcPauseProbe:
    """A `gc.callbacks` hook that times each collection into `Metrics.gc_pauses`. Collections never
    overlap (each holds the GIL), so one start time serves every thread."""

    def __init__(self, metrics: Metrics):
        self._pauses, self._started = metrics.gc_pauses, 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._pauses.labels(str(info["generation"])).observe(time.perf_counter() - self._started)
