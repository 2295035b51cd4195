from pathlib import Path

from schemas.config import Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_readme_documents_every_setting_with_its_default():
    for name, field in Settings.model_fields.items():
        assert f"| `KF_{name.upper()}` | `{field.default}` |" in README, name


def test_readme_shows_the_two_commands():
    assert "make test" in README
    assert "make demo" in README
