"""`python -m infra.benches.catalogue` (make bench-catalogue): how soon an item published to the
catalogue is served, and what adding items costs the requests meanwhile.

Copies the MovieLens catalogue into a topic of its own (the demo's items topic is compacted and
feeds training: bench items must not stay in it), starts the service on it and the live model
(`make demo`'s; one is trained on MovieLens first if the registry is empty), with the MovieLens
users' live state of `make bench-serve` in the bench namespace. Then three phases, each under an
open-loop load of recommendations (`--rate`, a new click of the user before every request):
`quiet` (no adds), `singles` (`--singles` new items, one every `--every-s`) and `burst`
(`--burst` new items published at once). An item counts as served when
`GET /v1/items/{id}/similar` answers it (the same swap makes it a retrieval candidate). Reports
publish -> served p50/p99/max per phase (the burst: over every `--burst-sample`th item and the
last) and, in each phase, the recommendations' p50/p99, the service's CPU per request (the adds'
and the polls' work included) and its collector pauses. Deletes its topic at the end.

First, where items embedded from their content alone land in retrieval (`placement`, offline on
the same model): each MovieLens user's newest interaction X is added as a new item (X's genres and
year under a new id), the user's earlier interactions are the sequence, and the rank of that copy
among every item (X and the user's earlier items left out) is reported beside the rank of X's own
trained vector.
"""

import argparse
import asyncio
import logging
import os
import random
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import aiohttp
import numpy as np
import uvloop
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from infra.benches.serve import (
    FRESH,
    NAMESPACE,
    BenchState,
    drive,
    ensure_model,
    service_cpu,
    service_totals,
    wait_ready,
    where_time_went,
)
from schemas.bundle import Registry
from schemas.catalogue import CatalogueItem
from schemas.config import Settings
from schemas.features import SequenceEntry
from schemas.runtime.loaded_bundle import LoadedBundle
from schemas.runtime.pipeline import RankRequest, retrieve
from schemas.runtime.sources.movielens import LoadReport, catalogue_items, locate_dataset, rating_events

log = logging.getLogger("kingfisher.bench")
POLL_S = 0.05
SERVED_TIMEOUT_S = 120


class NewItems:
    """Items that were never in the catalogue, each with the genres and year of a random MovieLens film."""

    def __init__(self, catalogue: list[CatalogueItem], run: str):
        self.catalogue, self.run, self.count = catalogue, run, 0
        self._random = random.Random(0)

    def next(self) -> CatalogueItem:
        model = self._random.choice(self.catalogue)
        self.count += 1
        return CatalogueItem(
            item_id=f"bench-new-{self.run}-{self.count}",
            title=f"New film {self.count}",
            genres=model.genres,
            year=model.year,
            updated_at=int(time.time() * 1000),
        )


def publish(producer: Producer, topic: str, items: list[CatalogueItem]) -> float:
    """-> the moment (monotonic) every one of `items` was acknowledged."""
    for item in items:
        producer.produce(topic, key=item.kafka_key, value=item.to_json())
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("catalogue records not acknowledged in 60 s")
    return time.monotonic()


async def served_after(session: aiohttp.ClientSession, base: str, item_id: str, since: float) -> float:
    """Seconds from `since` until the service answers the item's similar items."""
    deadline = time.monotonic() + SERVED_TIMEOUT_S
    while time.monotonic() < deadline:
        async with session.get(f"{base}/v1/items/{item_id}/similar?k=10") as response:
            if response.status == 200:
                return time.monotonic() - since
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"{item_id} not served within {SERVED_TIMEOUT_S}s")


async def singles(base: str, producer: Producer, topic: str, new: NewItems, count: int, every_s: float) -> list[float]:
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        waits = []
        for _ in range(count):
            item = new.next()
            sent = time.monotonic()
            await loop.run_in_executor(None, publish, producer, topic, [item])  # the load's requests go on meanwhile
            waits.append(asyncio.create_task(served_after(session, base, item.item_id, sent)))
            await asyncio.sleep(every_s)
        return list(await asyncio.gather(*waits))


async def burst(base: str, producer: Producer, topic: str, new: NewItems, count: int, sample: int) -> list[float]:
    items = [new.next() for _ in range(count)]
    sent = time.monotonic()
    await asyncio.get_running_loop().run_in_executor(None, publish, producer, topic, items)
    watched = [*items[::sample], items[-1]]
    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(served_after(session, base, item.item_id, sent) for item in watched)))


async def phase(base: str, state: BenchState, arguments: argparse.Namespace, adds) -> tuple[dict, list[float]]:
    """The recommendations load for the phase's length (at least the adds' own), with `adds` beside
    it; the load's numbers with the service's collector pauses (ms) in the phase."""
    before = await service_totals(base)
    load = asyncio.create_task(drive(base, state, arguments.rate, arguments.seconds, arguments.k, FRESH))
    waits = await adds if adds is not None else []
    measured = await load
    return measured | {"gc": where_time_went(before, await service_totals(base))["gc"]}, waits


def measured_phase(service: subprocess.Popen, base: str, state, arguments, adds) -> tuple[dict, list[float]]:
    """`phase`, with the service's CPU per request sent (ms)."""
    cpu = service_cpu(service)
    load, waits = uvloop.run(phase(base, state, arguments, adds))
    return load | {"cpu_ms": 1000 * (service_cpu(service) - cpu).total_s / load["sent"]}, waits


