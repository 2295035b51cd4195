"""`python -m infra.benches.instructions` (make bench-instructions): the instructions the model path
executes per recommendation, this checkout beside another, counted by valgrind's callgrind.

On this shared two-core machine CPU time per request moves by a quarter between minutes, so two
versions of the code measured minutes apart cannot be told apart by a tenth. An instruction count
does not move: callgrind simulates the process and counts every instruction it executes, the same
on every run of the same code. What is counted: `rank_batch` (the user tower, the index search,
the pool, the ranker's inputs and DIN, as the service calls it) for each of the first `--users`
MovieLens users, one request at a time, on the live version of `KF_RUN_DIR`'s registry, each
user's state, seen set and the trending list as the stream leaves them after every rating
(`fold_stream`), asked one hour after the newest. Set-up and a warm-up
of 20 requests run before counting starts (callgrind's instrumentation is switched on from
outside once the worker says it is ready).

A proxy, not a time: every instruction counts once, whether it waits on memory or not, and a
`rep stos` (memset: NumPy zeroing an array, OpenBLAS clearing a product's output) counts once per
byte. Report it beside CPU time (`make bench-serve`), never instead of it.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from schemas.config import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WARM_UP_REQUESTS = 20
READY_TIMEOUT_S = 1800
console = Console()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.benches.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100, help="requests counted: the first N MovieLens users")
    parser.add_argument("--previous", type=Path, action="append", default=[], metavar="CHECKOUT",
                        help="another checkout (e.g. a `git worktree` of the code before) counted beside this one; "
                        "repeatable")  # fmt: skip
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.worker is not None:
        return _worker(arguments.worker, arguments.users)
    if shutil.which("valgrind") is None:
        console.print("[red]valgrind not found[/]: `bash infra/install-system-deps.sh --valgrind` installs it")
        return 2
    # Absolute, as each worker runs in its checkout: the same registry and data for all of them.
    settings = Settings()
    paths = {"KF_RUN_DIR": str(settings.stack.run_dir.resolve())}
    if settings.stack.movielens_path is not None:
        paths["KF_MOVIELENS_PATH"] = str(settings.stack.movielens_path.resolve())
    checkouts = [PROJECT_ROOT, *(checkout.resolve() for checkout in arguments.previous)]
    counts = {str(checkout): count_instructions(checkout, arguments.users, paths) for checkout in checkouts}
    report(counts, arguments.users)
    return 0


def count_instructions(checkout: Path, users: int, paths: dict[str, str]) -> int:
    """Instructions callgrind counted in `rank_batch` over `users` requests, running `checkout`'s code."""
    console.print(f"counting {checkout} ({users} requests; set-up under valgrind takes minutes) ...")
    with tempfile.TemporaryDirectory(prefix="kf-instructions-") as directory:
        marks, output = Path(directory), Path(directory) / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={output}",
                   sys.executable, __file__, "--worker", str(marks), "--users", str(users)]  # fmt: skip
        # One BLAS thread, as the service runs its models (serving/__init__.py); PYTHONPATH: the checkout's code.
        env = os.environ | paths | {"PYTHONPATH": str(checkout), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        with (marks / "worker.log").open("w") as log:
            worker = subprocess.Popen(command, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT)
            _wait_for(marks / "ready", worker, marks / "worker.log")
            subprocess.run(["callgrind_control", "--instr=on", str(worker.pid)], check=True, capture_output=True)
            (marks / "go").touch()
            _wait_for(marks / "done", worker, marks / "worker.log")
            subprocess.run(["callgrind_control", "--instr=off", str(worker.pid)], check=True, capture_output=True)
            (marks / "exit").touch()
            if worker.wait() != 0:
                raise RuntimeError(f"the worker failed:\n{(marks / 'worker.log').read_text()[-3000:]}")
        return instructions_of(output)


def instructions_of(output: Path) -> int:
    """The instructions a callgrind output file counted (its `totals:` line; one per part dumped)."""
    parts = sorted(output.parent.glob(output.name + "*"))
    return sum(int(line.split()[1]) for part in parts for line in part.read_text().splitlines()
               if line.startswith("totals:"))  # fmt: skip


def _wait_for(mark: Path, worker: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not mark.exists():
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker stopped before {mark.name}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def report(counts: dict[str, int], users: int) -> None:
    table = Table(title=f"instructions per recommendation (rank_batch, {users} MovieLens users, callgrind)")
    for column in ("checkout", "instructions per request", "ratio to this checkout"):
        table.add_column(column)
    this = counts[str(PROJECT_ROOT)]
    for checkout, count in counts.items():
        table.add_row(checkout, f"{count / users:,.0f}", f"{count / this:.4f}")
    console.print(table)
    directory = PROJECT_ROOT / ".run" / "bench"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"instructions-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"users": users, "instructions": counts}, indent=2))
    console.print(f"saved {path}")


def _worker(marks: Path, users: int) -> int:
    """Runs under callgrind, importing the checkout's modules (PYTHONPATH): set-up, then ranking
    between the marks."""
    import schemas
    from schemas.bundle import Registry
    from schemas.config import Settings
    from schemas.runtime.loaded_bundle import LoadedBundle
    from schemas.runtime.pipeline import RankRequest, rank_batch
    from schemas.runtime.sources.movielens import LoadReport, locate_dataset, rating_events
    from schemas.runtime.streaming import fold_stream, seen_sets, trending_list

    print(f"ranking with {Path(schemas.__file__).parent}", flush=True)
    settings = Settings()
    p, spec = settings.pipeline, settings.pipeline.features
    registry = Registry(settings.stack.run_dir / "models")
    bundle = LoadedBundle(registry.path(registry.current()), p.faiss_exact_max_items)
    # The state the stream leaves in Redis after the history, as the service reads it.
    events = list(rating_events(locate_dataset(settings.stack.movielens_path), LoadReport()))
    states, _, trending = fold_stream(events, spec)
    seen, listed = seen_sets(events, spec), trending_list(trending, spec)
    requests = [
        RankRequest(
            user,
            state.sequence.entries,
            state.features,
            now_ms=listed.at_ts + 3_600_000,
            trending=list(listed.items[: p.trending_candidates]),
            exclude=set(seen[user]),
            k=20,
            candidates=p.candidates,
            new_items=p.new_item_candidates,
            covisited=p.covisitation_candidates,
        )
        for user, state in list(states.items())[:users]
    ]
    for request in requests[:WARM_UP_REQUESTS]:
        rank_batch(bundle, [request])
    _handshake(marks / "ready", marks / "go")
    for request in requests:
        rank_batch(bundle, [request])
    _handshake(marks / "done", marks / "exit")
    return 0


def _handshake(mine: Path, theirs: Path) -> None:
    """Leave the mark `mine`, then wait for the driver's `theirs`."""
    mine.touch()
    while not theirs.exists():
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
