"""`make bench-quality` (`python -m infra.benches.quality`): recommendation quality measured through
the live system, as `make demo` runs it.

Each MovieLens user with at least 2N + 1 ratings has the newest N withheld (N = 5: the last-N split
of `make bench-train`, whose test query is the same moment). The rest of the history goes through
the system on a private stack of its own (Kafka, Redis, the feature job, the service, on free ports
in a temporary KF_RUN_DIR, so a running demo is untouched): published to Kafka, applied by the
feature job, the first (quick) models trained from its sample log, the service and the retraining
scheduler started. For the first version and for each retraining's after it (`--versions`), the
service is asked over HTTP for every such user's top 10 (exclude_seen=true), and the answers are
scored on the withheld ratings (relevant: the first N distinct items the user had not rated before).

Beside them, on the same queries:
- the baselines fitted on the same history (popularity, item co-occurrence plain and weighted,
  EASE, the service's fallback), each tuned as `make bench-train` tunes it (on the last-N split's
  validation queries, whose items the history holds, so the tuning fits on the history before them);
- the same bundle evaluated in-process as `make bench-train` evaluates its models (each query's own
  clock and trending list, the complete seen set), and with the inputs the service had (the clock
  and trending list at the history's end), so a gap between the in-process and the live numbers
  is split into its causes.

Every number has a 95 % bootstrap interval over users, and each difference from the live answers a
paired one. The report is written as JSON (`--report`).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import orjson
from rich.table import Table

from infra.demo import kingfisher, train_first_models, wait_for_stream
from infra.stack import (
    FeatureJob,
    RecommendationService,
    Retrainer,
    StackError,
    console,
    down,
    exit_code,
    free_port,
    ports_below_ephemeral,
    start_all,
    up,
)
from schemas.bundle import Registry
from schemas.config import Settings
from schemas.events import Event
from schemas.runtime.loaded_bundle import LoadedBundle
from schemas.runtime.model_inputs import Vocabulary
from schemas.runtime.sources.movielens import LoadReport, catalogue_items, locate_dataset, rating_events
from schemas.runtime.streaming import interacted_items
from streams.publish import Pacer, make_producer, progress_bar, publish
from training.counts import TrainingCounts
from training.data import Row, Split, bootstrap_rows, last_n_split, trending_before
from training.evaluate import (
    CoOccurrence,
    Ease,
    Moments,
    fallback_lists,
    item_lists,
    popularity_lists,
    ranked_in_batches,
)
from training.evaluation import FALLBACK, TUNED_COOCCURRENCE, Baselines
from training.metrics import bootstrap_interval, per_query_metrics

K = 10
REQUEST_TIMEOUT_S = 10
NEW_VERSION_TIMEOUT_S = 3600
LIVE = "live service over HTTP"
IN_PROCESS = "the same bundle in-process, each query's own clock and trending list"
LIVE_CLOCK = "the same bundle in-process, the service's clock, each query's own trending list"
LIVE_INPUTS = "the same bundle in-process, the clock and trending list the service had"


@dataclass(frozen=True)
class Withheld:
    """The history the system gets and the queries it is scored on."""

    history: list[Event]
    history_rows: list[Row]
    """The history's rows, as the stream's sample log holds them."""
    rows: list[Row]
    """Every rating's row, the withheld ones included (`make bench-train`'s data)."""
    split: Split
    """The last-N split of `rows`: its test queries are the scored moments."""

    @property
    def end(self) -> int:
        """The newest event time of the history: the stream's clock once it has applied it."""
        return self.history_rows[-1].event.ts


