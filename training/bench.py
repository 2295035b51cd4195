"""`python -m training.bench` (make bench-train): full training on MovieLens, timed, into a scratch registry.

Prints wall time, peak memory and the headline holdout metrics; the full report stays in the
scratch directory it names. Target on the reference machine (2 cores, no GPU): <= 10 minutes.
"""

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from schemas.bundle import REPORT
from schemas.config import Settings
from training.pipeline import train_once
from training.sources import Source, load

TARGET_S = 600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", type=Path, help="registry directory to train into (default: a new scratch directory)")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_dir = arguments.keep or Path(tempfile.mkdtemp(prefix="kingfisher-bench-train-"))
    settings = Settings(run_dir=run_dir)
    started = time.perf_counter()
    outcome = train_once(settings, load(settings, Source.MOVIELENS), warm=False, announce=False)
    elapsed = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = outcome.report
    table = Table(
        title=f"bench-train: MovieLens, {report['data']['rows']} rows, {report['data']['queries']} test queries"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("wall time (load + train + export + evaluate)", f"{elapsed:.0f} s (target <= {TARGET_S} s)")
    table.add_row("peak resident memory", f"{peak_mib:.0f} MiB")
    for name, ranker in report["rankers"].items():
        table.add_row(f"{name} AUC / GAUC", f"{ranker['auc']:.4f} / {ranker['gauc']:.4f}")
    for name, metrics in report["pipelines"].items():
        table.add_row(
            f"{name} Recall@10 / Recall@50 / NDCG@50",
            f"{metrics['recall@10']:.4f} / {metrics['recall@50']:.4f} / {metrics['ndcg@50']:.4f}",
        )
    table.add_row("report", str(settings.models_dir / f"v{outcome.version:06d}" / REPORT / "report.md"))
    Console(width=140).print(table)
    return 0 if elapsed <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
