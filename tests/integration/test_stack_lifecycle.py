"""`infra/stack.py` (behind `make up`, `make down`, `make status`) on a second, private stack."""

import socket

import psutil
import pytest

from tests.conftest import Stack, settings_of, stack_environment


@pytest.fixture
def private_stack(tmp_path) -> Stack:
    env = stack_environment(tmp_path / "run")
    return Stack(settings_of(env), env)


def stack_pids(stack: Stack) -> dict[str, int]:
    pid_files = stack.settings.stack.run_dir.glob("*/*.pid")
    return {path.stem: int(path.read_text().split()[0]) for path in pid_files}


def test_up_is_idempotent_and_down_leaves_no_process(private_stack: Stack):
    first = private_stack.run("infra/stack.py", "up")
    assert first.returncode == 0, first.stderr
    pids = stack_pids(private_stack)
    try:
        second = private_stack.run("infra/stack.py", "up")
        status = private_stack.run("infra/stack.py", "status")

        assert second.returncode == 0, second.stderr
        assert second.stderr.count("already running") == 2
        assert "topics: all present" in second.stderr
        assert stack_pids(private_stack) == pids
        assert status.returncode == 0
        assert status.stdout.count("ready") == 2
    finally:
        down = private_stack.run("infra/stack.py", "down")

    assert down.returncode == 0
    assert set(pids) == {"kafka", "redis"}
    assert not any(psutil.pid_exists(pid) for pid in pids.values())
    assert private_stack.run("infra/stack.py", "status").returncode == 1
    # Kafka, Redis and the three programs `make demo` starts.
    assert private_stack.run("infra/stack.py", "down").stderr.count("not running") == 5


def test_a_port_in_use_is_named_with_the_remedy_and_nothing_starts(private_stack: Stack):
    port = private_stack.settings.stack.kafka_controller_port
    with socket.socket() as squatter:
        squatter.bind((private_stack.settings.stack.bind_host, port))
        squatter.listen()
        result = private_stack.run("infra/stack.py", "up")

    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert f"port {port} (kafka_controller_port)" in message
    assert "KF_KAFKA_CONTROLLER_PORT=<port> make up" in message
    assert stack_pids(private_stack) == {}


def test_a_service_that_dies_while_starting_is_reported_with_its_log(private_stack: Stack):
    broken = Stack(private_stack.settings, private_stack.env | {"KF_REDIS_MAXMEMORY_POLICY": "no-such-policy"})

    result = broken.run("infra/stack.py", "up")

    message = " ".join(result.stderr.split())
    assert result.returncode == 1
    assert "redis exited with code 1 while starting; see" in message
    assert str(broken.settings.stack.logs_dir.resolve() / "redis.log") in message.replace(" ", "")
    assert "maxmemory-policy" in message
    assert stack_pids(broken) == {}
