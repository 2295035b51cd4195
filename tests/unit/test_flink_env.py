import os

import pytest

from schemas.config import Settings
from schemas.features import FeatureSpec
from streams.flink_classpath import with_flink_classpath
from streams.flink_env import (
    CHANGELOG_DIRECTORY,
    FeatureSpecChanged,
    changelog_in_use,
    check_feature_spec,
    checkpoint_uri,
    latest_checkpoint,
    local_directory,
    prepare_local_jvm,
    restore_location,
)
from tests.conftest import settings_of


def test_the_newest_complete_checkpoint_is_chosen(tmp_path):
    for job, number, age in [("job-a", 7, 300), ("job-b", 2, 100), ("job-b", 3, 100)]:
        metadata = tmp_path / job / f"chk-{number}" / "_metadata"
        metadata.parent.mkdir(parents=True)
        metadata.write_bytes(b"")
        os.utime(metadata, (1_700_000_000 - age, 1_700_000_000 - age))
    (tmp_path / "job-b" / "chk-4").mkdir()  # still being written: no _metadata
    changelog = tmp_path / CHANGELOG_DIRECTORY / "job-c" / "chk-9" / "_metadata"  # not a job's checkpoints
    changelog.parent.mkdir(parents=True)
    changelog.write_bytes(b"")

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


def test_a_job_resumes_only_checkpoints_recorded_with_its_feature_spec(tmp_path):
    checkpoints, spec, longer = (tmp_path / "live").as_uri(), FeatureSpec(), FeatureSpec(sequence_length=80)
    with pytest.raises(FeatureSpecChanged, match="of an earlier version"):  # none recorded: before the move
        check_feature_spec(checkpoints, spec, resuming=True)
    check_feature_spec(checkpoints, spec, resuming=False)

    check_feature_spec(checkpoints, spec, resuming=True)
    with pytest.raises(FeatureSpecChanged, match=r"sequence_length 50 -> 80.*--fresh"):
        check_feature_spec(checkpoints, longer, resuming=True)
    check_feature_spec(checkpoints, longer, resuming=False)  # --fresh: state rebuilt with the new spec
    check_feature_spec(checkpoints, longer, resuming=True)
    with pytest.raises(FeatureSpecChanged):
        check_feature_spec(checkpoints, spec, resuming=True)


def test_the_state_changelog_is_used_with_the_hashmap_backend_only():
    assert changelog_in_use(settings_of({}))
    assert not changelog_in_use(settings_of({"KF_STATE_BACKEND": "rocksdb"}))
    assert not changelog_in_use(settings_of({"KF_STATE_CHANGELOG": "false"}))


def test_the_changelog_jars_join_the_classpath_of_the_flink_jvms_once(tmp_path):
    settings = settings_of({"KF_JARS_DIR": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="make setup"):
        with_flink_classpath(settings, {})
    (tmp_path / "flink").mkdir()
    for name in ("flink-dstl-dfs-2.2.0.jar", "flink-statebackend-changelog-2.2.0.jar", "flink-sql-connector-kafka.jar"):
        (tmp_path / "flink" / name).write_bytes(b"")
    jars = tmp_path / "flink"
    expected = f"/opt/hadoop.jar:{jars}/flink-statebackend-changelog-2.2.0.jar:{jars}/flink-dstl-dfs-2.2.0.jar"

    environment = with_flink_classpath(settings, {"HADOOP_CLASSPATH": "/opt/hadoop.jar", "PATH": "/bin"})
    assert environment == {"HADOOP_CLASSPATH": expected, "PATH": "/bin"}
    assert with_flink_classpath(settings, environment)["HADOOP_CLASSPATH"] == expected


def test_the_local_jvm_gets_the_configured_options_and_otherwise_the_environments(monkeypatch):
    monkeypatch.setattr(os, "environ", os.environ | {"JVM_ARGS": "-Xss1m"})
    prepare_local_jvm(Settings())
    assert os.environ["JVM_ARGS"] == "-Xss1m"

    prepare_local_jvm(Settings(flink_jvm_options="-XX:TieredStopAtLevel=1 -Xmx2g"))
    assert os.environ["JVM_ARGS"] == "-XX:TieredStopAtLevel=1 -Xmx2g"
    prepare_local_jvm(Settings(flink_jvm_options=""))
    assert os.environ["JVM_ARGS"] == ""
