"""`python -m infra.benches.train` (make bench-train): one retraining as the scheduler runs it, timed, then
the extra measurements the README reports, each labelled.

1. The retraining users run (default settings): MovieLens from scratch — the time split's served
   models, their evaluation, the published models, export, gate — into a scratch registry. Its
   wall time is the one the targets are about.
2. The same data with the full report (`python -m training --full-report`): the served models again
   (same seed, so the same numbers) beside Embedding+MLP, the previous design, popularity,
   co-occurrence and EASE; its time is reported beside the first, labelled.
3. The leave-last-N-per-user split (`--last-n`, 5): the same models and comparisons trained from
   scratch on it; not part of a scheduled retraining (KF_EVAL_LAST_N adds it).
4. A retraining with the full report on a synthetic world (`--synthetic-events`, 50,000; 0 skips it),
   whose true click probabilities give each pipeline's top 10 as a share of the best possible top 10.

Every table gives HitRate, Recall and NDCG at 10 with their standard errors over the queries.
"""

import argparse
import logging
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import keras
from rich.console import Console
from rich.table import Table

from schemas.bundle import REPORT
from schemas.config import Settings
from training.evaluation import SERVED, TUNED_COOCCURRENCE
from training.pipeline import TrainingRun
from training.retraining import train_once
from training.sources import Source, load

TARGET_S = 600
METRICS = ("hitrate@10", "recall@10", "ndcg@10")
BASELINES = ("item co-occurrence", TUNED_COOCCURRENCE, "EASE")


def pipelines_table(title: str, split: dict) -> Table:
    """A split's test metrics with standard errors, the validation NDCG@10 beside them."""
    table = Table(title=title)
    for column in ("pipeline", "HitRate@10", "Recall@10", "NDCG@10", "NDCG@10 (validation)"):
        table.add_column(column, justify="left" if column == "pipeline" else "right")
    for name, metrics in split["test"]["pipelines"].items():
        validation = split["validation"]["pipelines"].get(name, {}).get("ndcg@10", math.nan)
        cells = [f"{metrics[key]:.4f} ± {metrics.get(key + '_se', math.nan):.4f}" for key in METRICS]
        table.add_row(name, *cells, f"{validation:.4f}")
    return table


def ratios(split: dict) -> str:
    """The served pipeline's test metrics over the best baseline's and popularity's."""
    test = split["test"]["pipelines"]
    parts = []
    for key in ("hitrate@10", "ndcg@10"):
        best = max(test[name][key] for name in BASELINES)
        parts.append(f"{key}: {test[SERVED][key] / best:.2f}x the best of the co-occurrences and EASE, "
                     f"{test[SERVED][key] / test['popularity'][key]:.2f}x popularity")  # fmt: skip
    return "; ".join(parts)


def candidate_curve_table(title: str, split: dict) -> Table:
    """The served pipeline over (M, T): each part's NDCG@10 and HitRate@10 minus the configured
    pipeline's on the same queries, ± the paired standard error; choose on validation."""
    table = Table(title=title)
    for column in ("M", "T", "ranked per query", "validation ΔNDCG@10", "validation ΔHitRate@10", "test ΔNDCG@10",
                   "test ΔHitRate@10", "test NDCG@10"):  # fmt: skip
        table.add_column(column, justify="right")
    for validation, test in zip(split["validation"]["candidate_curve"], split["test"]["candidate_curve"], strict=True):
        cells = [
            f"{part['difference'][key]:+.4f} ± {part['difference'][key + '_se']:.4f}"
            for part in (validation, test)
            for key in ("ndcg@10", "hitrate@10")
        ]
        table.add_row(str(test["candidates"]), str(test["trending"]), f"{test['ranked_per_query']:.0f}", *cells,
                      f"{test['ndcg@10']:.4f}")  # fmt: skip
    return table


