"""MovieLens as Kingfisher events and catalogue items.

Reads the CSV layout (ml-latest-small, ml-latest, ml-20m, ml-25m: ratings.csv, movies.csv) and
the `::` layout (ml-1m, ml-10m: ratings.dat, movies.dat). Ratings come out in event-time order
through an external merge sort, so a large file is never held in memory whole. A malformed line
is logged with its file, line number and reason, and counted in the `LoadReport`.

Data: F. Maxwell Harper and Joseph A. Konstan, "The MovieLens Datasets: History and Context",
ACM TiiS 5(4), 2015. GroupLens licence: research use.
"""

import csv
import heapq
import logging
import re
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from schemas.catalogue import CatalogueItem, validate_catalogue_item
from schemas.events import Event, EventType, validate_event
from schemas.validation import InvalidRecord

log = logging.getLogger(__name__)

SORT_CHUNK_ROWS = 2_000_000
LOGGED_MALFORMED_LINES = 20
# 'Title (1995)', and for series 'Title (2007-2013)' or with an en dash, 'Title (2007\u20132013)'.
TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:[-\u2013]\d{0,4})?\)\s*$")
NO_GENRES = "(no genres listed)"
RATINGS_HEADER = ["userId", "movieId", "rating", "timestamp"]
MOVIES_HEADER = ["movieId", "title", "genres"]
SHARED_DATASET = Path(__file__).resolve().parents[3].parent / "shared" / "datasets" / "ml-latest-small"


@dataclass(frozen=True)
class MalformedLine:
    path: Path
    line_number: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line_number}: {self.reason}"


@dataclass
class LoadReport:
    """What a load read: rows turned into records, and every line that could not be."""

    records: int = 0
    malformed: list[MalformedLine] = field(default_factory=list)

    def reject(self, path: Path, line_number: int, reason: str) -> None:
        problem = MalformedLine(path, line_number, reason)
        self.malformed.append(problem)
        if len(self.malformed) <= LOGGED_MALFORMED_LINES:
            log.warning("skipping malformed line %s", problem)
        elif len(self.malformed) == LOGGED_MALFORMED_LINES + 1:
            log.warning("more malformed lines: the rest are counted, not logged")


@dataclass(frozen=True)
class Layout:
    ratings: Path
    movies: Path
    separator: str | None
    """None for CSV; '::' for the .dat layout."""


@dataclass(frozen=True, order=True)
class RatingRow:
    ts_ms: int
    user_id: int
    movie_id: int
    rating: float
    line_number: int = field(compare=False)


def locate_dataset(configured: Path | None) -> Path:
    """The configured MovieLens directory, or when none is configured ../shared/datasets/ml-latest-small."""
    directory = Path(configured) if configured is not None else SHARED_DATASET
    if not directory.is_dir():
        raise FileNotFoundError(f"no MovieLens directory at {directory}; set KF_MOVIELENS_PATH or pass --path")
    return directory


def detect_layout(directory: Path) -> Layout:
    if (directory / "ratings.csv").exists():
        return Layout(directory / "ratings.csv", directory / "movies.csv", None)
    if (directory / "ratings.dat").exists():
        return Layout(directory / "ratings.dat", directory / "movies.dat", "::")
    raise FileNotFoundError(f"{directory} holds neither ratings.csv nor ratings.dat")


