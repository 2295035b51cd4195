"""`python -m infra.benches.swap_memory` (make bench-swap): the service's resident memory across hot swaps.

Loads the registry's live version again and again the way the service does at each swap (verify,
load, try once, make live, collect the swapped-out bundle when no request is in flight, return
freed memory), and reports resident memory after each swap. Growth is counted from the first swap
on: loading the first version also initialises what the libraries keep for the process's life.
"""

import argparse
import asyncio
import sys

import psutil
from rich.console import Console
from rich.table import Table

from schemas.bundle import Registry
from schemas.config import Settings
from serving.heap import InFlight, collect_when_quiet, freeze_imports
from serving.models import load_tried


def resident_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def measure_swaps(settings: Settings, swaps: int) -> list[float]:
    """Resident MB after the first load, then after each of `swaps` swaps."""
    freeze_imports()
    registry = Registry(settings.stack.models_dir)
    version = registry.current()
    if version is None:
        raise SystemExit(f"no model in {settings.stack.models_dir}: run `make train` first")
    live = load_tried(settings, registry.path(version))
    resident = [resident_mb()]
    for _ in range(swaps):
        live = load_tried(settings, registry.path(version))  # the old one is garbage from here
        asyncio.run(collect_when_quiet(InFlight(), patience_s=0))
        resident.append(resident_mb())
    del live
    return resident


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.benches.swap_memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--swaps", type=int, default=6, help="swaps to measure")
    arguments = parser.parse_args(argv)
    resident = measure_swaps(Settings(), arguments.swaps)
    table = Table(title=f"bench-swap: resident MB of the service's model holder across {arguments.swaps} swaps")
    for column in ("first load", "after swap 1", "last swap", "MB per swap after swap 1"):
        table.add_column(column, justify="right")
    per_swap = (resident[-1] - resident[1]) / max(1, len(resident) - 2)
    table.add_row(f"{resident[0]:.0f}", f"{resident[1]:.0f}", f"{resident[-1]:.0f}", f"{per_swap:+.1f}")
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
