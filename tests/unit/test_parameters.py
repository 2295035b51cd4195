import pytest

from schemas.config import Settings
from serving.parameters import TRENDING, USERS, BadRequest, Count


def test_a_count_parses_its_default_and_its_bounds_from_the_settings():
    settings = Settings(max_k=50)

    assert TRENDING.parse({}, settings) == 10
    assert TRENDING.parse({"k": "50"}, settings) == 50
    assert USERS.parse({"limit": "100"}, settings) == 100
    for raw in ("0", "51", "-3", "x", ""):
        with pytest.raises(BadRequest, match=f"k: must be an integer from 1 to 50, got '{raw}'"):
            TRENDING.parse({"k": raw}, settings)


def test_the_document_describes_what_parse_accepts():
    settings, count = Settings(max_k=30), Count("n", 7, "max_k", "How many.")

    assert count.openapi(settings) == {
        "name": "n",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 30, "default": 7},
        "description": "How many.",
    }
