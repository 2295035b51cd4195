"""Training on tiny data end to end: real TensorFlow, Faiss, Kafka announcements, bundles on disk."""

import shutil
import signal
import subprocess
import sys
import time

import orjson
import pytest

from schemas import sample_log
from schemas.bundle import RANKER, REPORT, Registry
from schemas.sources.synthetic import SyntheticWorld, WorldSpec
from tests.conftest import REPO_ROOT, Stack, consume_all
from tests.integration.test_feature_job import new_topic_named, publish
from tests.operator_harness import write_sample_log
from training.pipeline import TrainingRun
from training.sources import Source, load

TINY = {"KF_TRAIN_EPOCHS": "1", "KF_TRAIN_BATCH_SIZE": "128", "KF_EVAL_MAX_QUERIES": "200"}
SCHEDULER_TIMEOUT_S = 420
LOAD_AND_SCORE = """
import sys, numpy as np
from schemas.bundle import LoadedBundle
bundle = LoadedBundle(__import__("pathlib").Path(sys.argv[1]), 50_000)
length = bundle.manifest.feature_spec.sequence_length
sequence = np.zeros((1, length), np.int32); sequence[0, -2:] = [2, 3]
kinds = np.zeros((1, length), np.int32); kinds[0, -2:] = 2
vectors = bundle.user_vectors(sequence, kinds, np.zeros((1, 3), np.float32))
_, ids = bundle.index.search(vectors, 20)
candidates = bundle.vocabulary.item_indices(ids[0])[None, :]
scores, attention = bundle.score(sequence, kinds, candidates, np.zeros((1, 3), np.float32), np.array([9], np.int32))
print(bundle.version, scores.shape, attention.shape, float(attention[0, :, :-2].max()), float(scores.min()))
"""

COMPILED_EQUALS_PLAIN = """
import sys, numpy as np
from pathlib import Path
from schemas.bundle import LoadedBundle
plain, compiled = (LoadedBundle(Path(sys.argv[1]), 50_000, compiled=flag) for flag in (False, True))
length, items = plain.manifest.feature_spec.sequence_length, 2 + len(plain.vocabulary.item_ids)
rng = np.random.default_rng(0)
sequence, kinds = rng.integers(2, items, (5, length)).astype(np.int32), np.full((5, length), 2, np.int32)
features, hour = rng.random((5, 3)).astype(np.float32), np.array([9, 13, 22, 0, 23], np.int32)
candidates = rng.integers(2, items, (5, 70)).astype(np.int32)  # compiled: padded to 8 x 128, then cut
outputs = [
    (*bundle.score(sequence, kinds, candidates, features, hour), bundle.user_vectors(sequence, kinds, features))
    for bundle in (plain, compiled)
]
print(outputs[1][0].shape, outputs[1][1].shape, max(np.abs(a - b).max() for a, b in zip(*outputs)))
"""

SYNTHETIC_EVENTS = "4000"


def trainer(stack: Stack, run_dir, **settings: str) -> Stack:
    return stack.with_env(KF_RUN_DIR=str(run_dir), **TINY, **settings)


def train_tiny(stack: Stack, *options: str):
    """One `python -m training` run on a small synthetic world."""
    return stack.run(
        "-m",
        "training",
        "--source",
        "synthetic",
        "--synthetic-events",
        SYNTHETIC_EVENTS,
        "--no-progress",
        *options,
        timeout=600,
    )


