import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.events import Event, EventType
from schemas.experiments import (
    MAX_SHADOW_ARMS,
    MAX_SHADOW_DIGESTS,
    ArmTally,
    Attribution,
    Experiment,
    ExperimentTallies,
    attributed_arm,
    counted_arm,
    difference_interval,
    experiment_report,
    new_request_id,
    tallies_of,
    wilson_interval,
)

AB = Experiment.model_validate(
    {"name": "ab", "arms": [{"name": "champion", "share": 0.7}, {"name": "challenger", "version": 3, "share": 0.3}]}
)


def event(n: int, kind: EventType, request_id: object | None) -> Event:
    context = None if request_id is None else {"request_id": request_id}
    value = 4.0 if kind is EventType.RATING else None
    return Event(event_id=f"e{n}", user_id="u", item_id="i", type=kind, ts=1_735_700_000_000 + n, value=value,
                 context=context)  # fmt: skip


def test_a_users_arm_is_stable_and_the_arms_take_their_shares_of_users():
    users = [f"user-{n}" for n in range(20_000)]

    first = [AB.arm_of(user).name for user in users]

    assert first == [AB.arm_of(user).name for user in users]
    # 20,000 draws at p = 0.3: the standard deviation of the share is 0.0032; 0.015 is over 4.
    assert abs(first.count("challenger") / len(users) - 0.3) < 0.015


def test_two_experiments_split_users_independently():
    other = AB.model_copy(update={"name": "other"})
    users = [f"user-{n}" for n in range(20_000)]

    both = sum(AB.arm_of(u).name == "challenger" and other.arm_of(u).name == "challenger" for u in users)

    assert abs(both / len(users) - 0.3 * 0.3) < 0.01  # independent: 0.09; the same split would give 0.3


@settings(max_examples=200)
@given(st.text(min_size=1, max_size=64))
def test_every_user_gets_one_of_the_experiments_arms(user_id):
    assert AB.arm_of(user_id) in AB.arms


@pytest.mark.parametrize(
    ("arms", "problem"),
    [
        ([{"name": "a", "share": 0.5}, {"name": "a", "share": 0.5}], "names must be unique"),
        ([{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}], "serve must add up to 1, got 0.9"),
        ([{"name": "a", "share": 1.0}, {"name": "b", "share": 0.5}], "serve must add up to 1, got 1.5"),
        ([{"name": "a", "share": 0.5, "shadow": True}, {"name": "b", "share": 1.0}], "the champion, must serve"),
        (
            [{"name": "a", "share": 1.0}, *({"name": f"s{n}", "share": 0.1, "shadow": True} for n in range(3))],
            "at most 2 shadow arms",
        ),
        ([{"name": "a", "share": 1.0}], "at least 2 items"),
        ([{"name": "a:b", "share": 0.5}, {"name": "b", "share": 0.5}], "should match pattern"),
        ([{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "version": 0}], "greater than or equal to 1"),
    ],
)
def test_an_experiment_whose_arms_cannot_split_users_is_refused_with_the_reason(arms, problem):
    with pytest.raises(ValidationError, match=problem):
        Experiment.model_validate({"name": "ab", "arms": arms})


def test_a_request_id_names_the_experiment_and_arm_that_answered_and_nothing_else_does():
    made = new_request_id("ab", "challenger")

    assert attributed_arm(made) == Attribution("ab", "challenger") and made != new_request_id("ab", "challenger")
    assert attributed_arm(new_request_id()) is None
    for other in (None, "", "ab:challenger", "a:b:c:d", ":arm:token", "ab::token", "a b:arm:token", "a:b:c:s=123",
                  "a:b:c:s=0000000g", "a:b:c:=00000000"):  # fmt: skip
        assert attributed_arm(other) is None, other


def test_a_request_id_carries_what_each_shadow_arm_would_have_shown():
    made = new_request_id("ab", "champion", {"shadow": ["i1", "i2"], "empty": []})

    # crc32("i1") = 0xa438c22b and crc32("i2") = 0x3d319391 (zlib.crc32, by hand: `printf i1 | gzip -c | tail -c8`).
    assert made.endswith(":shadow=a438c22b3d319391:empty=")
    assert attributed_arm(made) == Attribution("ab", "champion", {"shadow": {0xA438C22B, 0x3D319391}, "empty": set()})


def test_the_longest_request_id_fits_an_events_context():
    long = "x" * 32
    shadows = {f"{long[:-1]}{n}": [f"item-{i}" for i in range(500)] for n in range(MAX_SHADOW_ARMS)}
    request_id = new_request_id(long, long, shadows)

    event(1, EventType.CLICK, request_id)  # valid: context within MAX_CONTEXT_BYTES
    assert len(attributed_arm(request_id).shadows[f"{long[:-1]}0"]) == MAX_SHADOW_DIGESTS


