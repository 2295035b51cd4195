"""Which history `make demo` loads: a configured path, ../shared/datasets, a download, else synthetic."""

import zipfile
from pathlib import Path

import pytest

from infra import demo
from infra.stack import StackError
from schemas.config import Settings


@pytest.fixture
def no_shared_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "SHARED_DATASET", tmp_path / "absent")


def movielens_zip(folder: Path) -> str:
    archive = folder / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w") as packed:
        packed.writestr("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
        packed.writestr("ml-latest-small/movies.csv", "movieId,title,genres\n1,Toy Story (1995),Animation\n")
    return archive.as_uri()


def test_a_configured_path_comes_first(tmp_path):
    history = demo.choose_history(Settings(movielens_path=tmp_path, run_dir=tmp_path / "run"))

    assert (history.source, history.path, history.why) == ("movielens", tmp_path, "KF_MOVIELENS_PATH")


def test_a_configured_path_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(StackError, match="is not a directory"):
        demo.choose_history(Settings(movielens_path=tmp_path / "nowhere", run_dir=tmp_path / "run"))


def test_the_shared_copy_comes_next(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "SHARED_DATASET", tmp_path)

    assert demo.choose_history(Settings(run_dir=tmp_path / "run")).path == tmp_path


def test_then_a_download_unpacked_into_the_run_directory(tmp_path, no_shared_copy):
    settings = Settings(run_dir=tmp_path / "run", movielens_url=movielens_zip(tmp_path))

    history = demo.choose_history(settings)

    assert history.source == "movielens"
    assert history.path == (tmp_path / "run" / "datasets" / "ml-latest-small").resolve()
    assert (history.path / "movies.csv").read_text().endswith("Toy Story (1995),Animation\n")
    assert history.publish_arguments("events", settings)[-2:] == ["--path", str(history.path)]


def test_then_the_synthetic_generator_when_nothing_can_be_fetched(tmp_path, no_shared_copy):
    settings = Settings(run_dir=tmp_path / "run", movielens_url=(tmp_path / "missing.zip").as_uri())

    history = demo.choose_history(settings)

    assert (history.source, history.path) == ("synthetic", None)
    assert history.publish_arguments("events", settings)[-2:] == ["--limit", str(settings.demo.demo_synthetic_events)]


def test_asking_for_movielens_when_there_is_none_is_an_error(tmp_path, no_shared_copy):
    settings = Settings(run_dir=tmp_path / "run", demo_source="movielens", movielens_url=(tmp_path / "x.zip").as_uri())

    with pytest.raises(StackError, match="KF_DEMO_SOURCE=movielens"):
        demo.choose_history(settings)


def test_asking_for_synthetic_skips_every_dataset(tmp_path):
    history = demo.choose_history(Settings(movielens_path=tmp_path, demo_source="synthetic"))

    assert (history.source, history.why) == ("synthetic", "KF_DEMO_SOURCE=synthetic")
