"""The recommendation service against real Redis, Kafka, the streaming job and a trained bundle."""

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from statistics import NormalDist

import aiohttp
import hypothesis
import jsonschema
import numpy as np
import orjson
import psutil
import pytest
import schemathesis
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import GenerationMode

from schemas.bundle import CURRENT, EXPERIMENT, MANIFEST, SERVED_MODELS, Manifest, Registry, seal, version_name
from schemas.catalogue import CatalogueItem
from schemas.config import Settings
from schemas.events import validate_event
from schemas.experiments import Z_95, Experiment, attributed_arm, item_digest
from schemas.runtime.catalogue_topic import CatalogueChanges
from schemas.runtime.feature_store import FeatureStore
from schemas.runtime.loaded_bundle import SERVED_SIMILARITY, read_served_models, write_served_models
from schemas.runtime.pipeline import RankRequest, rank_batch
from schemas.runtime.sources.synthetic import SyntheticWorld, WorldSpec
from serving.app import init_app
from serving.catalogue import LiveCatalogue
from serving.resources import MODELS, STORE
from tests.conftest import REPO_ROOT, Stack, free_port
from tests.in_process import MemoryFeatureStore, RecordingProducer, in_memory_resources, with_client
from tests.integration.test_feature_job import PrivateRedis, new_topic_named, publish
from tests.integration.test_training import TINY, train_tiny

START_TIMEOUT_S = 180
PUBLISHED = 1_735_689_600_000
"""When the test catalogue was published (epoch ms)."""
APPLY_TIMEOUT_S = 120


def call(
    base: str, path: str, body: object | None = None, headers: dict | None = None, method: str | None = None
) -> tuple[int, dict]:
    data = orjson.dumps(body) if body is not None else None
    method = method or ("POST" if data else "GET")
    request = urllib.request.Request(base + path, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read() or b"{}")


def metrics_text(base: str) -> str:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        return response.read().decode()


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


class Process:
    """A background program of the project with its output in a log file."""

    def __init__(self, stack: Stack, log: Path, *args: str):
        self.log = log
        with log.open("w") as output:
            self.process = subprocess.Popen(
                [sys.executable, *args], env=stack.env, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT
            )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_service(stack: Stack, log: Path) -> tuple[Process, str]:
    port = free_port()
    service = Process(stack, log, "-m", "serving", "--port", str(port))
    base = f"http://127.0.0.1:{port}"

    def ready():
        assert service.process.poll() is None, log.read_text()[-3000:]
        try:
            return call(base, "/readyz")[0] == 200
        except OSError:
            return False

    wait_until(ready, START_TIMEOUT_S, "the service to be ready")
    return service, base


# Budgets a machine shared with the other test worker keeps: the swap tests check that every answer
# comes from the models, which a swap that blocks requests breaks; latency under load is make
# bench-serve's and make soak's to measure.
SHARED_MACHINE_BUDGETS = {"KF_MODEL_BUDGET_MS": "500", "KF_REQUEST_BUDGET_MS": "500"}


@pytest.fixture(scope="module")
def system(stack: Stack, tmp_path_factory):
    """A trained bundle, the catalogue, the streaming job and the service, on fresh topics."""
    run_dir = tmp_path_factory.mktemp("serving")
    items, events = new_topic_named(stack, "items", 1), new_topic_named(stack, "events", 2)
    world = SyntheticWorld(WorldSpec(seed=7))
    publish(stack, items, [(item.kafka_key, item.to_json()) for item in world.catalogue(PUBLISHED)])
    configured = stack.with_env(
        KF_RUN_DIR=str(run_dir),
        KF_TOPIC_ITEMS=items,
        KF_TOPIC_EVENTS=events,
        KF_NAMESPACE="serving",
        KF_ADMIN_TOKEN="secret",
        KF_MODEL_POLL_S="1",
        KF_GATE_MARGIN="1.0",
        KF_MAX_K="200",  # a whole pool of candidates in one answer
        KF_SEEN_CAPACITY="40",  # seer's 80 clicks overflow it: half of them are left out by the seen filter
        **TINY,
        **SHARED_MACHINE_BUDGETS,
    )
    trained = train_tiny(configured, "--no-announce")
    assert trained.returncode == 0, trained.stderr[-3000:]
    # Serving reads the namespace the control key names (a replay test may have switched it): make it ours.
    switched = configured.kingfisher("namespace", "switch", "serving")
    assert switched.returncode == 0, switched.stderr
    job = Process(configured, run_dir / "feature_job.log", "-m", "streams.feature_job", "--no-samples", "--fresh")
    service, base = start_service(configured, run_dir / "service.log")
    yield configured, base, run_dir
    service.stop()
    job.stop()


def click(user: str, item: str, ts: int, n: int) -> dict:
    return {"event_id": f"{user}-{n}", "user_id": user, "item_id": item, "type": "click", "ts": ts}


def applied(base: str, user: str, count: int):
    def check():
        status, profile = call(base, f"/v1/users/{user}/profile")
        return profile if status == 200 and len(profile["sequence"]) >= count else None

    return wait_until(check, APPLY_TIMEOUT_S, f"{count} events of {user} in Redis")


def test_1_recommendations_follow_new_events_through_kafka_and_the_stream(system):
    _, base, _ = system
    first = [click("fresh", f"i{n}", 1_735_700_000_000 + n, n) for n in (3, 5, 8)]

    assert call(base, "/v1/events", first) == (202, {"accepted": 3, "topic": system[0].settings.stack.topic_events})
    applied(base, "fresh", 3)
    status, before = call(base, "/v1/recommendations?user_id=fresh&k=10&explain=true")
    later = [click("fresh", f"i{n}", 1_735_800_000_000 + n, n) for n in (101, 150, 222, 260, 301)]
    call(base, "/v1/events", later)
    applied(base, "fresh", 8)
    _, after = call(base, "/v1/recommendations?user_id=fresh&k=10&explain=true")

    assert status == 200 and before["fallback"] is False and before["reason"] is None
    assert before["features_as_of"] == 1_735_700_000_008 and after["features_as_of"] == 1_735_800_000_301
    assert [i["item_id"] for i in before["items"]] != [i["item_id"] for i in after["items"]]
    assert all(reason["item_id"] in {"i3", "i5", "i8"} for item in before["items"] for reason in item["reasons"])
    assert before["items"][0]["title"].startswith("Synthetic item")


SEEN = [f"i{n}" for n in range(0, 160, 2)]
"""The items user `seer` clicks: 80, more than the 50 interactions of a live sequence and the 40 of
the system's seen sets."""


