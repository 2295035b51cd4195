from schemas.config import Settings
from streams.replay import ReplayPlan, job_command

PLAN = ReplayPlan("events", "rebuilt", "kingfisher-features-rebuilt", {0: 0}, {0: 10})


def test_the_replay_job_gathers_batches_for_kf_replay_batch_ms_however_the_live_jobs_are_set(monkeypatch):
    for name, value in {
        "KF_STREAM__STREAM_BATCH_MS": "50",
        "KF_STREAM_BATCH_MS": "60",
        "KF_REPLAY_BATCH_MS": "4000",
    }.items():
        monkeypatch.setenv(name, value)

    command, env = job_command(Settings(), PLAN, 1_735_700_000_000)

    for name, value in env.items():  # the job's own settings: what it reads from the environment it is given
        monkeypatch.setenv(name, value)
    assert Settings().stream.stream_batch_ms == 4000
    assert command[-8:] == ["rebuilt", "--topic", "events", "--bounded", "--fresh", "--no-samples",
                            "--from-timestamp", "1735700000000"]  # fmt: skip