def test_only_impressions_and_clicks_with_an_arms_request_id_count():
    assert counted_arm(event(1, EventType.IMPRESSION, "ab:champion:x")) == ("ab", "champion", ())
    assert counted_arm(event(2, EventType.CLICK, "ab:challenger:y")) == ("ab", "challenger", ())
    assert counted_arm(event(3, EventType.RATING, "ab:champion:x")) is None
    assert counted_arm(event(4, EventType.CLICK, None)) is None
    assert counted_arm(event(5, EventType.CLICK, 17)) is None


def test_tallies_count_each_arms_impressions_and_clicks_and_every_counted_event_once():
    events = [
        event(1, EventType.IMPRESSION, "ab:champion:x"),
        event(2, EventType.IMPRESSION, "ab:champion:x"),
        event(3, EventType.CLICK, "ab:champion:x"),
        event(4, EventType.IMPRESSION, "ab:challenger:y"),
        event(5, EventType.PLAY, "ab:challenger:y"),
        event(6, EventType.IMPRESSION, "other:a:z"),
    ]

    tallies = tallies_of(events)

    assert tallies["ab"] == ExperimentTallies(
        {"champion": ArmTally(2, 1), "challenger": ArmTally(1, 0)}, version=4, at_ts=1_735_700_000_004
    )
    assert tallies["other"].arms == {"a": ArmTally(1, 0)}


def test_a_click_counts_for_each_shadow_arm_that_ranked_its_request_and_would_have_shown_the_item():
    shown_i = new_request_id("ab", "champion", {"shadow": ["i", "j"]})
    shown_other = new_request_id("ab", "champion", {"shadow": ["j", "k"]})
    events = [event(1, EventType.IMPRESSION, shown_i), event(2, EventType.CLICK, shown_i),
              event(3, EventType.CLICK, shown_other), event(4, EventType.CLICK, "ab:champion:no-shadow")]  # fmt: skip

    tallies = tallies_of(events)["ab"]

    # Every event is about item "i": the shadow would have shown it for the first click, not the second.
    assert tallies.arms == {"champion": ArmTally(1, 3), "shadow": ArmTally(0, 2, would_have_shown=1)}


def test_the_wilson_interval_matches_hand_computed_values():
    # 10 of 100 at z = 1.96: centre (0.1 + 1.96²/200) / (1 + 1.96²/100) = 0.11480, half-width
    # 1.96 * sqrt(0.1 * 0.9 / 100 + 1.96² / 40000) / 1.038415 = 0.05957.
    low, high = wilson_interval(10, 100)
    assert low == pytest.approx(0.05523, abs=1e-4) and high == pytest.approx(0.17437, abs=1e-4)
    # No clicks in 20: [0, 1.96² / (20 + 1.96²)] = [0, 0.16113].
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.16113), abs=1e-4)
    assert wilson_interval(0, 0) is None
    assert wilson_interval(5, 3) == wilson_interval(3, 3)  # clicks without published impressions


def test_the_difference_interval_matches_hand_computed_values():
    # 0.12 - 0.10 = 0.02 ± 1.96 * sqrt(0.1 * 0.9 / 1000 + 0.12 * 0.88 / 1000) = ± 1.96 * 0.013986 = ± 0.02741.
    low, high = difference_interval(ArmTally(1000, 100), ArmTally(1000, 120))

    assert low == pytest.approx(0.02 - 0.02741, abs=1e-4) and high == pytest.approx(0.02 + 0.02741, abs=1e-4)
    assert difference_interval(ArmTally(0, 0), ArmTally(10, 1)) is None


def test_the_report_lists_every_arm_with_its_counts_even_before_any_event():
    report = experiment_report(AB, ExperimentTallies({"champion": ArmTally(100, 10)}, version=110, at_ts=7))

    champion, challenger = report["arms"]
    assert (report["name"], report["as_of"]) == ("ab", 7)
    assert (champion["impressions"], champion["clicks"], champion["ctr"]) == (100, 10, 0.1)
    assert champion["difference_interval"] is None and champion["ctr_interval"] == wilson_interval(10, 100)
    assert (challenger["version"], challenger["share"], challenger["impressions"], challenger["ctr"]) == (
        3,
        0.3,
        0,
        None,
    )
    assert experiment_report(AB, None)["arms"][0]["impressions"] == 0