@pytest.fixture(scope="module")
def published(stack: Stack, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("training")
    configured = trainer(stack, run_dir)
    result = train_tiny(configured)
    return configured, run_dir, result


def test_the_trainer_publishes_a_verified_bundle_with_its_report_and_announces_it(published):
    stack, run_dir, result = published
    registry = Registry(run_dir / "models")

    assert result.returncode == 0, result.stderr[-3000:]
    assert registry.current() == 1
    report = orjson.loads((registry.path(1) / REPORT / "report.json").read_bytes())
    assert {"DIN", "Embedding+MLP"} <= report["rankers"].keys()
    assert {"popularity", "item co-occurrence", "two-tower", "two-tower + DIN"} <= report["pipelines"].keys()
    assert 0.0 <= report["pipelines"]["two-tower + DIN"]["recall@50"] <= 1.0
    assert all((registry.path(1) / REPORT / name).stat().st_size > 0 for name in ("report.md", "pipelines.png"))
    announced = [orjson.loads(m.value()) for m in consume_all(stack, stack.settings.topic_model_updates, expected=1)]
    assert any(update["version"] == 1 and update["path"] == str(registry.path(1)) for update in announced)


def test_a_published_bundle_loads_and_scores_in_a_fresh_process(published):
    stack, run_dir, _ = published

    loaded = stack.run("-c", LOAD_AND_SCORE, str(Registry(run_dir / "models").path(1)))

    assert loaded.returncode == 0, loaded.stderr[-3000:]
    version, *_, padding_attention, lowest_score = loaded.stdout.split()
    assert version == "1" and "(1, 20) (1, 20, 50)" in loaded.stdout
    assert float(padding_attention) == 0.0 and float(lowest_score) >= 0.0


def test_compiled_calls_pad_rows_and_candidates_and_equal_the_plain_signatures(published):
    stack, run_dir, _ = published

    compared = stack.run("-c", COMPILED_EQUALS_PLAIN, str(Registry(run_dir / "models").path(1)))

    assert compared.returncode == 0, compared.stderr[-3000:]
    *shapes, difference = compared.stdout.split("\n")[-2].rsplit(" ", 1)
    assert shapes == ["(5, 70) (5, 70, 50)"] and float(difference) < 1e-5


def test_a_bundle_with_one_corrupted_file_is_refused_with_a_clear_error(published, tmp_path):
    stack, run_dir, _ = published
    copy = tmp_path / "v000001"
    shutil.copytree(Registry(run_dir / "models").path(1), copy)
    model = copy / RANKER / "saved_model.pb"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")

    loaded = stack.run("-c", LOAD_AND_SCORE, str(copy))

    assert loaded.returncode != 0
    assert f"BundleError: {model}: checksum mismatch" in loaded.stderr


def test_the_gate_refuses_a_worse_model_unless_forced(published):
    stack, _, _ = published
    run = TrainingRun(stack.settings, load(stack.settings, Source.SYNTHETIC, int(SYNTHETIC_EVENTS)))
    run.prepare()

    refused, why = run.gate({"gauc": 0.0, "recall@50": 0.0}, force=False)
    forced, why_forced = run.gate({"gauc": 0.0, "recall@50": 0.0}, force=True)

    assert not refused and why.startswith("refused: gauc 0.0000 < live v1's")
    assert forced and why_forced.startswith("published with --force although gauc 0.0000")


def test_the_scheduler_survives_a_failed_run_and_publishes_warm_started_versions(stack: Stack, tmp_path):
    world = SyntheticWorld(WorldSpec(seed=11))
    items_topic = new_topic_named(stack, "items", partitions=1)
    publish(stack, items_topic, [(item.kafka_key, item.to_json()) for item in world.catalogue(1_735_689_600_000)])
    configured = trainer(stack, tmp_path, KF_TOPIC_ITEMS=items_topic, KF_GATE_MARGIN="1.0")
    registry, log = Registry(tmp_path / "models"), tmp_path / "scheduler.log"

    with log.open("w") as output:
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "training.scheduler", "--every", "1s", "--no-progress"],
            env=configured.env,
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + SCHEDULER_TIMEOUT_S
            while "training run failed" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.5)
            directory = sample_log.log_directory(configured.settings.samples_dir, configured.settings.namespace)
            write_sample_log(directory, list(world.events(4000)), configured.settings)
            while len(registry.versions()) < 2 and time.monotonic() < deadline and scheduler.poll() is None:
                time.sleep(1)
        finally:
            scheduler.send_signal(signal.SIGTERM)
            scheduler.wait(timeout=300)

    text = log.read_text()
    # SIGTERM lets a run in progress finish, so a third version may have come in meanwhile.
    assert registry.versions()[:2] == [1, 2] and registry.current() == registry.versions()[-1], text[-3000:]
    assert "too little data" in text and "warm start from version 1" in text
    assert scheduler.returncode == 0
