"""A Kafka broker killed (-9) and restarted while `kingfisher publish` and POST /v1/events send: what
was acknowledged reaches Redis exactly once, and what was not is reported to the sender as failed.
The broker is this module's own (a second local stack), so the session's stack is never touched."""

import os
import re
import signal
import threading
import time

import pytest
import redis

from schemas.events import parse_event
from schemas.runtime.sources.synthetic import SyntheticWorld, WorldSpec
from tests.conftest import Stack, consume_to_end, free_port, settings_of, stack_environment
from tests.integration.test_feature_job import assert_state_equals_reference, start_job, wait_for, wait_for_every_event
from tests.integration.test_serving import Process, call

PUBLISHED_EVENTS, PUBLISH_RATE, SEED = 4000, 150, 9
HTTP_USERS, HTTP_BATCH = 40, 10


@pytest.fixture
def own_stack(tmp_path) -> Stack:
    own = Stack(settings_of(env := stack_environment(tmp_path / "run")), env)
    started = own.run("infra/stack.py", "up")
    assert started.returncode == 0, started.stdout + started.stderr
    yield own
    own.run("infra/stack.py", "down")


class HttpSender:
    """POSTs batches of new events at a steady pace from a thread; remembers each batch's answer."""

    def __init__(self, base: str):
        self.base, self.answers = base, []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="http sender")

    def _run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            batch = [self.event(n + i) for i in range(HTTP_BATCH)]
            n += HTTP_BATCH
            self.answers.append((batch, *call(self.base, "/v1/events", batch)))
            time.sleep(0.2)

    @staticmethod
    def event(n: int) -> dict:
        return {"event_id": f"http-{n}", "user_id": f"h{n % HTTP_USERS}", "item_id": f"i{n % 97}", "type": "click",
                "ts": 1_735_700_000_000 + n}  # fmt: skip


def kafka_pid(stack: Stack) -> int:
    return int((stack.settings.stack.run_dir / "kafka" / "kafka.pid").read_text().split()[0])


def test_3_a_broker_killed_under_publishers_loses_no_acknowledged_event_and_reports_the_rest(own_stack, tmp_path):
    settings = own_stack.settings
    job = start_job(own_stack, settings.stack.topic_events, "broker", tmp_path / "job.log")
    service = Process(own_stack, tmp_path / "service.log", "-m", "serving", "--port", str(port := free_port()))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: healthy(base), "the service", timeout_s=180)
        sender = HttpSender(base)
        publisher = Process(own_stack, tmp_path / "publish.log", "-m", "streams.cli", "publish", "events", "synthetic",
                            "--limit", str(PUBLISHED_EVENTS), "--rate", str(PUBLISH_RATE), "--seed", str(SEED),
                            "--no-progress")  # fmt: skip
        sender.thread.start()
        time.sleep(8)
        os.kill(kafka_pid(own_stack), signal.SIGKILL)
        time.sleep(12)  # longer than KF_EVENTS_ACK_TIMEOUT_S: batches sent meanwhile go unacknowledged
        restarted = own_stack.run("infra/stack.py", "up")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        publisher.process.wait(timeout=300)
        time.sleep(3)
        sender.stopping.set()
        sender.thread.join(timeout=60)
        refused = [(batch, answer) for batch, status, answer in sender.answers if status != 202]
        for batch, _ in refused:  # what the 503 tells the client to do
            wait_for(lambda batch=batch: call(base, "/v1/events", batch)[0] == 202, "a resent batch accepted")
        in_topic = [parse_event(m.value()) for m in consume_to_end(own_stack, settings.stack.topic_events)]
        client = redis.Redis(host=settings.stack.bind_host, port=settings.stack.redis_port)
        wait_for_every_event(client, "broker", in_topic, settings.pipeline.features)
        assert_state_equals_reference(client, "broker", in_topic, settings.pipeline.features)
    finally:
        service.stop()
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()

    publish_log = (tmp_path / "publish.log").read_text()
    published = int(re.search(r"published ([\d,]+) of", publish_log)[1].replace(",", ""))
    synthetic_ids = {e.event_id for e in SyntheticWorld(WorldSpec(seed=SEED)).events(PUBLISHED_EVENTS)}
    topic_ids = {e.event_id for e in in_topic}
    http_sent = {event["event_id"] for batch, _, _ in sender.answers for event in batch}
    # The CLI reports what the broker acknowledged; failures (if any) make it fail, never pass silently.
    assert published == len(topic_ids & synthetic_ids) and (publisher.process.returncode == 0) == (
        published == PUBLISHED_EVENTS
    ), publish_log[-2000:]
    assert {status for _, status, _ in sender.answers} <= {202, 503}
    assert refused, "no batch was sent while the broker was down"
    assert all("not acknowledged by Kafka" in answer["error"] for _, answer in refused)
    assert http_sent <= topic_ids  # acknowledged at first or after the resend: none lost
    assert topic_ids <= http_sent | synthetic_ids


def healthy(base: str) -> bool:
    try:
        return call(base, "/healthz")[0] == 200
    except OSError:
        return False