def test_2_exclude_seen_leaves_out_every_item_the_user_ever_interacted_with(system):
    stack, base, _ = system
    call(base, "/v1/events", [click("seer", item, 1_735_700_000_000 + n, n) for n, item in enumerate(SEEN)])
    wait_until(lambda: clicks_applied(base, "seer") == len(SEEN), APPLY_TIMEOUT_S, "every click of seer in Redis")

    retrieved = stack.settings.pipeline.candidates  # all unseen: the seen items are left out inside the search
    _, answer = call(base, f"/v1/recommendations?user_id=seer&k={retrieved}&exclude_seen=true")
    _, profile = call(base, "/v1/users/seer/profile")

    assert answer["fallback"] is False and len(answer["items"]) == retrieved
    assert len(set(SEEN) - {entry["item_id"] for entry in profile["sequence"]}) == 30  # no longer in the sequence
    assert len(FeatureStore.for_stack(stack.settings.stack).read_seen("seer", "serving")) == 40  # older: filtered
    assert not {item["item_id"] for item in answer["items"]} & set(SEEN)


NEW_ITEM_TIMEOUT_S = 30


def test_10_an_item_published_after_training_is_served_and_ranked_within_seconds_and_leaves_when_withdrawn(system):
    configured, base, _ = system
    catalogue = list(SyntheticWorld(WorldSpec(seed=7)).catalogue(PUBLISHED))
    genre = catalogue[0].genres[0]
    of_genre = [item.item_id for item in catalogue if item.genres == [genre]][:5]
    call(base, "/v1/events", [click("newcomer", item, 1_735_700_000_000 + n, n) for n, item in enumerate(of_genre)])
    applied(base, "newcomer", len(of_genre))
    film = {
        "item_id": "brand-new",
        "title": "A brand new film",
        "genres": [genre],
        "year": 2024,
        "updated_at": PUBLISHED,
    }
    assert call(base, "/v1/items/brand-new/similar")[0] == 404

    publish(configured, configured.settings.stack.topic_items, [(b"brand-new", orjson.dumps(film))])
    similar = wait_until(
        lambda: (answer := call(base, "/v1/items/brand-new/similar?k=10"))[0] == 200 and answer[1],
        NEW_ITEM_TIMEOUT_S,
        "the new item's similar items",
    )
    _, ranked = call(base, "/v1/recommendations?user_id=newcomer&k=200")

    genres = {item.item_id: item.genres for item in catalogue}
    by_chance = sum(genre in item.genres for item in catalogue) / len(catalogue)  # 0.13: 1 or 2 of 10
    assert sum(genre in genres[item["item_id"]] for item in similar["items"]) >= 6 > 10 * by_chance, similar
    assert ranked["fallback"] is False and "brand-new" in [item["item_id"] for item in ranked["items"]], ranked
    assert next(item for item in ranked["items"] if item["item_id"] == "brand-new")["title"] == "A brand new film"

    withdrawn = configured.kingfisher("withdraw", "brand-new", of_genre[0])
    assert withdrawn.returncode == 0, withdrawn.stderr
    wait_until(lambda: call(base, "/v1/items/brand-new/similar")[0] == 404, NEW_ITEM_TIMEOUT_S, "the withdrawal")
    _, after = call(base, "/v1/recommendations?user_id=newcomer&k=200")
    _, similar_after = call(base, f"/v1/items/{of_genre[1]}/similar?k=200")
    answered = {item["item_id"] for item in after["items"] + similar_after["items"]}
    assert after["fallback"] is False and not answered & {"brand-new", of_genre[0]}


def test_12_an_item_whose_content_changes_moves_to_its_new_genre_within_seconds(system):
    configured, base, _ = system
    catalogue = list(SyntheticWorld(WorldSpec(seed=7)).catalogue(PUBLISHED))
    genres = {item.item_id: item.genres for item in catalogue}
    film = next(item for item in catalogue if len(item.genres) == 1)
    new_genre = next(item.genres[0] for item in catalogue if item.genres[0] != film.genres[0])
    of_new_genre = lambda answer: sum(new_genre in genres.get(item["item_id"], ()) for item in answer["items"])  # noqa: E731
    before = call(base, f"/v1/items/{film.item_id}/similar?k=200")[1]
    changed = film.model_copy(update={"genres": [new_genre], "updated_at": PUBLISHED + 1})

    publish(configured, configured.settings.stack.topic_items, [(changed.kafka_key, changed.to_json())])
    after = wait_until(
        lambda: (answer := call(base, f"/v1/items/{film.item_id}/similar?k=200")[1]) != before and answer,
        NEW_ITEM_TIMEOUT_S,
        "the changed item's similar items",
    )

    print(f"{film.item_id}: {of_new_genre(before)} -> {of_new_genre(after)} of 200 similar items of {new_genre}")
    assert of_new_genre(after) > of_new_genre(before), (before, after)


def test_14_a_film_whose_title_names_another_films_series_rises_among_its_similar_items_alone(system):
    configured, base, _ = system
    catalogue = list(SyntheticWorld(WorldSpec(seed=7)).catalogue(PUBLISHED))
    film = catalogue[-1]
    scores = lambda answer: {item["item_id"]: item["score"] for item in answer["items"]}  # noqa: E731
    before = scores(call(base, f"/v1/items/{film.item_id}/similar?k=200")[1])
    by_id = {item.item_id: item for item in catalogue}
    sequel = next(item_id for item_id in list(before)[100:] if not set(by_id[item_id].genres) & set(film.genres))
    retitled = [
        by_id[item_id].model_copy(update={"title": title, "updated_at": PUBLISHED + 2})
        for item_id, title in ((film.item_id, "Kingfisher Returns"), (sequel, "Kingfisher Returns Again"))
    ]

    publish(configured, configured.settings.stack.topic_items, [(item.kafka_key, item.to_json()) for item in retitled])
    after = wait_until(
        lambda: (answer := scores(call(base, f"/v1/items/{film.item_id}/similar?k=200")[1])) != before and answer,
        NEW_ITEM_TIMEOUT_S,
        "the retitled film's similar items",
    )

    print(f"{sequel}: {list(before).index(sequel)} -> {list(after).index(sequel)} among {film.item_id}'s similar")
    assert after[sequel] - before[sequel] >= SERVED_SIMILARITY.title * SERVED_SIMILARITY.title_floor
    assert list(after).index(sequel) < list(before).index(sequel)
    unchanged = set(before) & set(after) - {sequel}  # their titles share no word with the film's
    assert len(unchanged) > 150 and all(after[item] == pytest.approx(before[item], abs=1e-5) for item in unchanged)


def tallies_reached(base: str, expected: dict[str, list[int]]) -> dict:
    """The experiment's report once the stream's counts are `expected`: arm -> [impressions, clicks]."""

    def counted():
        report = call(base, "/v1/experiments")[1]["experiment"]
        tallies = {arm["name"]: [arm["impressions"], arm["clicks"]] for arm in report["arms"]}
        return report if tallies == expected else None

    return wait_until(counted, APPLY_TIMEOUT_S, f"the stream's tallies to reach {expected}")


