"""`python -m infra.benches.incremental` (make bench-incremental): incremental retraining against
training from scratch on the same MovieLens data, timed and measured on queries neither learnt.

The ratings in time order: a from-scratch version on the oldest `--base` share (the live version),
then `--steps` incremental runs, each continuing the one before on the next `--step` share (the
scheduler's runs as new events arrive); beside them, one from-scratch run on the same rows as the
last incremental one. All three (the live version never updated, the incremental chain's newest,
from scratch) are measured as the service would answer on the queries of the rows after those
(at most KF_EVAL_MAX_QUERIES), which none of them learnt from or was chosen by. Settings are
`make demo`'s; each run's wall and CPU time (this process: all of TensorFlow's threads) is reported.
"""

import argparse
import logging
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from schemas.bundle import Registry
from schemas.config import Settings
from schemas.runtime.loaded_bundle import LoadedBundle
from training.data import Row, is_interaction, queries_between, trending_before
from training.evaluate import FUTURE_ITEMS, Moments, item_lists, pipeline_metrics, served
from training.retraining import Outcome, train_once
from training.sources import Source, TrainingData, load

METRICS = ("hitrate@10", "ndcg@10")


@dataclass(frozen=True)
class Timed:
    outcome: Outcome
    wall_s: float
    cpu_s: float


def timed_run(settings: Settings, data: TrainingData, rows: int, incremental: bool) -> Timed:
    """One retraining on the oldest `rows` rows, forced (a refusal would end the chain), unannounced."""
    part = TrainingData(data.source, data.rows[:rows], data.catalogue, data.spec, data.world)
    wall, cpu = time.perf_counter(), _cpu_s()
    outcome = train_once(settings, part, force=True, announce=False, incremental=incremental)
    return Timed(outcome, time.perf_counter() - wall, _cpu_s() - cpu)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_moments(settings: Settings, rows: list[Row], learnt: int) -> Moments:
    """The queries at the interactions after the first `learnt` rows, with each user's whole history before them."""
    since = rows[learnt - 1].event.ts
    [queries] = queries_between(rows, [(since + 1, np.iinfo(np.int64).max)], FUTURE_ITEMS)
    limit = settings.training.eval_max_queries
    if len(queries) > limit:
        chosen = np.random.default_rng(settings.training.train_seed).choice(len(queries), limit, replace=False)
        queries = [queries[n] for n in sorted(chosen)]
    moments = [row for row in rows if is_interaction(row)]
    spec = settings.pipeline.features
    return Moments(queries, trending_before(rows, moments, spec, settings.pipeline.trending_candidates))


def measured(settings: Settings, registry: Registry, version: int, moments: Moments) -> dict[str, float]:
    bundle = LoadedBundle(registry.path(version), settings.pipeline.faiss_exact_max_items)
    ranked = served(bundle, moments, settings.pipeline.candidates)
    return pipeline_metrics(item_lists(ranked), moments.queries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.benches.incremental",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base", type=float, default=0.7, help="share of the rows the first version learns")
    parser.add_argument("--step", type=float, default=0.05, help="share of the rows each incremental run adds")
    parser.add_argument("--steps", type=int, default=3, help="incremental runs")
    parser.add_argument("--keep", type=Path, help="directory for the registries (default: a new scratch directory)")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = Console(width=170)
    root = arguments.keep or Path(tempfile.mkdtemp(prefix="kingfisher-bench-incremental-"))
    chain, scratch = Settings(run_dir=root / "incremental"), Settings(run_dir=root / "from-scratch")
    data = load(chain, Source.MOVIELENS)
    total = len(data.rows)
    ends = [round(total * (arguments.base + n * arguments.step)) for n in range(arguments.steps + 1)]
    runs = [timed_run(chain, data, ends[0], incremental=False)]
    runs += [timed_run(chain, data, end, incremental=True) for end in ends[1:]]
    baseline = timed_run(scratch, data, ends[-1], incremental=False)
    moments = test_moments(chain, data.rows, ends[-1])
    chain_registry, scratch_registry = Registry(chain.stack.models_dir), Registry(scratch.stack.models_dir)
    results = {
        f"live v1 never updated (from scratch on {ends[0]} rows)": measured(chain, chain_registry, 1, moments),
        f"incremental chain v{runs[-1].outcome.version} ({arguments.steps} runs)": measured(
            chain, chain_registry, runs[-1].outcome.version, moments
        ),
        f"from scratch on the same {ends[-1]} rows": measured(scratch, scratch_registry, 1, moments),
    }
    table = Table(title=f"test: {len(moments.queries)} queries after row {ends[-1]} of {total} (MovieLens)")
    for column in ("models", *(f"{metric} ± SE" for metric in METRICS)):
        table.add_column(column, justify="left" if column == "models" else "right")
    for name, metrics in results.items():
        table.add_row(name, *(f"{metrics[key]:.4f} ± {metrics[key + '_se']:.4f}" for key in METRICS))
    console.print(table)
    costs = Table(title="what each retraining cost")
    for column in ("run", "rows", "wall s", "CPU s", "gate"):
        costs.add_column(column, justify="left" if column in ("run", "gate") else "right")
    labels = [
        "from scratch (v1)",
        *(f"incremental {n}" for n in range(1, arguments.steps + 1)),
        "from scratch, same rows",
    ]
    for label, end, run in zip(labels, [*ends, ends[-1]], [*runs, baseline], strict=True):
        costs.add_row(label, str(end), f"{run.wall_s:.0f}", f"{run.cpu_s:.0f}", run.outcome.verdict[:90])
    console.print(costs)
    mean_incremental = sum(run.wall_s for run in runs[1:]) / arguments.steps
    console.print(f"incremental / from scratch, wall time: {mean_incremental / baseline.wall_s:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
