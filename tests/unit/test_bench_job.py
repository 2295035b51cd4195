import signal
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

from infra.benches.stream import Job, shares, thread_cpu_seconds

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def running(command: list[str]) -> Job:
    """A stream bench Job around `command` in a session of its own, as the bench starts the feature job."""
    job = Job.__new__(Job)
    job.process = subprocess.Popen(command, start_new_session=True)
    return job


def test_the_stream_benchs_job_stops_with_sigterm_and_is_killed_with_sigkill():
    stopped, killed = running(SLEEPER), running(SLEEPER)

    stopped.stop()
    killed.kill()

    assert stopped.process.returncode == -signal.SIGTERM
    assert killed.process.returncode == -signal.SIGKILL
    stopped.stop()  # stopping a job that ended does nothing
    assert stopped.process.returncode == -signal.SIGTERM


def test_the_jobs_cpu_is_split_by_thread_name_with_a_pools_threads_as_one(tmp_path):
    names = {1: "user-features -", 2: "GC Thread#0", 3: "GC Thread#1"}
    for tid, name in names.items():
        (tmp_path / "77" / "task" / str(tid)).mkdir(parents=True)
        (tmp_path / "77" / "task" / str(tid) / "comm").write_text(f"{name}\n")
    cpu = {1: (1.5, 0.5), 2: (0.25, 0.0), 3: (0.5, 0.25), 4: (9.0, 0.0)}
    threads = [SimpleNamespace(id=tid, user_time=user, system_time=system) for tid, (user, system) in cpu.items()]
    process = SimpleNamespace(pid=77, threads=lambda: threads)  # thread 4 ended before its name was read

    seconds = thread_cpu_seconds(process, proc=tmp_path)

    assert seconds == {"user-features -": 2.0, "GC Thread#N": 1.0}
    assert shares(seconds) == {"user-features -": 2 / 3, "GC Thread#N": 1 / 3}
    assert shares(seconds, top=1) == {"user-features -": 2 / 3} and shares(Counter()) == {}