def print_split(console: Console, name: str, split: dict) -> None:
    console.print(
        pipelines_table(f"the {name} split, test queries ({split['test']['queries']}), full catalogue", split)
    )
    console.print(f"  {ratios(split)}")
    for part in ("validation", "test"):
        rankers = ", ".join(f"{ranker} {value['pool_auc']:.4f}" for ranker, value in split[part]["rankers"].items())
        console.print(f"  {part}: AUC within the pools {rankers}; identical reasons in the top 10 "
                      f"{split[part]['identical_reasons_top10']:.3f}")  # fmt: skip
    if "candidate_curve" in split["test"]:
        title = f"the {name} split: M Faiss + T trending candidates against the configured"
        console.print(candidate_curve_table(title, split))
    if shares := split["test"].get("true_click_share_top10"):
        console.print("  true click probability of the top 10 as a share of the best possible: "
                      + ", ".join(f"{pipeline} {share:.3f}" for pipeline, share in shares.items()))  # fmt: skip


def timings_table(title: str, timings: dict[str, float]) -> Table:
    table = Table(title=title)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in timings.items():
        table.add_row(stage, f"{seconds:.1f}")
    return table


def last_n_split(settings: Settings, data, last_n: int) -> tuple[dict, dict[str, float]]:
    """The leave-last-N split's report and timings, its models trained from scratch."""
    keras.utils.set_random_seed(settings.training.train_seed)
    run = TrainingRun(settings.updated(eval_last_n=last_n), data, progress=True, comparisons=True)
    with run.bar:
        measured = run.measure(run.splits[-1])
    return measured.report, run.timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.benches.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", type=Path, help="registry directory to train into (default: a new scratch directory)")
    parser.add_argument("--last-n", type=int, default=5, help="also measure the leave-last-N split (0: skip)")
    parser.add_argument(
        "--synthetic-events", type=int, default=50_000, help="also retrain on a synthetic world this big (0: skip)"
    )
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = Console(width=170)
    run_dir = arguments.keep or Path(tempfile.mkdtemp(prefix="kingfisher-bench-train-"))
    settings = Settings(run_dir=run_dir)
    started = time.perf_counter()
    data = load(settings, Source.MOVIELENS)
    outcome = train_once(settings, data, announce=False)
    elapsed = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = outcome.report
    summary = Table(title=f"bench-train: one retraining as scheduled, MovieLens, {report['data']['rows']} rows")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    summary.add_row("wall time (load + train + evaluate + export + gate)", f"{elapsed:.0f} s (target <= {TARGET_S} s)")
    summary.add_row("peak resident memory", f"{peak_mib:.0f} MiB")
    summary.add_row("gate", report["gate"]["verdict"])
    for name, split in report["splits"].items():
        served = split["test"]["pipelines"][SERVED]
        summary.add_row(f"{name} split, served, test", ", ".join(f"{key} {served[key]:.4f}" for key in METRICS))
    summary.add_row("report", str(settings.stack.models_dir / f"v{outcome.version:06d}" / REPORT / "report.md"))
    console.print(summary)
    console.print(timings_table("where the retraining's time went", report["timings_s"]))
    full_settings = Settings(run_dir=run_dir / "full-report")
    full = train_once(full_settings, data, announce=False, full_report=True).report
    console.print(
        timings_table("extra, not part of a retraining: the same data with the full report", full["timings_s"])
    )
    for name, split in full["splits"].items():
        print_split(console, name, split)
    if arguments.last_n:
        split, timings = last_n_split(settings, data, arguments.last_n)
        console.print(timings_table(f"extra, not part of a retraining: the last-{arguments.last_n} split", timings))
        print_split(console, f"last-{arguments.last_n}", split)
    if arguments.synthetic_events:
        synthetic = Settings(run_dir=run_dir / "synthetic")
        world = train_once(
            synthetic, load(synthetic, Source.SYNTHETIC, arguments.synthetic_events), announce=False, full_report=True
        )
        for name, split in world.report["splits"].items():
            print_split(console, f"synthetic world ({arguments.synthetic_events} events), {name}", split)
    return 0 if elapsed <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
