"""`python -m serving.swap_memory` (make bench-swap): the service's resident memory across hot swaps.

Loads the registry's live version again and again the way the service does at each swap (verify,
load, run every input shape, make live, collect the swapped-out bundle when no request is in flight,
return freed memory), once with XLA-compiled model calls (KF_SERVE_XLA=true, the default) and once
without, each in a fresh process, and reports resident memory after each swap. Growth is counted
from the first swap on: loading the first version also initialises TensorFlow itself.
"""

import argparse
import asyncio
import subprocess
import sys

import orjson
import psutil
from rich.console import Console
from rich.table import Table

from schemas.bundle import Registry
from schemas.config import Settings
from serving.heap import InFlight, collect_when_quiet, freeze_imports
from serving.models import configure_tensorflow, load_warm


def resident_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def measure_swaps(settings: Settings, swaps: int) -> list[float]:
    """Resident MB after the first load, then after each of `swaps` swaps."""
    configure_tensorflow(settings.serving.serve_tf_threads)
    freeze_imports()
    registry = Registry(settings.stack.models_dir)
    version = registry.current()
    if version is None:
        raise SystemExit(f"no model in {settings.stack.models_dir}: run `make train` first")
    live = load_warm(settings, registry.path(version))
    resident = [resident_mb()]
    for _ in range(swaps):
        live = load_warm(settings, registry.path(version))  # the old one is garbage from here
        asyncio.run(collect_when_quiet(InFlight(), patience_s=0))
        resident.append(resident_mb())
    del live
    return resident


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.swap_memory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--swaps", type=int, default=6, help="swaps per configuration")
    parser.add_argument("--one", choices=("true", "false"), help=argparse.SUPPRESS)  # a child's KF_SERVE_XLA
    arguments = parser.parse_args(argv)
    if arguments.one:
        settings = Settings(serve_xla=arguments.one == "true")
        print(orjson.dumps(measure_swaps(settings, arguments.swaps)).decode())
        return 0
    table = Table(title=f"bench-swap: resident MB of the service's model holder across {arguments.swaps} swaps")
    for column in ("KF_SERVE_XLA", "first load", "after swap 1", "last swap", "MB per swap after swap 1"):
        table.add_column(column, justify="right")
    for xla in ("true", "false"):
        child = [sys.executable, "-m", "serving.swap_memory", "--swaps", str(arguments.swaps), "--one", xla]
        run = subprocess.run(child, capture_output=True, text=True)
        if run.returncode != 0:
            print(run.stderr[-3000:], file=sys.stderr)
            return run.returncode
        resident = orjson.loads(run.stdout.strip().splitlines()[-1])
        per_swap = (resident[-1] - resident[1]) / max(1, len(resident) - 2)
        table.add_row(xla, f"{resident[0]:.0f}", f"{resident[1]:.0f}", f"{resident[-1]:.0f}", f"{per_swap:+.1f}")
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
