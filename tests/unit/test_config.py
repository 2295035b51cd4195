import pytest
from pydantic import ValidationError

from schemas.config import Settings


def test_defaults_bind_every_service_to_loopback_on_the_documented_ports(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = Settings()

    assert settings.bind_host == "127.0.0.1"
    assert (settings.kafka_port, settings.kafka_controller_port, settings.redis_port) == (9092, 9093, 6379)
    assert settings.kafka_bootstrap == "127.0.0.1:9092"


def test_environment_overrides_the_config_file_which_overrides_defaults(monkeypatch, tmp_path):
    config_file = tmp_path / "site.toml"
    config_file.write_text('kafka_port = 19092\nredis_port = 16379\ntopic_events = "clicks"\n')
    monkeypatch.setenv("KF_CONFIG_FILE", str(config_file))
    monkeypatch.setenv("KF_REDIS_PORT", "26379")

    settings = Settings()

    assert settings.kafka_port == 19092
    assert settings.redis_port == 26379
    assert settings.topic_events == "clicks"
    assert settings.topic_items == "items"


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


def test_the_feature_spec_follows_the_settings(monkeypatch):
    monkeypatch.setenv("KF_SEQUENCE_LENGTH", "20")
    monkeypatch.setenv("KF_POPULARITY_HALF_LIFE_H", "1.5")

    spec = Settings().feature_spec()

    assert (spec.sequence_length, spec.popularity_half_life_ms) == (20, 5_400_000)
