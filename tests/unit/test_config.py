import pytest
from pydantic import BaseModel, ValidationError

from schemas.config import SETTING_PATHS, Settings, setting_paths
from schemas.features import FeatureSpec


def test_defaults_bind_every_service_to_loopback_on_the_documented_ports(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = Settings()

    assert settings.stack.bind_host == "127.0.0.1"
    assert (settings.stack.kafka_port, settings.stack.kafka_controller_port, settings.stack.redis_port) == (
        9092,
        9093,
        6379,
    )
    assert settings.stack.kafka_bootstrap == "127.0.0.1:9092"


def test_environment_overrides_the_config_file_which_overrides_defaults(monkeypatch, tmp_path):
    config_file = tmp_path / "site.toml"
    config_file.write_text('kafka_port = 19092\nredis_port = 16379\ntopic_events = "clicks"\n')
    monkeypatch.setenv("KF_CONFIG_FILE", str(config_file))
    monkeypatch.setenv("KF_REDIS_PORT", "26379")

    settings = Settings()

    assert settings.stack.kafka_port == 19092
    assert settings.stack.redis_port == 26379
    assert settings.stack.topic_events == "clicks"
    assert settings.stack.topic_items == "items"


@pytest.mark.parametrize(("variable", "value"), [("KF_KAFKA_PORT", "70000"), ("KF_EVENTS_PARTITIONS", "0")])
def test_out_of_range_values_are_rejected_naming_the_field(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)

    with pytest.raises(ValidationError, match=variable[3:].lower()):
        Settings()


def test_unknown_settings_in_the_config_file_are_rejected(monkeypatch, tmp_path):
    config_file = tmp_path / "typo.toml"
    config_file.write_text("kafka_prot = 1\n")
    monkeypatch.setenv("KF_CONFIG_FILE", str(config_file))

    with pytest.raises(ValidationError, match="kafka_prot"):
        Settings()


def test_the_feature_spec_is_a_section_of_the_settings_by_flat_and_sectioned_names(monkeypatch):
    monkeypatch.setenv("KF_SEQUENCE_LENGTH", "20")
    monkeypatch.setenv("KF_PIPELINE__FEATURES__POPULARITY_HALF_LIFE_MS", "5400000")

    spec = Settings().pipeline.features

    assert spec == FeatureSpec(sequence_length=20, popularity_half_life_ms=5_400_000)


def test_a_feature_spec_names_its_differences():
    assert FeatureSpec().differences(FeatureSpec(sequence_length=20, seen_capacity=9)) == (
        "sequence_length 50 -> 20, seen_capacity 2000 -> 9"
    )
    assert FeatureSpec().differences(FeatureSpec()) == ""


def test_sections_and_flat_names_mix_each_source_keeping_its_precedence(monkeypatch, tmp_path):
    config_file = tmp_path / "site.toml"
    config_file.write_text(
        'topic_events = "clicks"\n[stack]\nkafka_port = 19092\nredis_port = 16379\n[training.model]\nranker_width = 8\n'
    )
    monkeypatch.setenv("KF_CONFIG_FILE", str(config_file))
    monkeypatch.setenv("KF_REDIS_PORT", "26379")
    monkeypatch.setenv("KF_STACK__KAFKA_PORT", "29092")
    monkeypatch.setenv("KF_KAFKA_PORT", "39092")

    settings = Settings(ranker_width=16)

    assert (settings.stack.kafka_port, settings.stack.redis_port) == (29092, 26379)
    assert (settings.stack.topic_events, settings.stack.topic_items) == ("clicks", "items")
    assert settings.training.model.ranker_width == 16


def test_an_unknown_name_in_a_section_is_rejected_naming_it(monkeypatch, tmp_path):
    config_file = tmp_path / "typo.toml"
    config_file.write_text("[serving]\nmax_kk = 5\n")
    monkeypatch.setenv("KF_CONFIG_FILE", str(config_file))

    with pytest.raises(ValidationError, match=r"serving\.max_kk"):
        Settings()


def test_a_name_in_two_sections_is_refused():
    class One(BaseModel):
        port: int = 1

    class Two(BaseModel):
        port: int = 2

    class Both(BaseModel):
        one: One = One()
        two: Two = Two()

    with pytest.raises(TypeError, match="port"):
        setting_paths(Both)


def test_flat_names_read_and_update_the_settings_in_their_sections(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = Settings(max_k=30)

    updated = settings.updated(ranker_width=12, redis_port=7000)

    assert (settings.flat()["max_k"], settings.flat()["ranker_width"]) == (30, 44)
    assert (updated.training.model.ranker_width, updated.stack.redis_port, updated.serving.max_k) == (12, 7000, 30)
    assert settings.flat() == dict(leaves(settings.model_dump()))
    with pytest.raises(ValidationError, match="kafka_port"):
        settings.updated(kafka_port=70000)


def leaves(tree: dict):
    """The settings of a dumped tree: its leaves, and the settings that are tables (a spec's weights)."""
    for name, value in tree.items():
        yield from leaves(value) if isinstance(value, dict) and name not in SETTING_PATHS else [(name, value)]


def test_programs_reach_external_kafka_and_redis_when_their_addresses_are_set(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    local = Settings(bind_host="0.0.0.0")
    external = Settings(bind_host="0.0.0.0", kafka_servers="kafka-0:9092,kafka-1:9092", redis_host="redis-0")

    assert (local.stack.kafka_bootstrap, local.stack.redis_address) == ("0.0.0.0:9092", "0.0.0.0")
    assert (external.stack.kafka_bootstrap, external.stack.redis_address) == ("kafka-0:9092,kafka-1:9092", "redis-0")