def test_11_impressions_and_clicks_of_each_arms_answers_are_counted_by_the_stream_for_that_arm(system):
    _, base, run_dir = system
    current = Registry(run_dir / "models").current()
    arms = [{"name": "champion", "share": 0.5}, {"name": "challenger", "version": current, "share": 0.5},
            {"name": "shadow", "version": current, "share": 1.0, "shadow": True}]  # fmt: skip
    admin = {"Authorization": "Bearer secret"}
    assert call(base, "/v1/admin/experiments", {"name": "it", "arms": arms}, admin)[0] == 200
    experiment = Experiment.model_validate({"name": "it", "arms": arms})
    candidates = [f"arm-{n}" for n in range(64)]
    users = [[u for u in candidates if experiment.arm_of(u).name == arm["name"]][:3] for arm in arms[:2]]
    # A history each, so that the models (and the shadow arm) rank their answers.
    call(
        base,
        "/v1/events",
        [click(user, "i1", 1_735_600_000_000, 1000 + n) for n, user in enumerate(users[0] + users[1])],
    )
    for user in users[0] + users[1]:
        applied(base, user, 1)
    expected = {"champion": [0, 0], "challenger": [0, 0], "shadow": [0, 0]}
    try:
        for n, user in enumerate(users[0] + users[1]):
            _, answer = call(base, f"/v1/recommendations?user_id={user}&k=3")
            assert answer["arm"] == experiment.arm_of(user).name
            context = {"request_id": answer["request_id"]}
            shown = [{**click(user, item["item_id"], 1_735_700_000_000 + rank, 10 * n + rank), "type": "impression",
                      "context": context} for rank, item in enumerate(answer["items"])]  # fmt: skip
            clicked = {**click(user, answer["items"][0]["item_id"], 1_735_700_001_000, 10 * n + 9), "context": context}
            assert call(base, "/v1/events", [*shown, clicked])[0] == 202
            expected[answer["arm"]][0] += len(shown)
            expected[answer["arm"]][1] += 1
            expected["shadow"][1] += 1  # a click on an answer the shadow arm ranked too

        report = tallies_reached(base, expected)
        impressions = expected["champion"][0]
        counted = f'kingfisher_experiment_events{{arm="champion",experiment="it",type="impression"}} {impressions}.0'
        metrics = wait_until(lambda: counted in (text := metrics_text(base)) and text, 10, "Prometheus")
    finally:
        assert call(base, "/v1/admin/experiments", headers=admin, method="DELETE")[0] == 200

    assert 'kingfisher_experiment_ctr{arm="challenger",bound="high",experiment="it"}' in metrics
    assert [clicks for _, clicks in expected.values()] == [3, 3, 6]
    shadow = report["arms"][2]
    assert shadow["would_have_shown"] == 6  # the same model would have shown every clicked item
    assert all(arm["ctr_interval"] is not None for arm in report["arms"][:2])
    assert call(base, f"/v1/recommendations?user_id={users[1][0]}")[1]["arm"] is None


def test_8_on_a_redis_cluster_the_stream_writes_and_the_service_reads_and_ranks(system, redis_cluster, tmp_path):
    configured, _, run_dir = system
    shutil.copytree(run_dir / "models", tmp_path / "models")  # the same trained bundle
    cluster = configured.with_env(KF_RUN_DIR=str(tmp_path), KF_REDIS_CLUSTER="true",
                                  KF_REDIS_PORT=str(redis_cluster.settings.stack.redis_port),
                                  KF_TOPIC_EVENTS=new_topic_named(configured, "events-cluster", 2))  # fmt: skip
    assert cluster.kingfisher("namespace", "switch", "serving").returncode == 0
    job = Process(cluster, tmp_path / "feature_job.log", "-m", "streams.feature_job", "--no-samples", "--fresh")
    service, base = start_service(cluster, tmp_path / "service.log")
    clicked = [click("clustered", f"i{n}", 1_735_700_000_000 + n, n) for n in (4, 9, 12)]
    try:
        assert call(base, "/v1/events", clicked)[0] == 202
        profile = applied(base, "clustered", 3)
        status, ranked = call(base, "/v1/recommendations?user_id=clustered&k=10&exclude_seen=true&explain=true")
    finally:
        service.stop()
        job.stop()

    assert [entry["item_id"] for entry in profile["sequence"]] == ["i4", "i9", "i12"]
    assert status == 200 and (ranked["fallback"], ranked["reason"]) == (False, None) and len(ranked["items"]) == 10
    assert ranked["features_as_of"] == 1_735_700_000_012
    assert not {item["item_id"] for item in ranked["items"]} & {"i4", "i9", "i12"}
    assert all(reason["item_id"] in {"i4", "i9", "i12"} for item in ranked["items"] for reason in item["reasons"])


def clicks_applied(base: str, user: str) -> int:
    status, profile = call(base, f"/v1/users/{user}/profile")
    return (profile["features"] or {}).get("event_counts", {}).get("click", 0) if status == 200 else 0


class OpenLoopLoad:
    """GET `paths` round-robin at a fixed rate from a thread of its own, each request sent at its time
    whether or not earlier ones have been answered; records (status, answer) of each."""

    def __init__(self, base: str, paths: list[str], rate: float):
        self.base, self.paths, self.rate = base, paths, rate
        self.answers: list[tuple[int, dict]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._run(),), name="open-loop load")

    def __enter__(self) -> "OpenLoopLoad":
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stopping.set()
        self.thread.join(timeout=120)

    async def _run(self) -> None:
        async with aiohttp.ClientSession(self.base, timeout=aiohttp.ClientTimeout(total=30)) as session:
            started, sent, pending = time.monotonic(), 0, set()
            while not self.stopping.is_set():
                pending.add(asyncio.create_task(self._get(session, self.paths[sent % len(self.paths)])))
                sent += 1
                await asyncio.sleep(max(0.0, started + sent / self.rate - time.monotonic()))
            await asyncio.gather(*pending)

    async def _get(self, session: aiohttp.ClientSession, path: str) -> None:
        try:
            async with session.get(path) as response:
                self.answers.append((response.status, await response.json()))
        except (aiohttp.ClientError, TimeoutError) as error:
            self.answers.append((0, {"error": repr(error)}))

    def versions_since(self, count: int) -> set:
        return {answer.get("model_version") for _, answer in self.answers[count:]}


