import os

from schemas.config import Settings
from streams.flink_env import checkpoint_uri, latest_checkpoint, local_directory, restore_location


def test_the_newest_complete_checkpoint_is_chosen(tmp_path):
    for job, number, age in [("job-a", 7, 300), ("job-b", 2, 100), ("job-b", 3, 100)]:
        metadata = tmp_path / job / f"chk-{number}" / "_metadata"
        metadata.parent.mkdir(parents=True)
        metadata.write_bytes(b"")
        os.utime(metadata, (1_700_000_000 - age, 1_700_000_000 - age))
    (tmp_path / "job-b" / "chk-4").mkdir()  # still being written: no _metadata

    assert latest_checkpoint(tmp_path.as_uri()) == str(tmp_path / "job-b" / "chk-3")
    assert latest_checkpoint((tmp_path / "nothing-here").as_uri()) is None


def test_checkpoints_go_under_the_configured_uri_or_the_stacks_directory(tmp_path):
    local = Settings(run_dir=tmp_path)
    remote = Settings(run_dir=tmp_path, checkpoint_uri="s3://bucket/kingfisher/")

    assert checkpoint_uri(local, "live") == f"file://{tmp_path}/flink/checkpoints/live"
    assert local_directory(checkpoint_uri(local, "live")) == tmp_path / "flink" / "checkpoints" / "live"
    assert checkpoint_uri(remote, "live") == "s3://bucket/kingfisher/live"
    assert local_directory(checkpoint_uri(remote, "live")) is None


def test_a_job_resumes_from_what_was_asked_else_the_newest_local_checkpoint(tmp_path):
    (tmp_path / "job" / "chk-5").mkdir(parents=True)
    (tmp_path / "job" / "chk-5" / "_metadata").write_bytes(b"")

    assert restore_location(None, tmp_path) == f"file://{tmp_path}/job/chk-5"
    assert restore_location(str(tmp_path / "savepoint-1"), tmp_path) == f"file://{tmp_path}/savepoint-1"
    assert restore_location("s3://bucket/savepoint-2", tmp_path) == "s3://bucket/savepoint-2"
    assert restore_location(None, None) is None
    assert restore_location(None, tmp_path / "empty") is None