def withhold_newest(settings: Settings, newest: int) -> Withheld:
    spec = settings.pipeline.features
    events = list(rating_events(locate_dataset(settings.stack.movielens_path), LoadReport()))
    rows = bootstrap_rows(events, spec)
    split = last_n_split(rows, newest)
    cut = {query.row.event.user_id: query.row.order for query in split.test}
    withheld = {row.event.event_id for row in rows if row.event.user_id in cut and row.order >= cut[row.event.user_id]}
    history_rows = [row for row in rows if row.event.event_id not in withheld]
    return Withheld([event for event in events if event.event_id not in withheld], history_rows, rows, split)


def private_stack(run_dir: Path) -> Settings:
    """Settings (and this process's environment, which the programs it starts inherit) for a stack
    of its own: Kafka, Redis and the service on free ports, everything else under `run_dir`."""
    ports, handed_out = ports_below_ephemeral(), set()
    os.environ.update({
        "KF_RUN_DIR": str(run_dir),
        "KF_KAFKA_PORT": str(free_port(ports, handed_out)),
        "KF_KAFKA_CONTROLLER_PORT": str(free_port(ports, handed_out)),
        "KF_REDIS_PORT": str(free_port(ports, handed_out)),
        "KF_SERVE_PORT": str(free_port(ports, handed_out)),
    })  # fmt: skip
    return Settings()


def start_system(settings: Settings, withheld: Withheld) -> RecommendationService:
    """As `make demo`: the catalogue and the history into Kafka, the feature job applying it, the
    first models trained from its sample log, then the service and the retraining scheduler."""
    up(settings)
    kingfisher(settings, "publish", "catalogue", "movielens", "--no-progress")
    with progress_bar(enabled=True) as progress:
        sent = publish(withheld.history, make_producer(settings), settings.stack.topic_events, Pacer(), progress)
    if sent.failed:
        raise StackError(f"{sent.failed} history events not acknowledged by Kafka: {sent.first_error}")
    job = FeatureJob(settings)
    start_all(settings, [job])
    wait_for_stream(settings, job)
    train_first_models(settings)
    service = RecommendationService(settings)
    start_all(settings, [service, Retrainer(settings)])
    return service


def ask(url: str, path: str, **query: str) -> dict:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(query)}", timeout=REQUEST_TIMEOUT_S) as answer:
        return orjson.loads(answer.read())


def live_answers(service: RecommendationService, users: list[str], version: int) -> list[list[str]]:
    """Each user's top K from the service, once every answer comes from `version`."""
    while True:
        answers = [
            ask(service.url, "v1/recommendations", user_id=user, k=str(K), exclude_seen="true") for user in users
        ]
        if all(answer["model_version"] == version for answer in answers):
            fallbacks = sum(answer["fallback"] for answer in answers)
            if fallbacks:
                console.print(f"[yellow]{fallbacks} of {len(users)} answers were fallbacks")
            return [[item["item_id"] for item in answer["items"]] for answer in answers]
        time.sleep(1.0)


def already_interacted(answers: list[list[str]], users: list[str], withheld: Withheld) -> int:
    """How many items of the users' answers they had interacted with in the history: with
    exclude_seen none, heavy users' (more than KF_SEEN_CAPACITY items) included."""
    interacted = interacted_items(withheld.history)
    pairs = zip(users, answers, strict=True)
    return sum(len(interacted.get(user, set()).intersection(answer)) for user, answer in pairs)


def next_version(settings: Settings, after: int) -> int:
    registry, deadline = Registry(settings.stack.models_dir), time.monotonic() + NEW_VERSION_TIMEOUT_S
    while (current := registry.current() or 0) <= after:
        if time.monotonic() > deadline:
            raise StackError(f"no version after v{after} within {NEW_VERSION_TIMEOUT_S} s; see the retrainer's log")
        time.sleep(5.0)
    return current


