"""Small MovieLens directories written by tests, in either layout."""

from pathlib import Path


def write_csv_layout(directory: Path, ratings: list[str], movies: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(ratings) + "\n")
    (directory / "movies.csv").write_text("movieId,title,genres\n" + "\n".join(movies) + "\n")
    return directory


def write_dat_layout(directory: Path, ratings: list[str], movies: list[str], encoding: str = "latin-1") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ratings.dat").write_bytes(("\n".join(ratings) + "\n").encode(encoding))
    (directory / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode(encoding))
    return directory
