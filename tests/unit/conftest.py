import os

import pytest


@pytest.fixture(autouse=True)
def settings_from_defaults_only(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Unit tests see the documented defaults, whatever KF_* variables or kingfisher.toml the caller has."""
    for name in [name for name in os.environ if name.startswith("KF_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KF_CONFIG_FILE", str(tmp_path / "no-such-kingfisher.toml"))
