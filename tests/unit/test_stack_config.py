"""The service config files infra/stack.py renders, without starting anything."""

import os
from pathlib import Path

import psutil
import pytest

from infra import stack
from schemas.config import Settings


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(run_dir=tmp_path, kafka_port=19092, kafka_controller_port=19093, redis_port=16379)


def properties(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_kafka_config_listens_on_the_configured_loopback_ports(settings):
    kafka = stack.Kafka(settings)
    kafka.home.mkdir()
    config = properties(
        kafka.render(stack.INFRA_DIR / "kafka" / "server.properties.template", kafka.config_file, data_dir="/data")
    )

    assert config["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert config["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert config["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert config["log.dirs"] == "/data"
    assert config["auto.create.topics.enable"] == "false"


def directives(path: Path) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_redis_config_binds_loopback_with_aof_and_the_eviction_policy(settings):
    redis_service = stack.Redis(settings)
    redis_service.home.mkdir()
    redis_service.prepare()
    config = directives(redis_service.home / "redis.conf")

    assert config["bind"] == "127.0.0.1"
    assert config["port"] == "16379"
    assert config["appendonly"] == "yes"
    assert config["maxmemory-policy"] == "volatile-lru"
    assert config["dir"] == str(redis_service.home)


def test_a_redis_cluster_is_three_cluster_enabled_masters_on_consecutive_ports_with_the_same_settings(settings):
    masters = stack.redis_servers(settings.updated(redis_cluster=True))
    for master in masters:
        master.home.mkdir()
        master.prepare()
    node, base = directives(masters[1].home / "redis.conf"), directives(masters[1].home / "base.conf")

    assert [(master.name, [listen.port for listen in master.ports]) for master in masters] == [
        ("redis-0", [16379, 26379]),
        ("redis-1", [16380, 26380]),
        ("redis-2", [16381, 26381]),
    ]
    assert (node["include"], node["cluster-enabled"]) == (str(masters[1].home / "base.conf"), "yes")
    assert node["cluster-config-file"] == str(masters[1].home / "nodes.conf")
    assert (base["port"], base["bind"], base["appendonly"], base["maxmemory-policy"]) == (
        "16380",
        "127.0.0.1",
        "yes",
        "volatile-lru",
    )
    assert [server.name for server in stack.services(settings)] == ["redis", "kafka"]


def test_missing_kafka_jars_point_to_make_setup(settings, tmp_path):
    kafka = stack.Kafka(settings.updated(jars_dir=tmp_path / "nowhere"))

    with pytest.raises(stack.StackError, match="run `make setup`"):
        kafka.command()


def test_topics_have_the_configured_names_and_items_is_compacted(settings):
    topics = {topic.topic: topic for topic in stack.topic_specs(settings.updated(events_partitions=6))}

    assert set(topics) == {"events", "items", "events.dlq", "model-updates"}
    assert topics["events"].num_partitions == 6
    assert topics["items"].config == {"cleanup.policy": "compact"}
    assert topics["model-updates"].num_partitions == 1


def test_kafka_cluster_ids_never_start_with_a_dash():
    # 0xf8 = 0b111110.. -> the first base64url digit is 62, "-"; 0x00.. -> "A".
    draws = iter([b"\xf8" + bytes(15), b"\xf8" + bytes(15), bytes(16)])

    assert stack.kafka_cluster_id(lambda: next(draws)) == "AAAAAAAAAAAAAAAAAAAAAA"
    assert next(draws, None) is None


def test_the_process_start_a_pid_file_records_is_the_one_psutil_reads_in_ticks_after_boot():
    ticks = stack.started_ticks(os.getpid())

    assert abs(ticks / os.sysconf("SC_CLK_TCK") + psutil.boot_time() - psutil.Process().create_time()) < 0.02


@pytest.mark.parametrize(("shift_ticks", "found"), [(0, True), (-1, False), (6000, False)])
def test_a_pid_file_names_its_process_and_no_later_one_that_reused_its_pid(settings, shift_ticks, found):
    redis = stack.Redis(settings)
    redis.home.mkdir(parents=True)
    redis.pid_file.write_text(f"{os.getpid()} {stack.started_ticks(os.getpid()) + shift_ticks}")

    assert (redis.running_process() is not None) is found


def test_a_pid_file_names_its_process_though_the_wall_clock_was_stepped_since(settings, monkeypatch):
    redis = stack.Redis(settings)
    redis.home.mkdir(parents=True)
    redis.pid_file.write_text(f"{os.getpid()} {stack.started_ticks(os.getpid())}")
    create_time = psutil.Process.create_time
    monkeypatch.setattr(psutil.Process, "create_time", lambda process: create_time(process) + 24.0)

    assert redis.running_process() is not None


@pytest.mark.parametrize(("shift_s", "found"), [(0.0, True), (-1.0, True), (1.0, True), (-60.0, False)])
def test_a_pid_file_of_an_earlier_version_still_names_its_process(settings, shift_s, found):
    redis = stack.Redis(settings)
    redis.home.mkdir(parents=True)
    me = psutil.Process(os.getpid())
    redis.pid_file.write_text(f"{me.pid} {me.create_time() + shift_s:.2f}")  # -60 s: another process reused the pid

    assert (redis.running_process() is not None) is found
