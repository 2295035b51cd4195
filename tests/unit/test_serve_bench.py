"""bench-serve's CPU accounting: a process's event-loop share is its main thread's CPU time."""

import subprocess
import sys
import textwrap

import pytest

from infra.benches.serve import ServiceCpu, service_cpu

# A stand-in for the service: one thread spends 0.2 s of CPU and ends, another spends 0.3 s and
# waits, alive, for the test to end, and the main thread spends 0.1 s, so whatever is read
# afterwards holds exactly those amounts (and the interpreter's start).
BURNER = textwrap.dedent("""
    import sys, threading, time

    def burn(seconds):
        start = time.thread_time()
        while time.thread_time() - start < seconds:
            pass

    def burn_then_wait():
        burn(0.3)
        burnt.set()
        sys.stdin.readline()

    burnt = threading.Event()
    ended = threading.Thread(target=burn, args=(0.2,))
    ended.start()
    ended.join()
    threading.Thread(target=burn_then_wait).start()
    burn(0.1)
    burnt.wait()
    print("burnt", flush=True)
""")


@pytest.fixture
def burner():
    process = subprocess.Popen([sys.executable, "-c", BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "burnt\n"
        yield process
    finally:
        process.communicate("done\n", timeout=10)


def test_the_event_loop_share_is_the_main_threads_cpu_and_the_total_counts_every_thread(burner):
    cpu = service_cpu(burner)
    # /proc charges CPU by the clock tick (10 ms), to the thread found running at it: a few ticks either way.
    assert 0.08 <= cpu.loop_s < 0.3  # the main thread's 0.1 s, plus the interpreter's start
    assert cpu.total_s - cpu.loop_s >= 0.45  # the other threads' 0.5 s: the live one's and the ended one's


def test_a_difference_of_readings_is_what_was_spent_between_them():
    spent = ServiceCpu(total_s=5.0, loop_s=2.0) - ServiceCpu(total_s=1.5, loop_s=0.5)
    assert spent == ServiceCpu(total_s=3.5, loop_s=1.5)
