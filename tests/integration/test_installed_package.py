"""What users install: the wheel, in a fresh virtualenv of the locked dependencies, run from outside
the checkout (as infra/kubernetes/Dockerfile installs it), against the test stack."""

import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis

from schemas.redis_format import KeyKind, decode_value, redis_key
from schemas.runtime.streaming import fold_stream
from tests.conftest import REPO_ROOT, Stack, free_port
from tests.event_streams import messy_stream
from tests.integration.test_feature_job import JOB_TIMEOUT_S, new_topic_named, publish
from tests.integration.test_serving import call, wait_until

UV = Path(sys.executable).parent / "uv"
PROGRAMS = [["-m", "serving"], ["-m", "streams.feature_job"], ["-m", "training"], ["-m", "training.scheduler"]]
START_TIMEOUT_S = 120


def run(command: list, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def installed(stack: Stack, tmp_path_factory) -> tuple[Path, Path, dict]:
    """(the virtualenv's python, a working directory outside the checkout, the stack's environment
    without anything that points into the checkout)."""
    root = tmp_path_factory.mktemp("installed")
    # LOG4J_PROPERTIES: the checkout's job logging, once a test in this process built a Flink environment.
    checkout_paths = ("PYTHONPATH", "VIRTUAL_ENV", "LOG4J_PROPERTIES")
    env = {name: value for name, value in stack.env.items() if name not in checkout_paths}
    # Relative defaults (the jars) would resolve against the working directory, which is not the checkout.
    env |= {"KF_JARS_DIR": str(stack.settings.stack.jars_dir.resolve()), "UV_NATIVE_TLS": "1"}
    # From the source distribution (uv builds the wheel from it), so no build/ left in the checkout can leak in;
    # nor the egg-info of an earlier build, whose SOURCES.txt setuptools would add to the distribution.
    shutil.rmtree(REPO_ROOT / "kingfisher.egg-info", ignore_errors=True)
    built = run([UV, "build", "--out-dir", root / "dist", REPO_ROOT], root, env)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (root / "dist").glob("kingfisher-*.whl")
    venv = root / "venv"
    steps = [
        [UV, "venv", "--quiet", "--python", sys._base_executable, venv],
        [UV, "pip", "sync", "--quiet", "--compile-bytecode", "--python", venv / "bin" / "python", "--require-hashes",
         REPO_ROOT / "requirements.lock"],
        [UV, "pip", "install", "--quiet", "--python", venv / "bin" / "python", "--no-deps", wheel],
    ]  # fmt: skip
    for step in steps:
        done = run(step, root, env)
        assert done.returncode == 0, f"{step}: {done.stderr[-3000:]}"
    workdir = root / "work"
    workdir.mkdir()
    return venv / "bin" / "python", workdir, env


def test_the_installed_modules_come_from_the_wheel_not_the_checkout(installed):
    python, workdir, env = installed
    where = run([python, "-c", "import schemas.runtime, serving, streams, training; print(schemas.runtime.__file__)"],
                workdir, env)  # fmt: skip

    assert where.returncode == 0, where.stderr
    assert "site-packages" in where.stdout and str(REPO_ROOT) not in where.stdout


LIST_MODULES = """
import importlib.util, pkgutil, schemas, serving, streams, training
print(importlib.util.find_spec("infra"))
for package in (schemas, serving, streams, training):
    print(*(module.name for module in pkgutil.walk_packages(package.__path__, package.__name__ + ".")))
"""


def test_the_wheel_ships_the_product_and_none_of_the_benchmarks(installed):
    python, workdir, env = installed
    listed = run([python, "-c", LIST_MODULES], workdir, env)

    assert listed.returncode == 0, listed.stderr[-3000:]
    infra, *modules = listed.stdout.split()
    assert infra == "None" and {"schemas.runtime.feature_store", "streams.feature_job", "serving.app"} <= set(modules)
    assert [module for module in modules if any(word in module for word in ("bench", "soak", "smoke"))] == []


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda program: program[-1])
def test_every_program_of_the_wheel_answers_help(installed, program):
    python, workdir, env = installed
    helped = run([python, *program, "--help"], workdir, env)

    assert helped.returncode == 0, helped.stderr[-3000:]
    assert "usage:" in helped.stdout


def test_the_installed_console_script_answers_help(installed):
    python, workdir, env = installed
    helped = run([python.parent / "kingfisher", "--help"], workdir, env)

    assert helped.returncode == 0, helped.stderr[-3000:]
    assert "usage:" in helped.stdout


def test_the_installed_feature_job_writes_what_the_feature_functions_compute(installed, stack: Stack, tmp_path):
    python, workdir, env = installed
    env = env | {"KF_RUN_DIR": str(tmp_path)}
    topic = new_topic_named(stack, "installed")
    events = messy_stream(seed=5, count=300)
    publish(stack, topic, [(event.kafka_key, event.to_json()) for event in events])
    job = run([python, "-m", "streams.feature_job", "--topic", topic, "--namespace", "installed", "--bounded",
               "--fresh", "--no-samples"], workdir, env, timeout=JOB_TIMEOUT_S)  # fmt: skip
    users, _, _ = fold_stream(events, stack.settings.pipeline.features)
    client = redis.Redis(host=stack.settings.stack.bind_host, port=stack.settings.stack.redis_port)
    keys = {user_id: redis_key(KeyKind.USER_SEQUENCE, user_id, "installed") for user_id in users}
    stored = {user: decode_value(KeyKind.USER_SEQUENCE, client.hget(key, "value")).data for user, key in keys.items()}

    assert job.returncode == 0, job.stderr[-3000:]
    assert stored == {user_id: state.sequence for user_id, state in users.items()}
    # Flink's log, through the logging configuration the wheel ships (without it: no file at all)
    flink_logs = "".join(path.read_text() for path in (tmp_path / "logs").glob("flink-*.log"))
    assert "org.apache.flink.runtime" in flink_logs


def test_the_installed_service_serves_its_page_and_answers_without_a_model(installed, stack: Stack, tmp_path):
    python, workdir, env = installed
    port = free_port()
    env = env | {"KF_RUN_DIR": str(tmp_path)}
    with (tmp_path / "service.log").open("w") as log:
        service = subprocess.Popen([python, "-m", "serving", "--port", str(port)], cwd=workdir, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(base, service), START_TIMEOUT_S, "the installed service to answer")
        page, recommendations, served_script = (
            _get(base + path) for path in ("/", "/v1/recommendations?user_id=someone&k=3", "/static/app.js")
        )
    finally:
        service.terminate()
        service.wait(timeout=60)

    assert b"<html" in page.lower(), (tmp_path / "service.log").read_text()[-3000:]
    assert served_script == (REPO_ROOT / "serving" / "web" / "app.js").read_bytes()
    assert b'"reason":"no model loaded"' in recommendations


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read()


def _answers(base: str, process: subprocess.Popen) -> bool:
    assert process.poll() is None, "the installed service exited"
    try:
        return call(base, "/healthz")[0] == 200
    except OSError:
        return False
