"""The integration tests' port picking: two pytest-xdist workers, each starting its own stack,
must never hand out the same port, or one worker's server takes a port the other already chose."""

import pytest

from tests import conftest
from tests.conftest import free_cluster_ports, free_port


def ports_of_worker(monkeypatch: pytest.MonkeyPatch, worker: str, pick, count: int) -> set[int]:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setattr(conftest, "HANDED_OUT", set())  # each worker is a process of its own
    return {pick() for _ in range(count)}


def test_two_workers_never_pick_the_same_service_port(monkeypatch):
    first = ports_of_worker(monkeypatch, "gw0", free_port, 300)
    second = ports_of_worker(monkeypatch, "gw1", free_port, 300)
    assert first and second and not first & second


def test_two_workers_never_pick_overlapping_cluster_ports(monkeypatch):
    masters = 3
    spans = [
        {
            port
            for base in ports_of_worker(monkeypatch, worker, lambda: free_cluster_ports(masters), 100)
            for port in range(base, base + masters)
        }
        for worker in ("gw0", "gw1")
    ]
    assert not spans[0] & spans[1]


@pytest.mark.parametrize(("worker", "pick"), [("gw0", max), ("gw1", min)])
def test_a_cluster_span_at_the_edge_of_a_workers_share_stays_inside_it(monkeypatch, worker, pick):
    """Worker 0 at the top of its share and worker 1 at the bottom of its own: their spans of three
    ports must not meet."""
    monkeypatch.setattr(conftest.random, "choice", pick)
    base = ports_of_worker(monkeypatch, worker, lambda: free_cluster_ports(3), 1).pop()
    share = conftest.this_workers_share(range(10_000, 16_000))

    assert base in share and base + 2 in share
