"""Publishing contract records to Kafka: idempotent, acks=all, paced, with progress and a summary."""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message, Producer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from schemas.config import Settings
from schemas.validation import ContractRecord

PROGRESS_EVERY = 1000


@dataclass
class PublishSummary:
    attempted: int = 0
    sent: int = 0
    failed: int = 0
    seconds: float = 0.0
    first_error: str | None = None

    @property
    def per_second(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


class Pacer:
    """Holds record n back until its time: n / rate seconds after the start, or, with a speedup k,
    (event time - first event time) / k after the start. Neither: as fast as possible."""

    def __init__(
        self,
        rate: float | None = None,
        speedup: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate is not None and speedup is not None:
            raise ValueError("choose a rate or a speedup, not both")
        if (rate is not None and rate <= 0) or (speedup is not None and speedup <= 0):
            raise ValueError("rate and speedup must be positive")
        self.rate, self.speedup, self.clock, self.sleep = rate, speedup, clock, sleep
        self.start = clock()
        self.first_ts: int | None = None

    def wait(self, index: int, event_ts: int | None) -> None:
        if self.rate is not None:
            due = self.start + index / self.rate
        elif self.speedup is not None and event_ts is not None:
            self.first_ts = event_ts if self.first_ts is None else self.first_ts
            due = self.start + (event_ts - self.first_ts) / 1000 / self.speedup
        else:
            return
        ahead = due - self.clock()
        if ahead > 0.001:
            self.sleep(ahead)


def make_producer(settings: Settings) -> Producer:
    # Idempotence implies acks=all: a retried batch is written once, in order, per partition.
    return Producer(
        {
            "bootstrap.servers": settings.stack.kafka_bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 10,
        }
    )


def produce(producer: Producer, topic: str, record: ContractRecord, on_delivery) -> None:
    """Queue one record keyed by its contract key, waiting for room when the local queue is full."""
    while True:
        try:
            producer.produce(topic, key=record.kafka_key, value=record.to_json(), on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)


class RecordsPerSecondColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:>9,.0f}/s" if task.speed else "")


def progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RecordsPerSecondColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def publish(
    records: Iterable[ContractRecord],
    producer: Producer,
    topic: str,
    pacer: Pacer,
    progress: Progress,
    total: int | None = None,
) -> PublishSummary:
    """Send every record keyed by its contract key; returns once all are acknowledged or failed."""
    summary = PublishSummary()

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is None:
            summary.sent += 1
        else:
            summary.failed += 1
            summary.first_error = summary.first_error or str(error)

    task = progress.add_task(f"publishing to {topic}", total=total)
    for index, record in enumerate(records):
        pacer.wait(index, getattr(record, "ts", None))
        produce(producer, topic, record, delivered)
        summary.attempted += 1
        if summary.attempted % PROGRESS_EVERY == 0:
            producer.poll(0)  # serves delivery callbacks
            progress.update(task, completed=summary.attempted)
    producer.flush()
    summary.seconds = pacer.clock() - pacer.start
    progress.update(task, completed=summary.attempted, total=summary.attempted)
    return summary
