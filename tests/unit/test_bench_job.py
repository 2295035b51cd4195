import signal
import subprocess
import sys

from infra.benches.stream import Job

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