def republished(registry: Registry, source: int, version: int, corrupt: bool = False) -> None:
    """Version `source`'s files as version `version`, made current; `corrupt` flips one byte of the
    served models after sealing, as a bad copy or disk would (Registry.publish would refuse such a bundle)."""
    staging = registry.staging(version)
    shutil.copytree(registry.path(source), staging, dirs_exist_ok=True)
    manifest = Manifest.model_validate_json((staging / MANIFEST).read_bytes())
    seal(staging, manifest.model_copy(update={"version": version, "parent_version": source}))
    if not corrupt:
        registry.publish(staging, version)
        return
    model = staging / SERVED_MODELS
    model.write_bytes(model.read_bytes()[:-1] + bytes([model.read_bytes()[-1] ^ 1]))
    staging.rename(registry.path(version))
    (registry.root / CURRENT).write_text(version_name(version) + "\n")


LIVE_USERS = [f"live-{n}" for n in range(12)]
LOAD_RATE = 20.0


def test_3_a_hot_swap_under_open_loop_load_answers_every_request_from_the_models(system):
    configured, base, _ = system
    registry = Registry(configured.settings.stack.models_dir)
    for n, user in enumerate(LIVE_USERS):
        call(base, "/v1/events", [click(user, f"i{7 * n + step}", 1_735_700_000_000 + step, step) for step in range(5)])
    for user in LIVE_USERS:
        applied(base, user, 5)
    live = registry.current()

    with OpenLoopLoad(base, [f"/v1/recommendations?user_id={user}&k=20" for user in LIVE_USERS], LOAD_RATE) as load:
        time.sleep(3)
        republished(registry, live, live + 1, corrupt=True)
        refused = wait_until(lambda: refusal(base, live + 1), 60, f"version {live + 1} refused")
        during_refusal = len(load.answers)
        time.sleep(3)
        still_live = call(base, "/v1/models")[1]["live_version"]
        republished(registry, live, live + 2)
        swapped_at = len(load.answers)
        wait_until(lambda: load.versions_since(swapped_at) >= {live + 2}, 60, f"version {live + 2} to serve")
        time.sleep(3)

    answers = load.answers
    assert len(answers) >= LOAD_RATE * 9  # at least 9 s of load, every request answered
    assert {status for status, _ in answers} == {200}, [a for a in answers if a[0] != 200][:3]
    assert [answer for _, answer in answers if answer["fallback"]] == []
    assert {answer["model_version"] for _, answer in answers} == {live, live + 2}
    assert load.versions_since(during_refusal) >= {live} and still_live == live
    assert "checksum mismatch" in refused["load_error"] and "checksum mismatch" in refused["refused"]["error"]


def refusal(base: str, version: int) -> dict | None:
    """/v1/models once the service has refused `version`: its load error and that version's entry."""
    _, models = call(base, "/v1/models")
    entry = next((v for v in models["versions"] if v["version"] == version), None)
    if models.get("load_error") and entry is not None and "error" in entry:
        return {"load_error": models["load_error"], "refused": entry}
    return None


def test_4_with_redis_stopped_the_service_answers_from_fallbacks(system, tmp_path):
    configured, _, _ = system
    redis = PrivateRedis(tmp_path / "redis")
    service, base = start_service(configured.with_env(KF_REDIS_PORT=str(redis.port)), tmp_path / "service.log")
    try:
        redis.stop()

        status, answer = call(base, "/v1/recommendations?user_id=fresh&k=5")
        ready_status, readiness = call(base, "/readyz")
    finally:
        service.stop()

    assert status == 200 and answer["fallback"] is True and answer["reason"].startswith("redis unavailable")
    assert len(answer["items"]) == 5
    assert ready_status == 503 and any(problem.startswith("redis") for problem in readiness["problems"])


def test_4_models_slower_than_their_budget_shed_the_request_to_fallbacks(system, tmp_path):
    configured, base, _ = system
    _, known = call(base, "/v1/users?limit=1")
    user = known["users"][0]
    no_time = configured.with_env(KF_MODEL_BUDGET_MS="0.001")  # no model call can answer in a microsecond
    service, shedding = start_service(no_time, tmp_path / "service.log")
    try:
        ranked_status, ranked = call(base, f"/v1/recommendations?user_id={user}&k=5")
        status, answer = call(shedding, f"/v1/recommendations?user_id={user}&k=5")
        _, unseen = call(shedding, "/v1/recommendations?user_id=seer&k=100&exclude_seen=true")
        metrics = metrics_text(shedding)
    finally:
        service.stop()

    assert ranked_status == 200 and ranked["fallback"] is False and ranked["reason"] is None
    assert status == 200 and answer["fallback"] is True and answer["reason"].startswith("models busy")
    assert len(answer["items"]) == 5 and 'kingfisher_fallbacks_total{reason="models busy"} 2.0' in metrics
    assert unseen["fallback"] is True and len(unseen["items"]) == 100
    assert not {item["item_id"] for item in unseen["items"]} & set(SEEN)  # the fallback leaves out the seen set too


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/v1/recommendations?k=5", None, "user_id: required"),
        ("/v1/recommendations?user_id=u1&k=0", None, "k: must be an integer from 1 to 200, got '0'"),
        ("/v1/recommendations?user_id=u1&k=x", None, "k: must be an integer from 1 to 200, got 'x'"),
        ("/v1/recommendations?user_id=a%20b", None, "user_id: must match"),
        ("/v1/recommendations?user_id=u1&explain=maybe", None, "explain: must be true or false"),
        (
            "/v1/events",
            {"event_id": "e", "user_id": "u", "item_id": "i", "type": "teleport", "ts": 1_735_700_000_000},
            "[0] type:",
        ),
        ("/v1/events", [7], "[0] $: an event must be a JSON object"),
        ("/v1/events", [{}] * 501, "body: one event or a list of 1 to 500, got 501"),
    ],
)
def test_5_invalid_input_gets_400_with_each_reason(system, path, body, reason):
    _, base, _ = system

    status, answer = call(base, path, body)

    assert status == 400 and answer["error"] == "bad request"
    assert any(text.startswith(reason) for text in answer["reasons"]), answer


def test_operator_routes_describe_the_service(system):
    _, base, _ = system

    _, document = call(base, "/openapi.json")
    _, models = call(base, "/v1/models")
    exposition = metrics_text(base)
    unauthorised = call(base, "/v1/admin/models/reload", {}, {"Authorization": "Bearer wrong"})
    reload = call(base, "/v1/admin/models/reload", {}, {"Authorization": "Bearer secret"})

    assert {"/v1/recommendations", "/v1/events", "/metrics"} <= document["paths"].keys()
    assert models["live_version"] == models["versions"][0]["version"] and "ndcg@10" in models["versions"][0]["metrics"]
    assert 'kingfisher_request_seconds_bucket{le="0.05",route="/v1/recommendations"}' in exposition
    assert 'kingfisher_stage_seconds_count{stage="ranking"}' in exposition
    assert 'kingfisher_gc_pause_seconds_count{generation="2"}' in exposition  # the full collection at model load
    assert unauthorised[0] == 401 and reload[0] == 200 and reload[1]["live_version"] == models["live_version"]