def in_process_answers(
    settings: Settings,
    bundle: LoadedBundle,
    withheld: Withheld,
    trending: dict,
    clock: int | None = None,
    trending_list: list[tuple[str, float]] | None = None,
) -> list[list[str]]:
    """The bundle's top K for each test query as `make bench-train` asks its models (`trending`: the
    list before each query); with `clock`, at that time; with `trending_list`, with that list."""
    pipeline = settings.pipeline
    moments = Moments(withheld.split.test, trending, pipeline.covisitation_candidates)
    requests = moments.requests(K, pipeline.candidates)
    if clock is not None:
        requests = [replace(request, now_ms=clock) for request in requests]
    if trending_list is not None:
        requests = [replace(request, trending=trending_list) for request in requests]
    return item_lists(ranked_in_batches(bundle, requests))


def queries_trending(settings: Settings, withheld: Withheld) -> dict:
    """The trending list before each test query, from every rating (as `make bench-train` computes it)."""
    moments = [query.row for query in withheld.split.test]
    return trending_before(withheld.rows, moments, settings.pipeline.features, settings.pipeline.trending_candidates)


def baseline_answers(withheld: Withheld, vocabulary: Vocabulary, trending: dict) -> dict[str, list[list[str]]]:
    """Each baseline's top K for each test query, fitted on the history, each with the weighting or
    regularisation `make bench-train` chooses for it on the last-N split."""
    split, history = withheld.split, withheld.history_rows
    tuned = Baselines(split, TrainingCounts.of(split.train, vocabulary), vocabulary)
    popularity, queries = TrainingCounts.of(history, vocabulary).popularity, split.test
    weighting = tuned.cooccurrence.recent, tuned.cooccurrence.decay, tuned.cooccurrence.power
    return {
        "popularity": popularity_lists(popularity, vocabulary, queries, K),
        FALLBACK: fallback_lists(popularity, vocabulary, Moments(queries, trending), K),
        "item co-occurrence": CoOccurrence(history, vocabulary, popularity).lists(queries, K),
        TUNED_COOCCURRENCE: CoOccurrence(history, vocabulary, popularity).weighted(*weighting).lists(queries, K),
        f"EASE (λ {tuned.ease.regularisation:g})": Ease(history, vocabulary, popularity)
        .fit(tuned.ease.regularisation)
        .lists(queries, K),
    }


def scores(lists: dict[str, list[list[str]]], withheld: Withheld) -> dict[str, dict]:
    """Per answer: NDCG@K and HitRate@K with 95 % bootstrap intervals over users, and the paired
    difference of NDCG@K from the live service's, with its interval."""
    relevant = [query.relevant for query in withheld.split.test]
    per_user = {name: per_query_metrics(answers, relevant, K) for name, answers in lists.items()}
    live = np.array(per_user[LIVE][f"ndcg@{K}"])
    table = {}
    for name, metrics in per_user.items():
        ndcg, hits = np.array(metrics[f"ndcg@{K}"]), np.array(metrics[f"hitrate@{K}"])
        table[name] = {
            f"ndcg@{K}": float(ndcg.mean()),
            f"ndcg@{K}_95": bootstrap_interval(ndcg),
            f"hitrate@{K}": float(hits.mean()),
            f"hitrate@{K}_95": bootstrap_interval(hits),
            f"ndcg@{K}_minus_live": float((ndcg - live).mean()),
            f"ndcg@{K}_minus_live_95": bootstrap_interval(ndcg - live),
            "users": len(ndcg),
        }
    return table


