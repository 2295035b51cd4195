from pathlib import Path

import pytest

from schemas.events import EventType
from schemas.runtime.sources.movielens import (
    SHARED_DATASET,
    LoadReport,
    catalogue_items,
    locate_dataset,
    rating_events,
    split_title,
)
from tests.movielens_files import write_csv_layout, write_dat_layout

MOVIES = [
    "1,Toy Story (1995),Adventure|Animation",
    '2,"Jumanji, The (1995)",Adventure',
    "3,Babylon 5,(no genres listed)",
]


def events_and_report(directory, **kwargs):
    report = LoadReport()
    return list(rating_events(directory, report, **kwargs)), report


def test_ratings_become_rating_events_in_time_order_with_decimal_ids(tmp_path):
    directory = write_csv_layout(tmp_path, ["2,1,4.5,1000000300", "1,2,3.0,1000000100", "1,1,5.0,1000000200"], MOVIES)

    events, report = events_and_report(directory)

    assert [(e.user_id, e.item_id, e.value, e.ts) for e in events] == [
        ("1", "2", 3.0, 1_000_000_100_000),
        ("1", "1", 5.0, 1_000_000_200_000),
        ("2", "1", 4.5, 1_000_000_300_000),
    ]
    assert {e.type for e in events} == {EventType.RATING}
    assert events[0].event_id == "ml:1:2"
    assert (report.records, report.malformed) == (3, [])


def test_the_external_sort_across_chunks_gives_the_same_order(tmp_path):
    rows = [f"{u},{1 + (u * 7) % 3},{0.5 + u % 10 / 2},{1_000_000_000 + (u * 7919) % 1000}" for u in range(1, 200)]
    directory = write_csv_layout(tmp_path, rows, MOVIES)

    in_memory, _ = events_and_report(directory)
    chunked, _ = events_and_report(directory, chunk_rows=7)

    assert chunked == in_memory
    assert [e.ts for e in chunked] == sorted(e.ts for e in chunked)


def test_every_malformed_line_is_reported_with_its_number_and_reason(tmp_path):
    ratings = [
        "1,1,4.0,1000000000",  # line 2: fine
        "1,1,4.0",  # line 3: too few fields
        "x,1,4.0,1000000000",  # line 4: not a number
        "1,999,4.0,1000000000",  # line 5: unknown movie
        "1,2,7.5,1000000000",  # line 6: rating out of range
        "1,3,2.0,1000000001",  # line 7: fine
    ]
    events, report = events_and_report(write_csv_layout(tmp_path, ratings, MOVIES))

    assert len(events) == report.records == 2
    assert [(m.line_number, m.reason.split(" (")[0]) for m in report.malformed] == [
        (3, "expected 4 fields, found 3"),
        (4, "not a number"),
        (5, "movie 999 is not listed in movies.csv"),
        (6, "value: a rating needs a value from 0.5 to 5.0"),
    ]
    assert str(report.malformed[0]).endswith("ratings.csv:3: expected 4 fields, found 3")


def test_a_csv_without_the_expected_header_is_refused(tmp_path):
    directory = write_csv_layout(tmp_path, [], MOVIES)
    (directory / "ratings.csv").write_text("user,movie\n1,1\n")

    with pytest.raises(ValueError, match="expected the header userId,movieId,rating,timestamp"):
        events_and_report(directory)


def test_the_double_colon_layout_with_latin_1_titles(tmp_path):
    directory = write_dat_layout(
        tmp_path,
        ["1::1::5::978300760", "1::2::3::978302109"],
        ["1::Toy Story (1995)::Animation", "2::Amélie (2001)::Comedy|Romance"],
    )
    report = LoadReport()

    events, _ = events_and_report(directory)
    items = list(catalogue_items(directory, report, updated_at=1_700_000_000_000))

    assert [(e.item_id, e.value, e.ts) for e in events] == [("1", 5.0, 978_300_760_000), ("2", 3.0, 978_302_109_000)]
    assert [(i.title, i.year, i.genres) for i in items][1] == ("Amélie", 2001, ["Comedy", "Romance"])


def test_movies_become_catalogue_items_with_year_and_genres(tmp_path):
    report = LoadReport()

    items = list(catalogue_items(write_csv_layout(tmp_path, [], MOVIES), report, updated_at=1_700_000_000_000))

    assert [(i.item_id, i.title, i.year, i.genres) for i in items] == [
        ("1", "Toy Story", 1995, ["Adventure", "Animation"]),
        ("2", "Jumanji, The", 1995, ["Adventure"]),
        ("3", "Babylon 5", None, []),
    ]
    assert report.records == 3


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Toy Story (1995)", ("Toy Story", 1995)),
        ("Death Note: Desu nôto (2006\u20132007)", ("Death Note: Desu nôto", 2006)),
        ("Fawlty Towers (1975-1979)", ("Fawlty Towers", 1975)),
        ("(500) Days of Summer (2009)", ("(500) Days of Summer", 2009)),
        ("Babylon 5", ("Babylon 5", None)),
        ("(1995)", ("(1995)", None)),
    ],
)
def test_titles_and_years_are_split(raw, expected):
    assert split_title(raw) == expected


def test_a_missing_dataset_names_the_setting_to_use(tmp_path, monkeypatch):
    monkeypatch.setattr("schemas.runtime.sources.movielens.SHARED_DATASET", tmp_path / "absent")

    with pytest.raises(FileNotFoundError, match="KF_MOVIELENS_PATH"):
        locate_dataset(None)
    assert locate_dataset(tmp_path) == tmp_path


def test_a_configured_path_that_does_not_exist_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr("schemas.runtime.sources.movielens.SHARED_DATASET", tmp_path)

    with pytest.raises(FileNotFoundError, match="absent"):
        locate_dataset(tmp_path / "absent")


def test_all_malformed_lines_are_counted_but_only_the_first_twenty_logged(tmp_path, caplog):
    directory = write_csv_layout(tmp_path, [f"{n},1,4.0" for n in range(25)], MOVIES)

    _, report = events_and_report(directory)

    assert len(report.malformed) == 25
    assert len(caplog.records) == 21
    assert "counted, not logged" in caplog.records[-1].message


def test_the_default_dataset_is_the_shared_folder_beside_the_checkout():
    """The README's default, `../shared/datasets/ml-latest-small` from the checkout, wherever the
    module sits in it (`make demo` falls back to other histories when it is not there)."""
    assert Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "ml-latest-small" == SHARED_DATASET