def test_7_fuzzed_requests_to_every_documented_route_get_no_5xx_and_every_4xx_says_why(system):
    configured, base, _ = system
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    # schemathesis' pytest plugin does not run under pytest 9: each operation is driven by Hypothesis here.
    for operation in operations:
        fuzz(operation, base)()
    _, document = call(base, "/openapi.json")
    documented = {(method.upper(), path) for path, methods in document["paths"].items() for method in methods}
    fuzzed = {(operation.method.upper(), operation.path) for operation in operations}
    assert documented == served_routes(configured.settings)
    assert fuzzed == documented - {("GET", "/openapi.json")}  # schemathesis leaves out the document it loaded


def fuzz(operation, base: str):
    """A Hypothesis test of one operation: valid and invalid requests, no 5xx, every 4xx a JSON reason."""
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @hypothesis.given(cases)
    @hypothesis.settings(max_examples=30, suppress_health_check=list(hypothesis.HealthCheck), database=None)
    def answers_sanely(case):
        response = case.call(base_url=base, headers={"Authorization": "Bearer secret"})
        label = operation.label
        assert response.status_code < 500, f"{label}: {response.status_code} {response.text[:500]}"
        if 400 <= response.status_code < 500:
            kind = response.headers.get("content-type", [""])[0]  # lowercase names, lists of values
            assert kind.startswith("application/json"), f"{label}: {response.status_code} {kind!r} {response.text}"
            assert response.json().get("error"), f"{label}: {response.text}"

    return answers_sanely


def served_routes(settings) -> set[tuple[str, str]]:
    """(method, path) of every API route the service's app registers (the page and its files aside)."""
    routes = init_app(settings).router.routes()
    served = {(route.method, route.resource.canonical) for route in routes if route.method != "HEAD"}
    return {(method, path) for method, path in served if path != "/" and not path.startswith("/static")}


# In-process tests: the app of `init_app` in this process with aiohttp's test client, a feature
# store in memory and the tiny bundle `system` trained; every route is called.

IN_PROCESS_EVENTS = [click("u1", f"i{n}", 1_735_700_000_000 + n * 60_000, n) for n in (1, 2, 3, 4, 5)]
IN_PROCESS_EVENTS.append(click("u2", "i6", 1_735_700_600_000, 6))


def in_process(system) -> tuple[Settings, MemoryFeatureStore, RecordingProducer, object]:
    settings = system[0].settings
    store, producer = (
        MemoryFeatureStore([validate_event(e) for e in IN_PROCESS_EVENTS], settings.pipeline.features),
        RecordingProducer(),
    )
    return (
        settings,
        store,
        producer,
        in_memory_resources(
            store, producer, LiveCatalogue([CatalogueItem(item_id="i1", title="Item one", updated_at=PUBLISHED)])
        ),
    )


def conforms(answer: dict, document: dict, name: str) -> None:
    jsonschema.validate(answer, {"$ref": f"#/components/schemas/{name}", "components": document["components"]})


async def json_of(response) -> tuple[int, dict]:
    return response.status, await response.json()


def test_in_process_recommendations_are_ranked_by_the_models_and_answer_as_documented(system):
    settings, store, _, resources = in_process(system)

    async def calls(client):
        ask = lambda **query: client.get("/v1/recommendations", params=query)  # noqa: E731
        known = await json_of(await ask(user_id="u1", k="5", exclude_seen="true", explain="true"))
        cold = await json_of(await ask(user_id="nobody", k="3"))
        bad = await json_of(await ask(user_id="u1", k="0", explain="maybe"))
        document = await (await client.get("/openapi.json")).json()
        store.down = True
        down = await json_of(await ask(user_id="u1", k="3"))
        return known, cold, bad, down, document

    (_, known), (_, cold), bad, (_, down), document = with_client(settings, resources, calls)

    assert (known["fallback"], known["reason"], known["model_version"]) == (
        False,
        None,
        Registry(settings.stack.models_dir).current(),
    )
    assert len(known["items"]) == 5 and not {item["item_id"] for item in known["items"]} & {
        "i1",
        "i2",
        "i3",
        "i4",
        "i5",
    }
    assert {reason["item_id"] for item in known["items"] for reason in item["reasons"]} <= {
        "i1",
        "i2",
        "i3",
        "i4",
        "i5",
    }
    assert any(item["reasons"] for item in known["items"])
    trending = [item_id for item_id, _ in store.trending_list.data.items]
    assert (cold["reason"], cold["fallback"], [item["item_id"] for item in cold["items"]]) == (
        "cold start",
        False,
        trending[:3],
    )
    reasons = ["k: must be an integer from 1 to 200, got '0'", "explain: must be true or false, got 'maybe'"]
    assert bad == (400, {"error": "bad request", "reasons": reasons})
    assert down["fallback"] and down["reason"].startswith("redis unavailable")
    for answer in (known, cold, down):
        conforms(answer, document, "Recommendations")
    conforms(bad[1], document, "BadRequestAnswer")


def test_in_process_a_request_is_ranked_at_the_streams_event_time_not_the_wall_clock(system):
    settings, _, _, resources = in_process(system)
    newest_event = max(event["ts"] for event in IN_PROCESS_EVENTS)

    async def calls(client):
        answer = await json_of(await client.get("/v1/recommendations", params={"user_id": "u1", "k": "20"}))
        state = await client.app[STORE].read("u1")
        at = lambda now_ms: RankRequest(  # noqa: E731
            "u1", state.behaviours, state.user_features, now_ms, list(state.trending.data.items), set(), 20,
            settings.pipeline.candidates, new_items=settings.pipeline.new_item_candidates,
            covisited=settings.pipeline.covisitation_candidates,
        )  # fmt: skip
        bundle = client.app[MODELS].bundle
        return answer, [rank_batch(bundle, [at(now)])[0] for now in (newest_event, int(time.time() * 1000))]

    (_, answer), (at_event_time, at_wall_clock) = with_client(settings, resources, calls)

    assert [item["item_id"] for item in answer["items"]] == [each.item_id for each in at_event_time.items]
    assert [item["score"] for item in answer["items"]] == pytest.approx([e.score for e in at_event_time.items], 1e-5)
    assert [each.score for each in at_event_time.items] != pytest.approx(
        [each.score for each in at_wall_clock.items], rel=1e-5
    )  # the behaviours' ages matter to these models, so the clock the answer used is seen


