"""`python -m infra.benches.store`: client CPU per written key of `FeatureStore.write`, the stream's
write path, on a single Redis and on a Redis Cluster, side by side in one run.

Each batch is what the job writes for 500 users: their sequence and features (versioned writes
with a TTL) and a seen-set addition. The stores take turns batch by batch, each in turn first, so
a slower moment of the machine costs each alike. The CPU counts building the keys and encoding the
values, which the store does. `--compare REV` adds the feature store of git revision REV on the
single Redis (the code before a change, beside the code after it).
"""

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from schemas.features import UserFeatures
from schemas.redis_format import KeyKind
from schemas.runtime.feature_store import EntityWrite, FeatureStore, SeenAddition

NAMESPACE = "storebench"
VALUE = UserFeatures(event_counts={"click": 3}, last_ts=5)


def batch(users: int, round_: int) -> tuple[list[EntityWrite], dict[str, SeenAddition]]:
    kinds = (KeyKind.USER_SEQUENCE, KeyKind.USER_FEATURES)
    writes = [EntityWrite(k, f"u{n}", round_, VALUE, 5, 3_600_000) for n in range(users) for k in kinds]
    seen = {f"u{n}": SeenAddition({f"i{round_}": round_}, 2000, 3_600_000) for n in range(users)}
    return writes, seen


STORE_MODULES = ("schemas/runtime/feature_store.py", "schemas/feature_store.py")
"""Where the feature store's module is, and was before the shared runtime had a room of its own."""


def store_class_at(revision: str) -> type:
    """`FeatureStore` as it was at `revision` (its module loaded from `git show`)."""
    shown = [
        subprocess.run(["git", "show", f"{revision}:{path}"], capture_output=True, text=True) for path in STORE_MODULES
    ]
    source = next(found.stdout for found in shown if found.returncode == 0)
    path = Path(tempfile.mkdtemp()) / "feature_store_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FeatureStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.benches.store", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--single-port", type=int, default=6379, help="a single Redis server")
    parser.add_argument("--cluster-port", type=int, help="a node of a Redis Cluster (KF_REDIS_CLUSTER=true make up)")
    parser.add_argument("--compare", metavar="REV", help="also the feature store of this git revision, single Redis")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--batches", type=int, default=60)
    arguments = parser.parse_args(argv)
    stores = {"single Redis": FeatureStore.connect(arguments.host, arguments.single_port)}
    if arguments.compare:
        stores[f"single Redis, {arguments.compare}"] = store_class_at(arguments.compare).connect(
            arguments.host, arguments.single_port
        )
    if arguments.cluster_port:
        stores["Redis Cluster"] = FeatureStore.connect(arguments.host, arguments.cluster_port, cluster=True)
    cpu = dict.fromkeys(stores, 0.0)
    turns = list(stores.items())
    for round_ in range(1, arguments.batches + 1):
        # Whoever writes first in a round was measured slower, so the order turns round by round.
        for name, store in turns[round_ % len(turns) :] + turns[: round_ % len(turns)]:
            writes, seen = batch(arguments.users, round_)
            started = time.process_time()
            store.write(NAMESPACE, writes, seen)
            cpu[name] += time.process_time() - started
    keys = 3 * arguments.users
    for name, total in cpu.items():
        print(f"{name}: {total / arguments.batches / keys * 1e6:.2f} µs client CPU per written key "
              f"({keys} keys a batch, {arguments.batches} batches)")  # fmt: skip
    for store in stores.values():
        store.drop_namespace(NAMESPACE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
