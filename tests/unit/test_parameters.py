"""The parameter models: what each route accepts, the reasons it gives, and the document's description."""

import pytest

from schemas.config import Settings
from serving.parameters import BadRequest, RecommendationsQuery, TrendingQuery, UserPath, UsersQuery


def test_a_count_parses_its_default_and_its_bounds_from_the_settings():
    settings = Settings(max_k=50)

    assert TrendingQuery.parse({}, settings).k == 10
    assert TrendingQuery.parse({"k": "50"}, settings).k == 50
    assert UsersQuery.parse({"limit": "100"}, settings).limit == 100
    for raw in ("0", "51", "-3", "x", "", "2.0"):
        with pytest.raises(BadRequest, match=f"k: must be an integer from 1 to 50, got '{raw}'"):
            TrendingQuery.parse({"k": raw}, settings)


def test_every_invalid_parameter_of_a_request_gets_its_own_reason():
    with pytest.raises(BadRequest) as bad:
        RecommendationsQuery.parse({"user_id": "a b", "explain": "yes", "exclude_seen": "1"}, Settings())

    assert bad.value.reasons == [
        "user_id: must match ^[A-Za-z0-9_.:-]{1,64}$",
        "explain: must be true or false, got 'yes'",
    ]
    with pytest.raises(BadRequest, match="user_id: required"):
        RecommendationsQuery.parse({}, Settings())


def test_flags_are_true_false_1_or_0_in_any_case():
    parsed = [RecommendationsQuery.parse({"user_id": "u", "explain": raw}, Settings()).explain
              for raw in ("TRUE", "false", "1", "0")]  # fmt: skip

    assert parsed == [True, False, True, False]


def test_the_document_describes_what_parse_accepts():
    [user_id, k, *_] = RecommendationsQuery.openapi(Settings(max_k=30))

    assert k == {
        "name": "k",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 30, "default": 20},
        "description": "How many items.",
    }
    assert user_id["required"] and user_id["schema"]["pattern"] == "^[A-Za-z0-9_.:-]{1,64}$"
    assert UserPath.openapi(Settings())[0]["in"] == "path"
