import functools
from pathlib import Path

from schemas.config import SETTING_PATHS, Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_readme_documents_every_setting_with_its_default_in_its_section():
    for name, path in SETTING_PATHS.items():
        section = functools.reduce(lambda model, key: model.model_fields[key].annotation, path, Settings)
        table = README.split(f"`[{'.'.join(path)}]`\n\n", 1)[-1].split("\n\n", 1)[0]
        assert f"| `KF_{name.upper()}` | `{section.model_fields[name].default}` |" in table, name


def test_readme_shows_the_two_commands():
    assert "make test" in README
    assert "make demo" in README
