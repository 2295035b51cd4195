import functools
from pathlib import Path

import orjson

from schemas.config import SETTING_PATHS, Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_readme_documents_every_setting_with_its_default_in_its_section():
    for name, path in SETTING_PATHS.items():
        section = functools.reduce(lambda model, key: model.model_fields[key].annotation, path, Settings)
        table = README.split(f"`[{'.'.join(path)}]`\n\n", 1)[-1].split("\n\n", 1)[0]
        default = section.model_fields[name].get_default(call_default_factory=True)
        shown = orjson.dumps(default, option=orjson.OPT_NON_STR_KEYS).decode() if isinstance(default, dict) else default
        assert f"| `KF_{name.upper()}` | `{shown}` |" in table, name


def test_readme_shows_the_two_commands():
    assert "make test" in README
    assert "make demo" in README