def placement(settings: Settings, version: int) -> dict[str, np.ndarray]:
    """-> {"as new": ranks of the content-only copies, "trained": ranks of the items themselves}, one per user."""
    directory = locate_dataset(settings.stack.movielens_path)
    catalogue = {item.item_id: item for item in catalogue_items(directory, LoadReport(), int(time.time() * 1000))}
    histories = defaultdict(list)
    for event in rating_events(directory, LoadReport()):
        histories[event.user_id].append(event)
    bundle = LoadedBundle(Registry(settings.stack.models_dir).path(version), settings.pipeline.faiss_exact_max_items)
    newest = {user: events[-1].item_id for user, events in histories.items()}
    copies = [catalogue[item].model_copy(update={"item_id": f"copy:{item}"}) for item in sorted(set(newest.values()))]
    grown, ranks = bundle.with_items(copies), {"as new": [], "trained": []}
    for user, events in histories.items():
        behaviours = [SequenceEntry(e.event_id, e.item_id, e.type, e.ts, e.value) for e in events[:-1]]
        earlier = {entry.item_id for entry in behaviours}
        item = newest[user]
        for kind, recommender, wanted, left_out in (
            ("as new", grown, f"copy:{item}", {item}),
            ("trained", bundle, item, set()),
        ):
            request = RankRequest(
                user, behaviours, None, events[-1].ts, [], earlier | left_out, 1, len(recommender.index)
            )
            found = retrieve(recommender, [request])[2][0]
            ranks[kind].append(found.index(wanted) if wanted in found else len(found))
    return {kind: np.array(found) for kind, found in ranks.items()}


def copy_catalogue(settings: Settings, producer: Producer, topic: str) -> list[CatalogueItem]:
    admin = AdminClient({"bootstrap.servers": settings.stack.kafka_bootstrap})
    created = admin.create_topics([NewTopic(topic, 1, 1, config={"cleanup.policy": "compact"})])
    created[topic].result(30)
    directory = locate_dataset(settings.stack.movielens_path)
    catalogue = list(catalogue_items(directory, LoadReport(), int(time.time() * 1000)))
    publish(producer, topic, catalogue)
    return catalogue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.benches.catalogue",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=100.0, help="recommendations per second during every phase")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the load in each phase")
    parser.add_argument("--singles", type=int, default=100, help="items published one at a time")
    parser.add_argument("--every-s", type=float, default=0.25, help="seconds between two single items")
    parser.add_argument("--burst", type=int, default=10_000, help="items published at once")
    parser.add_argument("--burst-sample", type=int, default=50, help="watch every N-th item of the burst")
    parser.add_argument("--users", type=int, default=500, help="distinct users asked for")
    parser.add_argument("--k", type=int, default=20)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    version = ensure_model(settings)
    placed = placement(settings, version)
    state = BenchState(settings, arguments.users)
    run = uuid.uuid4().hex[:8]
    topic = f"kingfisher-bench-items-{run}"
    producer = Producer({"bootstrap.servers": settings.stack.kafka_bootstrap, "acks": "all", "linger.ms": 5})
    catalogue = copy_catalogue(settings, producer, topic)
    new = NewItems(catalogue, run)
    port = settings.serving.serve_port + 1
    log_path = Path(settings.stack.logs_dir) / "bench-catalogue.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"KF_NAMESPACE": NAMESPACE, "KF_TOPIC_ITEMS": topic}
    with log_path.open("w") as output:
        service = subprocess.Popen(
            [sys.executable, "-m", "serving", "--port", str(port)], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    base = f"http://{settings.stack.bind_host}:{port}"
    try:
        uvloop.run(wait_ready(base, service))
        uvloop.run(drive(base, state, 20, 5, arguments.k, FRESH))  # warm-up, not reported
        adds = {
            "quiet": None,
            "singles": singles(base, producer, topic, new, arguments.singles, arguments.every_s),
            "burst": burst(base, producer, topic, new, arguments.burst, arguments.burst_sample),
        }
        results = {name: measured_phase(service, base, state, arguments, added) for name, added in adds.items()}
    finally:
        service.terminate()
        service.wait(timeout=30)
        AdminClient({"bootstrap.servers": settings.stack.kafka_bootstrap}).delete_topics([topic])
    report(results, placed, version, len(catalogue), arguments, settings)
    served = [wait for _, waits in results.values() for wait in waits]
    return 0 if np.percentile(served, 99) <= 5.0 else 1


def report(results, placed, version: int, catalogue: int, arguments: argparse.Namespace, settings: Settings) -> None:
    console = Console(width=160)
    table = Table(title=f"placement: each MovieLens user's newest item in retrieval, model v{version}")
    for column in ("vector", "users", "in the top 100", "in the top 200", "median rank"):
        table.add_column(column, justify="right")
    for kind, ranks in placed.items():
        table.add_row(kind, str(len(ranks)), f"{np.mean(ranks < 100):.3f}", f"{np.mean(ranks < 200):.3f}",
                      f"{np.median(ranks):.0f}")  # fmt: skip
    console.print(table)
    table = Table(
        title=f"bench-catalogue: model v{version}, {catalogue} MovieLens items, {settings.serving.serve_workers} "
        f"worker(s), {arguments.rate:.0f} recommendations/s (fresh mix, k={arguments.k}) in every phase"
    )
    for column in ("phase", "items watched", "served p50 s", "served p99 s", "served max s", "requests", "errors",
                   "fallbacks", "request p50 ms", "request p99 ms", "CPU ms/req", "gc ms"):  # fmt: skip
        table.add_column(column, justify="right")
    for name, (load, waits) in results.items():
        served = [f"{np.percentile(waits, q):.2f}" for q in (50, 99, 100)] if waits else ["-"] * 3
        table.add_row(
            name, str(len(waits)), *served, str(load["sent"]), str(load["errors"]), str(load["fallbacks"]),
            f"{load['p50']:.1f}", f"{load['p99']:.1f}", f"{load['cpu_ms']:.2f}", f"{load['gc']:.0f}",
        )  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
