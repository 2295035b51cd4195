from infra.benches.quality import already_interacted, withhold_newest
from schemas.config import Settings
from tests.movielens_files import write_csv_layout

MOVIES = [f"{n},Film {n} (2000),Drama" for n in range(1, 9)]


def test_each_user_with_2n_plus_1_ratings_has_exactly_the_newest_n_withheld_and_they_are_what_is_scored(tmp_path):
    ratings = [f"1,{movie},4.0,{1_000_000_000 + movie * 60}" for movie in range(1, 8)]  # 7 ratings: 2·2 + 1 or more
    ratings += [f"2,{movie},3.0,{1_000_000_000 + movie * 90}" for movie in (1, 2, 3, 4)]  # 4: too few to withhold
    directory = write_csv_layout(tmp_path / "ml", ratings, MOVIES)

    withheld = withhold_newest(Settings(stack={"movielens_path": directory}), 2)

    assert sorted((event.user_id, event.item_id) for event in withheld.history) == sorted(
        [("1", str(movie)) for movie in range(1, 6)] + [("2", str(movie)) for movie in (1, 2, 3, 4)]
    )
    [query] = withheld.split.test
    assert (query.row.event.user_id, query.relevant) == ("1", frozenset({"6", "7"}))
    assert [row.event.item_id for row in withheld.history_rows if row.event.user_id == "1"] == ["1", "2", "3", "4", "5"]
    assert withheld.end == 1_000_000_000_000 + 4 * 90_000  # user 2's newest rating, which is not withheld


def test_already_interacted_counts_the_answers_items_each_user_rated_in_the_history(tmp_path):
    ratings = [f"1,{movie},4.0,{1_000_000_000 + movie * 60}" for movie in range(1, 8)]
    directory = write_csv_layout(tmp_path / "ml", ratings, MOVIES)
    withheld = withhold_newest(Settings(stack={"movielens_path": directory}), 2)

    # user 1 rated films 1-5 in the history; 6 and 7 are withheld, 8 never rated
    assert already_interacted([["6", "2", "8", "5"]], ["1"], withheld) == 2
    assert already_interacted([["6", "7", "8"]], ["1"], withheld) == 0
