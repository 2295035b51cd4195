import itertools

import numpy as np
import pytest

from schemas.events import EventType
from schemas.runtime.sources.synthetic import SyntheticWorld, WorldSpec

SMALL = WorldSpec(users=50, items=80, genres=6, slate_size=8, seed=3)


def test_the_same_seed_gives_the_same_world_and_events():
    assert list(SyntheticWorld(SMALL).events(3000)) == list(SyntheticWorld(SMALL).events(3000))
    assert list(SyntheticWorld(SMALL).events(300)) != list(
        SyntheticWorld(WorldSpec(**{**SMALL.__dict__, "seed": 4})).events(300)
    )


def test_events_are_valid_unique_and_in_event_time_order():
    events = list(SyntheticWorld(SMALL).events(5000))

    assert len(events) == 5000
    assert len({e.event_id for e in events}) == 5000
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(events))
    assert {e.type for e in events} >= {EventType.IMPRESSION, EventType.CLICK, EventType.PLAY}


def test_every_click_follows_an_impression_of_the_same_slate_and_position():
    events = list(SyntheticWorld(SMALL).events(5000))
    shown = {
        (e.context["request_id"], e.item_id, e.context["position"]) for e in events if e.type == EventType.IMPRESSION
    }
    clicks = [e for e in events if e.type == EventType.CLICK]

    assert clicks
    assert all((c.context["request_id"], c.item_id, c.context["position"]) in shown for c in clicks)


def test_clicks_follow_the_known_preference_model():
    world = SyntheticWorld(WorldSpec(users=40, items=60, genres=6, drift_probability=0.0, seed=11))
    events = list(world.events(60_000))
    clicked = {(e.context["request_id"], e.context["position"]) for e in events if e.type == EventType.CLICK}
    impressions = [e for e in events if e.type == EventType.IMPRESSION]
    truth = np.array(
        [
            world.click_probability(
                int(e.user_id[1:]), np.array([int(e.item_id[1:])]), np.array([e.context["position"]])
            )[0]
            for e in impressions
        ]
    )
    outcome = np.array([(e.context["request_id"], e.context["position"]) in clicked for e in impressions])

    # Calibrated overall, and the likelier half of impressions is clicked far more often.
    assert outcome.mean() == pytest.approx(truth.mean(), abs=0.01)
    likely = truth > np.median(truth)
    assert outcome[likely].mean() > 2 * outcome[~likely].mean()


def test_interests_drift_between_sessions():
    world = SyntheticWorld(WorldSpec(users=5, items=40, genres=8, drift_probability=1.0, seed=5))
    before = world.user_interests.copy()

    list(world.events(2000))

    assert (world.user_interests != before).any()


def test_generation_is_lazy():
    first = next(iter(SyntheticWorld(SMALL).events(10**12)))

    assert first.type == EventType.IMPRESSION


def test_catalogue_lists_every_item_with_its_genres():
    items = list(SyntheticWorld(SMALL).catalogue(updated_at=1_700_000_000_000))

    assert [i.item_id for i in items] == [f"i{n}" for n in range(SMALL.items)]
    assert all(1 <= len(i.genres) <= 2 for i in items)


@pytest.mark.parametrize("bad", [{"genres": 99}, {"interests_per_user": 0}, {"slate_size": 1000}])
def test_impossible_worlds_are_refused(bad):
    with pytest.raises(ValueError):
        WorldSpec(**bad)
