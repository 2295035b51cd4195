import os

from streams.flink_env import latest_checkpoint


def test_the_newest_complete_checkpoint_is_chosen(tmp_path):
    for job, number, age in [("job-a", 7, 300), ("job-b", 2, 100), ("job-b", 3, 100)]:
        metadata = tmp_path / job / f"chk-{number}" / "_metadata"
        metadata.parent.mkdir(parents=True)
        metadata.write_bytes(b"")
        os.utime(metadata, (1_700_000_000 - age, 1_700_000_000 - age))
    (tmp_path / "job-b" / "chk-4").mkdir()  # still being written: no _metadata

    assert latest_checkpoint(tmp_path) == tmp_path / "job-b" / "chk-3"
    assert latest_checkpoint(tmp_path / "nothing-here") is None