def test_in_process_similar_trending_users_and_profile_answer_from_the_bundle_and_the_store(system):
    settings, store, _, resources = in_process(system)

    async def calls(client):
        paths = ["/v1/items/i1/similar?k=3", "/v1/items/i999999/similar", "/v1/items/no%20such/similar",
                 "/v1/trending?k=2", "/v1/users?limit=5", "/v1/users/u1/profile", "/openapi.json"]  # fmt: skip
        answers = [await json_of(await client.get(path)) for path in paths]
        page = await client.get("/")
        return answers, page.status, page.content_type

    answers, page_status, page_type = with_client(settings, resources, calls)
    similar, unknown, invalid, trending, users, profile, (_, document) = answers

    assert (
        similar[0] == 200 and len(similar[1]["items"]) == 3 and "i1" not in {i["item_id"] for i in similar[1]["items"]}
    )
    assert unknown == (404, {"error": "unknown item i999999"}) and invalid[0] == 400
    stored = [[item_id, score] for item_id, score in store.trending_list.data.items[:2]]
    assert trending[0] == 200 and [[item["item_id"], item["score"]] for item in trending[1]["items"]] == stored
    assert users == (200, {"users": ["u1", "u2"]})
    assert [entry["item_id"] for entry in profile[1]["sequence"]] == ["i1", "i2", "i3", "i4", "i5"]
    assert profile[1]["sequence"][0]["title"] == "Item one" and profile[1]["namespace"] == settings.stack.namespace
    assert (page_status, page_type) == (200, "text/html")
    for answer in (similar[1], trending[1]):
        conforms(answer, document, "ItemList")


def film(item_id: str, title: str) -> CatalogueItem:
    return CatalogueItem(item_id=item_id, title=title, genres=["Comedy"], year=2020, updated_at=PUBLISHED)


def test_in_process_a_model_goes_live_with_the_catalogues_changes_since_its_training_and_follows_more(system):
    settings, store, producer, _ = in_process(system)
    catalogue = LiveCatalogue([film("late", "A late film"), film("gone", "A withdrawn film")])
    catalogue.apply(CatalogueChanges(withdrawn={"i2"}))
    resources = in_memory_resources(store, producer, catalogue)

    async def calls(client):
        similar = lambda item_id: client.get(f"/v1/items/{item_id}/similar?k=100")  # noqa: E731
        answers = [await json_of(await similar(item_id)) for item_id in ("late", "later", "i2")]
        await client.app[MODELS].apply(CatalogueChanges({"later": film("later", "A later film")}, {"late", "gone"}))
        answers += [await json_of(await similar(item_id)) for item_id in ("later", "late")]
        ranked = await json_of(await client.get("/v1/recommendations", params={"user_id": "u1", "k": "100"}))
        return answers, ranked, client.app[MODELS].bundle, await (await client.get("/metrics")).text()

    (late, later_before, withdrawn, later, late_after), ranked, bundle, metrics = with_client(
        settings, resources, calls
    )

    assert late[0] == 200 and "i2" not in {item["item_id"] for item in late[1]["items"]}
    assert later_before == (404, {"error": "unknown item later"}) and withdrawn[0] == 404
    assert later[0] == 200 and late_after[0] == 404 and bundle.added_items == 3
    assert not {"late", "gone", "i2"} & {item["item_id"] for item in later[1]["items"] + ranked[1]["items"]}
    assert bundle.withdrawn == {"late", "gone", "i2"} and len(ranked[1]["items"]) == 100
    assert 'kingfisher_catalogue_items{change="added"} 3.0' in metrics
    assert 'kingfisher_catalogue_items{change="withdrawn"} 3.0' in metrics


def test_in_process_events_are_acknowledged_all_or_none(system):
    settings, _, producer, resources = in_process(system)
    batch = [click("u9", "i1", 1_735_700_000_000, 90), click("u9", "i2", 1_735_700_060_000, 91)]

    async def calls(client):
        accepted = await json_of(await client.post("/v1/events", json=batch))
        refused = await json_of(await client.post("/v1/events", json=[batch[0], {"user_id": "u9"}]))
        producer.error = "broker down"
        unacknowledged = await json_of(await client.post("/v1/events", json=batch[0]))
        return accepted, refused, unacknowledged

    accepted, refused, unacknowledged = with_client(settings, resources, calls)

    assert accepted == (202, {"accepted": 2, "topic": settings.stack.topic_events})
    assert [orjson.loads(value)["event_id"] for _, _, value in producer.produced] == ["u9-90", "u9-91"]
    assert refused[0] == 400 and all(reason.startswith("[1]") for reason in refused[1]["reasons"])
    assert unacknowledged[0] == 503 and "broker down" in unacknowledged[1]["error"]


def test_in_process_operator_routes_and_the_document_list_every_route(system):
    settings, store, _, resources = in_process(system)

    async def calls(client):
        health, ready = await json_of(await client.get("/healthz")), await json_of(await client.get("/readyz"))
        models = await json_of(await client.get("/v1/models"))
        wrong = await client.post("/v1/admin/models/reload", headers={"Authorization": "Bearer wrong"})
        reload = await json_of(await client.post("/v1/admin/models/reload", headers={"Authorization": "Bearer secret"}))
        metrics = await (await client.get("/metrics")).text()
        document = await (await client.get("/openapi.json")).json()
        store.down = True
        unready = await json_of(await client.get("/readyz"))
        return health, ready, models, wrong.status, reload, metrics, document, unready

    health, ready, models, wrong, reload, metrics, document, unready = with_client(settings, resources, calls)

    assert health == (200, {"status": "ok"}) and ready[0] == 200 and ready[1]["ready"]
    assert models[1]["live_version"] == Registry(settings.stack.models_dir).current() == reload[1]["live_version"]
    assert (wrong, reload[0], reload[1]["swapped"]) == (401, 200, False)
    assert 'kingfisher_request_seconds_count{route="/healthz"}' in metrics
    assert unready == (
        503,
        {"ready": False, "model_version": models[1]["live_version"], "problems": ["redis: ConnectionError"]},
    )
    documented = {(method.upper(), path) for path, methods in document["paths"].items() for method in methods}
    assert documented == served_routes(settings)


def test_in_process_a_model_trained_with_another_feature_spec_than_the_streams_is_refused_until_they_agree(system):
    settings, store, _, resources = in_process(system)
    trained = Registry(settings.stack.models_dir).manifest(Registry(settings.stack.models_dir).current()).feature_spec
    store.spec = trained.model_copy(update={"sequence_length": trained.sequence_length + 1})
    admin = {"Authorization": "Bearer secret"}

    async def calls(client):
        refused = await json_of(await client.get("/v1/models"))
        answer = await json_of(await client.get("/v1/recommendations", params={"user_id": "u1", "k": "3"}))
        store.spec = trained
        reload = await json_of(await client.post("/v1/admin/models/reload", headers=admin))
        return refused, answer, reload

    (_, refused), (_, answer), (_, reload) = with_client(settings, resources, calls)

    assert refused["live_version"] is None
    assert f"sequence_length {trained.sequence_length} -> {trained.sequence_length + 1}" in refused["load_error"]
    assert answer["fallback"] and answer["model_version"] is None
    assert reload["swapped"] and reload["live_version"] == Registry(settings.stack.models_dir).current()


