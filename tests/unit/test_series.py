import numpy as np

from schemas.catalogue import CatalogueItem
from schemas.runtime.loaded_bundle import SimilarityWeights, similarity_to
from training.series import series_pairs, series_recall


def film(item_id: str, title: str, year: int | None = None) -> CatalogueItem:
    return CatalogueItem(item_id=item_id, title=title, year=year, updated_at=1_700_000_000_000)


def test_numbered_sequels_pair_with_the_film_before_them_as_movielens_titles_them():
    catalogue = [
        film("g1", "Godfather, The", 1972),
        film("g2", "Godfather: Part II, The", 1974),
        film("s3", "Scream 3", 2000),
        film("s4", "Scream 4", 2011),
        film("t1", "Ghostbusters (a.k.a. Ghost Busters)", 1984),
        film("t2", "Ghostbusters II", 1989),
        film("m2", "Menace II Society", 1993),  # a number inside the title: no sequel
        film("r3", "Richard III", 1995),  # no "Richard II" in the catalogue
        film("p1", "Psycho", 1998),  # the remake came after the sequel: not its previous film
        film("p0", "Psycho", 1960),
        film("p2", "Psycho II", 1983),
    ]

    assert sorted(series_pairs(catalogue)) == [("g1", "g2"), ("p0", "p2"), ("s3", "s4"), ("t1", "t2")]


def test_series_recall_is_the_share_of_next_films_among_the_first_films_top_k():
    similar = {"a": ["x", "b", "y"], "c": ["d"], "e": None}

    pairs = [("a", "b"), ("c", "z"), ("e", "f")]  # "e" is unknown: its similar items are None
    assert series_recall(lambda item, k: similar[item], pairs, 3) == 1 / 3
    assert series_recall(lambda item, k: similar[item][:k], [("a", "b")], 1) == 0.0  # "b" is second
    assert series_recall(lambda item, k: [], [], 20) == 0.0


def test_similarity_is_the_cosine_plus_damped_co_watching_scaled_to_one_plus_title_matches_from_the_floor():
    unit = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)
    co_watched = np.array([0.0, 1.0, 4.0], np.float32)
    unpopular, none = np.zeros(3, np.float32), np.zeros(3, np.float32)
    weights = SimilarityWeights(co_watched=2.0, title=0.5, title_floor=0.5, co_watched_power=1.0)

    # cosines with row 0: 1, 0.6, 0; co-watching / 4: 0, 0.25, 1; titles 0.8 and 0.4 (< 0.5: nothing)
    assert np.allclose(similarity_to(unit, 0, co_watched, unpopular, none, weights), [1.0, 0.6 + 0.5, 0.0 + 2.0])
    assert np.allclose(similarity_to(unit, 0, none, unpopular, none, weights), [1.0, 0.6, 0.0])
    titles = np.array([1.0, 0.8, 0.4], np.float32)
    assert np.allclose(similarity_to(unit, 0, none, unpopular, titles, weights), [1.0 + 0.5, 0.6 + 0.4, 0.0])
    # damped by popularity + 1: 1 / 2 and 4 / 8, each then 0.5 / 0.5 = 1 of the strongest
    popularity = np.array([0.0, 1.0, 7.0], np.float32)
    assert np.allclose(similarity_to(unit, 0, co_watched, popularity, none, weights), [1.0, 0.6 + 2.0, 0.0 + 2.0])
    # by its square root: 1 / 2 and 4 / 4, the first half the strongest
    popular = np.array([0.0, 3.0, 15.0], np.float32)
    square_root = SimilarityWeights(co_watched=2.0, title=0.5, title_floor=0.5, co_watched_power=0.5)
    assert np.allclose(similarity_to(unit, 0, co_watched, popular, none, square_root), [1.0, 0.6 + 1.0, 0.0 + 2.0])
