"""`kingfisher`: the operators' command line (publish data into Kafka; more commands join later).

kingfisher publish events movielens [--path DIR] [--rate N | --speedup K]
kingfisher publish events synthetic --limit 1000000 --rate 5000
kingfisher publish catalogue movielens
kingfisher withdraw ITEM_ID [ITEM_ID ...]
"""

import argparse
import itertools
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from schemas.config import Settings
from schemas.runtime.feature_store import FeatureStore
from schemas.runtime.sources import movielens, synthetic
from schemas.validation import ContractRecord
from streams.publish import Pacer, make_producer, progress_bar, publish
from streams.replay import replay_command

console = Console(stderr=True)


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=["movielens", "synthetic"], help="where the records come from")
    movielens_options = parser.add_argument_group("movielens")
    movielens_options.add_argument(
        "--path", type=Path, help="MovieLens directory (default: KF_MOVIELENS_PATH, else ../shared/datasets/...)"
    )
    world = parser.add_argument_group("synthetic")
    defaults = synthetic.WorldSpec()
    world.add_argument("--users", type=int, default=defaults.users, help=f"(default {defaults.users})")
    world.add_argument("--items", type=int, default=defaults.items, help=f"(default {defaults.items})")
    world.add_argument("--seed", type=int, default=defaults.seed, help=f"(default {defaults.seed})")
    parser.add_argument("--topic", help="Kafka topic (default: KF_TOPIC_EVENTS or KF_TOPIC_ITEMS)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in CI logs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kingfisher", description="Kingfisher operators' command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    publish_parser = commands.add_parser("publish", help="publish a data source into Kafka")
    what = publish_parser.add_subparsers(dest="what", required=True)

    events = what.add_parser("events", help="publish user events (MovieLens ratings or a synthetic stream)")
    add_source_options(events)
    events.add_argument("--limit", type=int, help="stop after N events (synthetic default: 100000)")
    pacing = events.add_mutually_exclusive_group()
    pacing.add_argument("--rate", type=positive_float, help="events per second (default: as fast as possible)")
    pacing.add_argument(
        "--speedup", type=positive_float, help="replay history K times faster than it happened, keeping event times"
    )

    catalogue = what.add_parser("catalogue", help="publish catalogue items to the compacted items topic")
    add_source_options(catalogue)

    withdraw = commands.add_parser(
        "withdraw", help="withdraw catalogue items: a tombstone per item on the items topic (the service drops them)"
    )
    withdraw.add_argument("item_ids", nargs="+", metavar="ITEM_ID")
    withdraw.add_argument("--topic", help="items topic (default: KF_TOPIC_ITEMS)")

    replay = commands.add_parser(
        "replay", help="rebuild state: replay the events topic into a fresh Redis namespace, then switch serving to it"
    )
    replay.add_argument("--namespace", required=True, help="the fresh namespace to fill")
    replay.add_argument("--topic", help="events topic (default: KF_TOPIC_EVENTS)")
    replay.add_argument("--from-timestamp", type=int, metavar="MS", help="replay from this Kafka time, not the start")
    replay.add_argument("--dry-run", action="store_true", help="only show what would be replayed")
    replay.add_argument("--no-switch", action="store_true", help="leave serving on the current namespace")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar")
    replay.add_argument(
        "--flink", action="store_true", help="run the bounded Flink feature job instead of the backfill (slower)"
    )
    replay.add_argument(
        "--samples", action="store_true", help="also write the namespace's training-sample log, as the live job does"
    )

    namespace = commands.add_parser("namespace", help="show, switch or drop Redis namespaces")
    namespace_commands = namespace.add_subparsers(dest="action", required=True)
    namespace_commands.add_parser("show", help="the namespace serving reads, and its key count")
    for action, text in (("switch", "point serving at NS (one atomic SET)"), ("drop", "delete every key of NS")):
        namespace_commands.add_parser(action, help=text).add_argument("name", metavar="NS")
    return parser


def records_of(
    arguments: argparse.Namespace, settings: Settings, report: movielens.LoadReport
) -> Iterable[ContractRecord]:
    now_ms = int(time.time() * 1000)
    if arguments.source == "movielens":
        directory = movielens.locate_dataset(arguments.path or settings.stack.movielens_path)
        if arguments.what == "catalogue":
            return movielens.catalogue_items(directory, report, updated_at=now_ms)
        return itertools.islice(movielens.rating_events(directory, report), arguments.limit)
    world = synthetic.SyntheticWorld(
        synthetic.WorldSpec(users=arguments.users, items=arguments.items, seed=arguments.seed)
    )
    if arguments.what == "catalogue":
        return world.catalogue(updated_at=now_ms)
    return world.events(limit=arguments.limit or 100_000)


def run_publish(arguments: argparse.Namespace, settings: Settings) -> int:
    topic = arguments.topic or (
        settings.stack.topic_items if arguments.what == "catalogue" else settings.stack.topic_events
    )
    report = movielens.LoadReport()
    records = records_of(arguments, settings, report)
    pacer = Pacer(rate=getattr(arguments, "rate", None), speedup=getattr(arguments, "speedup", None))
    with progress_bar(enabled=not arguments.no_progress) as progress:
        summary = publish(records, make_producer(settings), topic, pacer, progress)
    noun = "catalogue items" if arguments.what == "catalogue" else "events"
    console.print(
        f"published {summary.sent:,} of {summary.attempted:,} {noun} to {topic!r} "
        f"in {summary.seconds:.1f} s ({summary.per_second:,.0f}/s); failed: {summary.failed:,}"
    )
    if report.malformed:
        console.print(f"[yellow]skipped {len(report.malformed):,} malformed line(s); first: {report.malformed[0]}")
    if summary.failed:
        console.print(f"[red]first failure: {summary.first_error}")
    return 1 if summary.failed else 0


def run_withdraw(arguments: argparse.Namespace, settings: Settings) -> int:
    topic, producer = arguments.topic or settings.stack.topic_items, make_producer(settings)
    for item_id in arguments.item_ids:
        producer.produce(topic, key=item_id.encode(), value=None)
    if unsent := producer.flush(30):
        console.print(f"[red]{unsent} of {len(arguments.item_ids)} withdrawals not acknowledged by Kafka in 30 s")
        return 1
    console.print(f"withdrew {len(arguments.item_ids):,} item(s) on {topic!r}")
    return 0


def run_namespace(arguments: argparse.Namespace, settings: Settings) -> int:
    store = FeatureStore.for_stack(settings.stack)
    current = store.active_namespace(settings.stack.namespace)
    if arguments.action == "show":
        console.print(f"serving reads {current!r} ({store.count_keys(current):,} keys)")
    elif arguments.action == "switch":
        console.print(f"serving now reads {arguments.name!r} (was {store.switch_namespace(arguments.name)!r})")
    elif arguments.name == current:
        console.print(f"[red]{arguments.name!r} is the namespace serving reads; switch away from it first")
        return 2
    else:
        console.print(f"dropped {store.drop_namespace(arguments.name):,} keys of {arguments.name!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console)])
    settings = Settings()
    try:
        if arguments.command == "publish":
            return run_publish(arguments, settings)
        if arguments.command == "namespace":
            return run_namespace(arguments, settings)
        if arguments.command == "withdraw":
            return run_withdraw(arguments, settings)
        return replay_command(settings, arguments.topic or settings.stack.topic_events, arguments.namespace,
                              arguments.from_timestamp, dry_run=arguments.dry_run, switch=not arguments.no_switch,
                              show_progress=not arguments.no_progress, console=console,
                              flink=arguments.flink, samples=arguments.samples)  # fmt: skip
    except (FileNotFoundError, ValueError) as error:
        console.print(f"[bold red]error:[/] {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
