"""`python -m training`: train, evaluate and publish one model version (settings: KF_*)."""

import argparse
import logging
import sys

from schemas.config import Settings
from training.data import FeatureSpecsMixed
from training.pipeline import QUICK_EPOCHS, TrainingError, quick
from training.retraining import train_once
from training.sources import Source, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        epilog="Exit codes: 0 published, 1 failed (e.g. too little data), 2 refused by the gate, 3 skipped "
        "(--incremental with fewer than KF_INCREMENTAL_MIN_ROWS new rows).",
    )
    parser.add_argument(
        "--source",
        type=Source,
        choices=list(Source),
        default=Source.SAMPLES,
        help="the stream's sample log (default) or a dataset passed through the feature functions",
    )
    parser.add_argument(
        "--synthetic-events", type=int, default=20_000, metavar="N", help="events of --source synthetic"
    )
    parser.add_argument("--force", action="store_true", help="publish even if worse than the live version")
    parser.add_argument("--no-announce", action="store_true", help="do not announce on the model-updates topic")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a first model in a fraction of the time: epochs capped at {QUICK_EPOCHS}; the scheduler "
        "replaces it with a full one at once",
    )
    parser.add_argument(
        "--full-report",
        action="store_true",
        help="also train and evaluate the comparisons (Embedding+MLP, the previous design, EASE, co-occurrence, "
        "popularity) as make bench-train does: about doubles the run",
    )
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="continue the live version on the events since its data, as the scheduler does (from scratch "
        "when it cannot be continued: none, other hyperparameters, or its from-scratch run older than "
        "KF_FULL_RETRAIN_EVERY_S)",
    )
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = quick(Settings()) if arguments.quick else Settings()
    try:
        data = load(settings, arguments.source, arguments.synthetic_events)
        outcome = train_once(
            settings,
            data,
            force=arguments.force,
            announce=not arguments.no_announce,
            progress=not arguments.no_progress,
            full_report=arguments.full_report,
            incremental=arguments.incremental,
        )
    except (TrainingError, FeatureSpecsMixed) as error:
        logging.getLogger("kingfisher.training").error("%s", error)
        return 1
    print(outcome.verdict)
    return 0 if outcome.published else 3 if outcome.skipped else 2


if __name__ == "__main__":
    sys.exit(main())