def measure(
    settings: Settings, service: RecommendationService, withheld: Withheld, versions: int, baselines: dict, trending
) -> dict:
    """Each version's live answers, the same bundle's in-process ones (`trending`: the list before
    each query) and the baselines', scored."""
    registry, users = Registry(settings.stack.models_dir), [query.row.event.user_id for query in withheld.split.test]
    report, version = {}, registry.current() or 0
    for n in range(versions):
        if n:
            with console.status(f"waiting for the retraining after v{version} …"):
                version = next_version(settings, version)
        lists = {LIVE: live_answers(service, users, version)}
        seen_again = already_interacted(lists[LIVE], users, withheld)
        console.print(f"v{version}: {seen_again} items of the live answers were already interacted with (0 expected)")
        listed = ask(service.url, "v1/trending", k=str(settings.pipeline.trending_candidates))["items"]
        live_trending = [(item["item_id"], item["score"]) for item in listed]
        bundle = LoadedBundle(registry.path(version), settings.pipeline.faiss_exact_max_items)
        lists[IN_PROCESS] = in_process_answers(settings, bundle, withheld, trending)
        lists[LIVE_CLOCK] = in_process_answers(settings, bundle, withheld, trending, withheld.end)
        lists[LIVE_INPUTS] = in_process_answers(settings, bundle, withheld, trending, withheld.end, live_trending)
        report[f"v{version}"] = {"manifest": registry.manifest(version).model_dump(mode="json"),
                                 "already_interacted_in_live_answers": seen_again,
                                 "answers": scores(lists | baselines, withheld)}  # fmt: skip
        show(f"v{version}", report[f"v{version}"]["answers"])
    return report


def interval(low_high: tuple[float, float]) -> str:
    return f"[{low_high[0]:.4f}, {low_high[1]:.4f}]"


def show(version: str, answers: dict[str, dict]) -> None:
    table = Table(
        title=f"{version}: the newest ratings withheld, top {K} with exclude_seen (95 % bootstrap intervals over users)"
    )
    for column in ("answers", f"NDCG@{K}", f"HitRate@{K}", f"NDCG@{K} minus the live service's"):
        table.add_column(column)
    for name, row in answers.items():
        table.add_row(
            name,
            f"{row[f'ndcg@{K}']:.4f} {interval(row[f'ndcg@{K}_95'])}",
            f"{row[f'hitrate@{K}']:.4f} {interval(row[f'hitrate@{K}_95'])}",
            "" if name == LIVE else f"{row[f'ndcg@{K}_minus_live']:+.4f} {interval(row[f'ndcg@{K}_minus_live_95'])}",
        )
    console.print(table)


def bench(arguments: argparse.Namespace) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="kf-quality-"))
    settings = private_stack(run_dir)
    withheld = withhold_newest(settings, arguments.newest)
    console.print(
        f"withheld the newest {arguments.newest} ratings of {len(withheld.split.test)} users; the history: "
        f"{len(withheld.history):,} of {len(withheld.rows):,} ratings; private stack in {run_dir}"
    )
    catalogue = catalogue_items(locate_dataset(settings.stack.movielens_path), LoadReport(), int(time.time() * 1000))
    trending = queries_trending(settings, withheld)
    with console.status("fitting the baselines on the history …"):
        baselines = baseline_answers(withheld, Vocabulary.of(catalogue), trending)
    started = time.monotonic()
    try:
        service = start_system(settings, withheld)
        console.print(f"first page after {time.monotonic() - started:.0f} s")
        report = {
            "newest_withheld": arguments.newest,
            "versions": measure(settings, service, withheld, arguments.versions, baselines, trending),
        }
    finally:
        if arguments.keep:
            console.print(
                f"the private stack keeps running: KF_RUN_DIR={run_dir}, service {os.environ['KF_SERVE_PORT']}"
            )
        else:
            down(settings)
            shutil.rmtree(run_dir, ignore_errors=True)
    arguments.report.parent.mkdir(parents=True, exist_ok=True)
    arguments.report.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    console.print(f"report: {arguments.report}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.benches.quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--newest", type=int, default=5, metavar="N", help="ratings withheld per user (default 5)")
    parser.add_argument(
        "--versions", type=int, default=2, metavar="V",
        help="versions measured: the first (quick) one and the retrainings' after it (default 2)",
    )  # fmt: skip
    parser.add_argument(
        "--report", type=Path, default=Path(".run/bench-quality.json"), help="where the JSON report goes"
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the private stack running (its directory is printed)"
    )
    return exit_code(lambda: bench(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