def _lines(path: Path, separator: str | None, header: list[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every data line; the CSV header is checked, the .dat layout has none."""
    if separator is None:
        with path.open(newline="", encoding="utf-8") as file:
            rows = csv.reader(file)
            if next(rows, None) != header:
                raise ValueError(f"{path}: expected the header {','.join(header)}")
            yield from ((rows.line_num, row) for row in rows)
        return
    with path.open("rb") as file:
        for line_number, raw in enumerate(file, start=1):
            # ml-1m is Latin-1, ml-10m UTF-8: decode each line as UTF-8 where it is.
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            yield line_number, text.rstrip("\r\n").split(separator)


def _movie_ids(layout: Layout) -> set[int]:
    ids = set()
    for _, fields in _lines(layout.movies, layout.separator, MOVIES_HEADER):
        with suppress(ValueError):  # a malformed id is reported by catalogue_items, which reads the same lines
            ids.add(int(fields[0]))
    return ids


def _rating_rows(layout: Layout, report: LoadReport) -> Iterator[RatingRow]:
    # A rating of a movie the catalogue lacks could be neither shown with a title nor embedded by genre.
    known_movies = _movie_ids(layout)
    for line_number, fields in _lines(layout.ratings, layout.separator, RATINGS_HEADER):
        if len(fields) != 4:
            report.reject(layout.ratings, line_number, f"expected 4 fields, found {len(fields)}")
            continue
        try:
            user, movie, rating, seconds = int(fields[0]), int(fields[1]), float(fields[2]), int(fields[3])
        except ValueError as error:
            report.reject(layout.ratings, line_number, f"not a number ({error})")
            continue
        if movie not in known_movies:
            report.reject(layout.ratings, line_number, f"movie {movie} is not listed in {layout.movies.name}")
            continue
        yield RatingRow(seconds * 1000, user, movie, rating, line_number)


def _spill(rows: list[RatingRow], path: Path) -> Iterator[RatingRow]:
    """Write sorted rows to a scratch file and return an iterator that reads them back."""
    with path.open("w") as file:
        file.writelines(f"{r.ts_ms}\t{r.user_id}\t{r.movie_id}\t{r.rating!r}\t{r.line_number}\n" for r in rows)

    def read_back() -> Iterator[RatingRow]:
        with path.open() as file:
            for line in file:
                ts, user, movie, rating, line_number = line.split("\t")
                yield RatingRow(int(ts), int(user), int(movie), float(rating), int(line_number))

    return read_back()


def _time_ordered(rows: Iterator[RatingRow], chunk_rows: int) -> Iterator[RatingRow]:
    """External merge sort by (time, user, movie): sorted chunks of `chunk_rows`, merged lazily."""
    with tempfile.TemporaryDirectory(prefix="kingfisher-sort-") as scratch:
        chunks: list[Iterator[RatingRow]] = []
        chunk: list[RatingRow] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= chunk_rows:
                chunks.append(_spill(sorted(chunk), Path(scratch) / f"chunk-{len(chunks)}.tsv"))
                chunk = []
        chunks.append(iter(sorted(chunk)))
        yield from heapq.merge(*chunks)


def rating_events(directory: Path, report: LoadReport, chunk_rows: int = SORT_CHUNK_ROWS) -> Iterator[Event]:
    """Every rating as a `rating` event, in event-time order."""
    layout = detect_layout(directory)
    for row in _time_ordered(_rating_rows(layout, report), chunk_rows):
        try:
            event = validate_event(
                {
                    "event_id": f"ml:{row.user_id}:{row.movie_id}",
                    "user_id": str(row.user_id),
                    "item_id": str(row.movie_id),
                    "type": EventType.RATING.value,
                    "value": row.rating,
                    "ts": row.ts_ms,
                }
            )
        except InvalidRecord as error:
            report.reject(layout.ratings, row.line_number, str(error))
            continue
        report.records += 1
        yield event


def split_title(raw_title: str) -> tuple[str, int | None]:
    """'Toy Story (1995)' -> ('Toy Story', 1995); a title without a year is kept whole."""
    match = TITLE_YEAR.match(raw_title.strip())
    if match is None or not match["title"]:
        return raw_title.strip(), None
    return match["title"], int(match["year"])


def catalogue_items(directory: Path, report: LoadReport, updated_at: int) -> Iterator[CatalogueItem]:
    """Every movie as a catalogue item, in file order."""
    layout = detect_layout(directory)
    for line_number, fields in _lines(layout.movies, layout.separator, MOVIES_HEADER):
        if len(fields) != 3:
            report.reject(layout.movies, line_number, f"expected 3 fields, found {len(fields)}")
            continue
        movie_id, raw_title, genres = fields
        title, year = split_title(raw_title)
        try:
            item = validate_catalogue_item(
                {
                    "item_id": movie_id.strip(),
                    "title": title,
                    "genres": [] if genres == NO_GENRES else genres.split("|"),
                    "year": year,
                    "updated_at": updated_at,
                }
            )
        except InvalidRecord as error:
            report.reject(layout.movies, line_number, str(error))
            continue
        report.records += 1
        yield item