def test_in_process_an_experiment_answers_each_user_from_its_arm_reports_the_streams_counts_and_promotes(
    system, tmp_path
):
    shutil.copytree(system[2] / "models", tmp_path / "models")  # the experiment is written into the registry
    (tmp_path / "models" / EXPERIMENT).unlink(missing_ok=True)  # test_11's ended one: KF_EXPERIMENT applies
    current = Registry(tmp_path / "models").current()
    arms = [{"name": "champion", "share": 0.5}, {"name": "challenger", "version": current, "share": 0.5},
            {"name": "shadow", "version": current, "share": 1.0, "shadow": True}]  # fmt: skip
    settings = system[0].settings.updated(run_dir=tmp_path, experiment={"name": "ab", "arms": arms})
    experiment = settings.serving.experiment
    users = [f"u{n}" for n in range(1, 9)]
    answered_with = [("impression", "ab:champion:r1"), ("impression", "ab:champion:r1"), ("click", "ab:champion:r1"),
                     ("impression", "ab:challenger:r2")]  # fmt: skip
    shown = [
        {**click("u1", "i9", 1_735_700_900_000 + n, 100 + n), "type": kind, "context": {"request_id": request_id}}
        for n, (kind, request_id) in enumerate(answered_with)
    ]
    store = MemoryFeatureStore([validate_event(e) for e in IN_PROCESS_EVENTS + shown], settings.pipeline.features)
    resources = in_memory_resources(store, RecordingProducer(), LiveCatalogue([]))
    admin = {"Authorization": "Bearer secret"}

    async def calls(client):
        answers = [await json_of(await client.get("/v1/recommendations", params={"user_id": u})) for u in users]
        report = await json_of(await client.get("/v1/experiments"))
        metrics = await (await client.get("/metrics")).text()
        post = lambda body, headers=admin: client.post("/v1/admin/experiments", json=body, headers=headers)  # noqa: E731
        refused = [await json_of(await post({"name": "ab", "arms": arms[:1]})),
                   await json_of(await post({"name": "ab", "arms": [arms[0], {**arms[1], "version": 999}]})),
                   (await post({"name": "ab2", "arms": arms}, {})).status]  # fmt: skip
        started = await json_of(await post({"name": "ab2", "arms": arms}))
        (tmp_path / "models" / EXPERIMENT).unlink()
        (tmp_path / "models" / EXPERIMENT / "in-the-way").mkdir(parents=True)  # the registry cannot be written
        unwritable = await json_of(await post({"name": "ab3", "arms": arms}))
        still = (await json_of(await client.get("/v1/experiments")))[1]["experiment"]["name"]
        shutil.rmtree(tmp_path / "models" / EXPERIMENT)
        promote = lambda arm: client.post("/v1/admin/experiments/promote", json={"arm": arm}, headers=admin)  # noqa: E731
        unknown_arm = await json_of(await promote("nobody"))
        promoted = await json_of(await promote("challenger"))
        after = await json_of(await client.get("/v1/recommendations", params={"user_id": "u1"}))
        document = await (await client.get("/openapi.json")).json()
        return answers, report, metrics, refused, (started, unwritable, still), unknown_arm, promoted, after, document

    answers, report, metrics, refused, (started, unwritable, still), unknown_arm, promoted, after, document = (
        with_client(settings, resources, calls)
    )

    assert {answer["arm"] for _, answer in answers} == {"champion", "challenger"}  # 8 users, both arms
    for user, (status, answer) in zip(users, answers, strict=True):
        assert status == 200 and answer["arm"] == experiment.arm_of(user).name and answer["model_version"] == current
        attribution = attributed_arm(answer["request_id"])
        assert (attribution.experiment, attribution.arm) == ("ab", answer["arm"])
        # The shadow arm ranks every request the models rank (u1 and u2 have a history), with the same model here.
        ranked = answer["reason"] is None
        shown = {item_digest(item["item_id"]) for item in answer["items"]}
        assert attribution.shadows == ({"shadow": shown} if ranked else {}) and ranked == (user in ("u1", "u2"))
        conforms(answer, document, "Recommendations")
    assert len({answer["request_id"] for _, answer in answers}) == len(users)
    champion, challenger, shadow = report[1]["experiment"]["arms"]
    assert (shadow["shadow"], shadow["clicks"], shadow["would_have_shown"], shadow["ctr"]) == (True, 0, 0, None)
    assert (champion["impressions"], champion["clicks"], challenger["impressions"], challenger["clicks"]) == (
        2,
        1,
        1,
        0,
    )
    assert champion["ctr"] == 0.5 and champion["ctr_interval"][0] < 0.5 < champion["ctr_interval"][1]
    conforms(report[1], document, "ExperimentAnswer")
    answered = sum(
        f'kingfisher_experiment_answers_total{{arm="{arm}",experiment="ab"}}' in metrics
        for arm in ("champion", "challenger")
    )
    assert answered == 2
    assert refused[0][0] == 400 and "arms: Tuple should have at least 2 items" in refused[0][1]["reasons"][0]
    assert refused[1][0] == 400 and "version 999 does not load" in refused[1][1]["reasons"][0]
    assert refused[2] == 401
    assert started[0] == 200 and started[1]["experiment"]["name"] == "ab2"
    assert unwritable[0] == 503 and "not writable" in unwritable[1]["error"] and still == "ab2"
    assert unknown_arm[0] == 400
    assert promoted == (200, {"promoted": "challenger", "live_version": current})
    assert (after[1]["arm"], attributed_arm(after[1]["request_id"]), after[1]["model_version"]) == (None, None, current)
    assert Registry(tmp_path / "models").experiment(experiment) is None  # ended for every worker, KF_EXPERIMENT too


def request_counts(families) -> float:
    samples = [sample for family in families for sample in family.samples]
    counts = [
        s for s in samples if s.name == "kingfisher_request_seconds_count" and s.labels["route"] == "/v1/trending"
    ]
    return sum(sample.value for sample in counts)


def counted_by(metrics_dir: Path, pid: int, scratch: Path) -> float:
    """The trending requests one worker counted: its own value files, read as Prometheus reads all of them."""
    scratch.mkdir()
    for db in metrics_dir.glob(f"*_{pid}.db"):
        shutil.copy(db, scratch)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(scratch))
    return request_counts(registry.collect())


def live_versions(base: str) -> dict[str, float]:
    """pid -> the model version that worker serves, from the shared /metrics."""
    return {sample.labels["pid"]: sample.value for family in text_string_to_metric_families(metrics_text(base))
            for sample in family.samples if sample.name == "kingfisher_model_version"}  # fmt: skip


