"""`python -m training.scheduler`: retrain periodically; each run continues the live version on the
events since its data (`training.incremental`), or trains from scratch when it cannot (none yet,
other hyperparameters, or its from-scratch run older than KF_FULL_RETRAIN_EVERY_S); then gates and
publishes. A run with fewer than KF_INCREMENTAL_MIN_ROWS new rows skips.

A failed run is logged and the next period tries again; the registry keeps the newest
KF_KEEP_VERSIONS versions. SIGTERM or Ctrl-C stops it; a run in progress finishes first.
"""

import argparse
import logging
import re
import signal
import sys
import threading
import time

from schemas.bundle import Registry
from schemas.config import Settings
from training.retraining import train_once
from training.sources import Source, load

log = logging.getLogger("kingfisher.training.scheduler")
UNITS_S = {"s": 1, "m": 60, "h": 3600}


def duration_s(text: str, allow_zero: bool = False) -> float:
    """'90s', '15m', '2h' or plain seconds -> seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not match or float(match[1]) < 0 or (float(match[1]) == 0 and not allow_zero):
        raise argparse.ArgumentTypeError(f"not a positive duration: {text!r} (e.g. 90s, 15m, 2h)")
    return float(match[1]) * UNITS_S[match[2] or "s"]


def first_run_delay_s(settings: Settings, requested_s: float) -> float:
    """The requested delay, unless the live version was trained with other hyperparameters than the
    configured ones (a quick first model, or changed settings): then none."""
    registry = Registry(settings.stack.models_dir)
    current = registry.current()
    if current is None:
        return requested_s
    try:
        trained_with = registry.manifest(current).hyperparameters
    except (OSError, ValueError) as error:
        log.warning("cannot read live v%d's manifest (%s): keeping the delay", current, error)
        return requested_s
    if trained_with == settings.training.model:
        return requested_s
    log.info("live v%d was trained with other hyperparameters than these: retraining at once", current)
    return 0.0


def run_periodically(
    settings: Settings,
    source: Source,
    every_s: float,
    stop: threading.Event,
    synthetic_events: int,
    progress: bool,
    delay_s: float = 0.0,
) -> None:
    next_start = time.monotonic() + delay_s
    stop.wait(delay_s)
    while not stop.is_set():
        try:
            data = load(settings, source, synthetic_events)
            outcome = train_once(settings, data, progress=progress, incremental=True)
            log.info("run finished: version %d %s", outcome.version, outcome.verdict)
        except Exception:  # any failure: log it with its traceback, keep the schedule
            log.exception("training run failed; next attempt in %.0fs", every_s)
        next_start += every_s
        stop.wait(max(0.0, next_start - time.monotonic()))


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m training.scheduler", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--every",
        type=duration_s,
        default=settings.training.retrain_every_s,
        metavar="DURATION",
        help="period, e.g. 15m (default KF_RETRAIN_EVERY_S seconds)",
    )
    parser.add_argument(
        "--delay",
        type=lambda text: duration_s(text, allow_zero=True),
        default=0.0,
        metavar="DURATION",
        help="wait this long before the first run (default: start at once); ignored when the live version "
        "was trained with other hyperparameters (e.g. a quick first model)",
    )
    parser.add_argument("--source", type=Source, choices=list(Source), default=Source.SAMPLES)
    parser.add_argument("--synthetic-events", type=int, default=20_000, metavar="N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.set())
    delay_s = first_run_delay_s(settings, arguments.delay)
    log.info("retraining from %s every %.0fs into %s, first run in %.0fs",
             arguments.source, arguments.every, settings.stack.models_dir, delay_s)  # fmt: skip
    run_periodically(settings, arguments.source, arguments.every, stop, arguments.synthetic_events,
                     not arguments.no_progress, delay_s)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