def test_9_worker_processes_share_the_port_swap_models_each_and_count_metrics_together(system, tmp_path):
    configured, _, run_dir = system
    shutil.copytree(run_dir / "models", tmp_path / "models")
    workers = configured.with_env(KF_RUN_DIR=str(tmp_path), KF_SERVE_WORKERS="2")
    registry = Registry(workers.settings.stack.models_dir)
    service, base = start_service(workers, tmp_path / "service.log")
    supervisor = psutil.Process(service.process.pid)
    metrics_dir = tmp_path / "prometheus" / f"serve-{base.rsplit(':', 1)[1]}"
    try:
        current = registry.current()
        wait_until(lambda: list(live_versions(base).values()) == [current, current], START_TIMEOUT_S, "both workers")
        pids = sorted(child.pid for child in supervisor.children())
        answers = [call(base, "/v1/trending?k=3")[0] for _ in range(200)]  # a new connection each
        total = request_counts(text_string_to_metric_families(metrics_text(base)))
        each = [counted_by(metrics_dir, pid, tmp_path / f"worker-{pid}") for pid in pids]

        republished(registry, current, current + 1)
        wait_until(lambda: list(live_versions(base).values()) == [current + 1] * 2, 60, "both workers to swap")
        os.kill(pids[0], signal.SIGKILL)
        psutil.Process(pids[0]).wait(10)  # connections queued on its socket at that moment were reset
        during = [call(base, "/v1/trending?k=3")[0] for _ in range(20)]  # while its replacement starts
        wait_until(
            lambda: len(live_versions(base)) == 2 and str(pids[0]) not in live_versions(base), 120, "a new worker"
        )
        replacement = sorted(child.pid for child in supervisor.children())
    finally:
        service.stop()

    assert answers == [200] * 200 and total == 200
    assert sum(each) == 200 and min(each) > 0  # both workers answered, and /metrics summed them
    assert during == [200] * 20 and pids[1] in replacement and pids[0] not in replacement and len(replacement) == 2


AB_USERS, AB_ROUNDS, AB_K = 60, 2, 10
AB_REQUIRED_POWER = 0.99


def reversed_copy(registry: Registry, source: int, version: int) -> None:
    """Version `source` as version `version`, not made current, with its user vectors and its ranker's
    logits negated: a deliberately worse model (a sign bug), which retrieves the items farthest from
    the user and ranks the least likely first."""
    staging = registry.staging(version)
    shutil.copytree(registry.path(source), staging, dirs_exist_ok=True)
    models = read_served_models(staging)
    for model, name in [
        ("user_tower", "norm/gamma"),
        ("user_tower", "norm/beta"),
        ("ranker", "next_logit/kernel"),
        ("ranker", "next_logit/bias"),
        ("ranker", "like_logit/kernel"),
        ("ranker", "like_logit/bias"),
    ]:
        models[model][name] = -models[model][name]  # fmt: skip
    write_served_models(staging, models)
    manifest = Manifest.model_validate_json((staging / MANIFEST).read_bytes())
    seal(staging, manifest.model_copy(update={"version": version, "parent_version": source}))
    staging.rename(registry.path(version))


def test_13_simulated_users_clicking_by_the_worlds_true_probabilities_find_a_worse_challenger_worse(system):
    """The synthetic world's users, with histories of their interests, ask the real service and click
    what it shows with the world's click probabilities; the stream's counts must show the reversed
    challenger's CTR significantly lower (its 95 % interval of the difference below 0). The power of
    that check, from the true probabilities of what each arm showed, is asserted first."""
    _, base, run_dir = system
    registry, world = Registry(run_dir / "models"), SyntheticWorld(WorldSpec(seed=7))
    current, worse = registry.current(), registry.next_version()
    reversed_copy(registry, current, worse)
    arms = [{"name": "champion", "share": 0.5}, {"name": "reversed", "version": worse, "share": 0.5}]
    admin, rng = {"Authorization": "Bearer secret"}, np.random.default_rng(11)
    users = [f"u{n}" for n in range(AB_USERS)]
    for n, user in enumerate(users):  # five clicks on items of the user's interests, a day before
        liked = np.flatnonzero(world.item_genres[:, world.user_interests[n]].any(axis=1))
        history = [click(user, f"i{item}", 1_735_600_000_000 + step, 2000 + step)
                   for step, item in enumerate(rng.choice(liked, 5, replace=False))]  # fmt: skip
        assert call(base, "/v1/events", history)[0] == 202
    for user in users:
        applied(base, user, 5)
    assert call(base, "/v1/admin/experiments", {"name": "worse", "arms": arms}, admin)[0] == 200
    published = {"champion": [0, 0], "reversed": [0, 0]}
    truth: dict[str, list[float]] = {"champion": [], "reversed": []}
    try:
        for round_number in range(AB_ROUNDS):
            for n, user in enumerate(users):
                _, answer = call(base, f"/v1/recommendations?user_id={user}&k={AB_K}")
                shown = [item["item_id"] for item in answer["items"] if item["item_id"].removeprefix("i").isdigit()]
                chance = world.click_probability(n, np.array([int(i[1:]) for i in shown]), np.arange(len(shown)))
                clicked = rng.random(len(shown)) < chance
                context = {"request_id": answer["request_id"]}
                ts, stem = 1_735_700_000_000 + round_number * 1000, f"{user}-ab{round_number}"
                events = [{"event_id": f"{stem}-{kind}{p}", "user_id": user, "item_id": item, "type": kind,
                           "ts": ts + p, "context": context}
                          for p, item in enumerate(shown)
                          for kind in ("impression", *(["click"] if clicked[p] else []))]  # fmt: skip
                assert call(base, "/v1/events", events)[0] == 202
                published[answer["arm"]][0] += len(shown)
                published[answer["arm"]][1] += int(clicked.sum())
                truth[answer["arm"]] += chance.tolist()

        report = tallies_reached(base, published)
    finally:
        assert call(base, "/v1/admin/experiments", headers=admin, method="DELETE")[0] == 200

    (p1, n1), (p2, n2) = [(float(np.mean(truth[arm])), len(truth[arm])) for arm in ("champion", "reversed")]
    spread = np.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    power = float(NormalDist().cdf((p1 - p2) / spread - Z_95))  # of a one-sided 2.5 % test, at the true CTRs
    print(f"true CTR champion {p1:.3f} (n={n1}), reversed {p2:.3f} (n={n2}): power {power:.4f}; "
          f"observed {report['arms'][0]['ctr']:.3f} vs {report['arms'][1]['ctr']:.3f}, "
          f"difference interval {report['arms'][1]['difference_interval']}")  # fmt: skip
    assert power >= AB_REQUIRED_POWER
    assert report["arms"][1]["difference_interval"][1] < 0
