"""`make bench-similar` (`python -m infra.benches.similar`): do similar items know film series?

MovieLens's titles give a labelled set (`training.series`): each numbered sequel and the film
before it. For the live model of the registry (`make demo`'s, or KF_RUN_DIR's) with the catalogue's
titles, the share of those pairs whose next film is among the first film's top k of
`GET /v1/items/{id}/similar` (the bundle's `similar`, as the service answers it), beside the
retrieval vectors' cosine alone and with co-watching but no titles. The pairs are split in two
halves by the first film's id: the weights were chosen on the first (validation), the second
(test) measures them. The titles label the pairs too, so the served row says what users see, not
what the models learned. Beside it, for the 300 most popular films: the genres each shares with
its top k (Jaccard, averaged), which the choice kept within 0.03 of the cosine's, and how many of
their top k were never watched with them (strangers: what a title match alone brings, "Knocked Up"
beside "Up"). `--title-weights`, `--title-floors`, `--co-watched-weights` and `--co-watched-powers`
add a row for each blend of the values given (the served one's for those not given).
"""

import argparse
import itertools
import time
from dataclasses import replace

import numpy as np
from rich.table import Table

from infra.stack import console
from schemas.bundle import Registry
from schemas.config import Settings
from schemas.runtime.loaded_bundle import SERVED_SIMILARITY, LoadedBundle, SimilarityWeights
from schemas.runtime.model_inputs import FIRST_ITEM
from schemas.runtime.sources.movielens import LoadReport, catalogue_items, locate_dataset
from training.series import series_pairs, series_recall


def jaccard(genres: dict[str, set[str]], film: str, others: list[str]) -> float:
    """The mean share of genres `film` has in common with each of `others` (of both's genres)."""
    return float(
        np.mean([len(genres[film] & genres[other]) / max(1, len(genres[film] | genres[other])) for other in others])
    )


def strangers(bundle: LoadedBundle, film: str, others: list[str]) -> int:
    """How many of `others` were never watched next to `film` (the bundle's co-visitation, both ways)."""
    co_watched = bundle.covisitation.co_watched(int(bundle.vocabulary.item_indices([film])[0]))
    return int(np.count_nonzero(co_watched[bundle.vocabulary.item_indices(others)] == 0))


def blends(arguments: argparse.Namespace) -> list[tuple[str, SimilarityWeights]]:
    """The labelled blends to measure: the served one and those before it, then the ones asked for."""
    served = SERVED_SIMILARITY
    tried = [
        (
            f"tried: co-watching {co_watched} (power {power}), titles {title} from {floor}",
            SimilarityWeights(co_watched, title, floor, power),
        )
        for co_watched, power, title, floor in itertools.product(
            arguments.co_watched_weights, arguments.co_watched_powers, arguments.title_weights, arguments.title_floors
        )
    ]
    return [
        ("retrieval cosine alone", SimilarityWeights(0.0, 0.0)),
        ("with co-watching (before)", replace(served, title=0.0)),
        ("served: with co-watching and titles", served),
        *(row for row in tried if row[1] != served),  # the served blend is measured once, above
    ]


def numbers(text: str) -> list[float]:
    return [float(number) for number in text.split(",") if number]


def arguments_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infra.benches.similar", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--k", type=int, default=20, help="similar items per film (default 20)")
    served = SERVED_SIMILARITY
    for option, served_value, what in (
        ("--title-weights", served.title, "titles' weights"),
        ("--title-floors", served.title_floor, "titles' floors"),
        ("--co-watched-weights", served.co_watched, "co-watching's weights"),
        ("--co-watched-powers", served.co_watched_power, "powers of popularity + 1 dividing co-watching"),
    ):
        parser.add_argument(option, type=numbers, default=[served_value],
                            help=f"{what} to try, e.g. 0.25,1 (default {served_value}, the served one)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = arguments_parser().parse_args(argv)
    settings = Settings()
    registry = Registry(settings.stack.models_dir)
    if not registry.servable():
        console.print(f"[red]no model to measure in {settings.stack.models_dir}: run make demo (or train) first")
        return 1
    dataset = locate_dataset(settings.stack.movielens_path)
    catalogue = list(catalogue_items(dataset, LoadReport(), int(time.time() * 1000)))
    loaded = LoadedBundle(registry.path(registry.current()), settings.pipeline.faiss_exact_max_items)
    bundle = loaded.with_items(catalogue)  # the titles, as the service reads them from the items topic
    pairs = sorted((first, then) for first, then in series_pairs(catalogue) if first in bundle.vocabulary)
    halves = {"validation": pairs[0::2], "test": pairs[1::2]}
    genres = {item.item_id: set(item.genres) for item in catalogue}
    most_popular = [
        bundle.vocabulary.item_id(int(index))
        for index in np.argsort(-bundle.popularity[FIRST_ITEM:])[:300] + FIRST_ITEM
    ]
    table = Table(title=f"v{bundle.version}: series' next films in the first film's top {arguments.k} similar items")
    table.add_column("similar items")
    for name, half in halves.items():
        table.add_column(f"{name} ({len(half)} pairs)")
    table.add_column("genres shared, 300 most popular (Jaccard)")
    table.add_column(f"strangers in their {300 * arguments.k} places")
    for label, weights in blends(arguments):

        def similar_ids(item_id: str, k: int, weights: SimilarityWeights = weights) -> list[str]:
            return [similar for similar, _ in bundle.similar(item_id, k, weights) or []]

        recalls = [series_recall(similar_ids, half, arguments.k) for half in halves.values()]
        lists = {film: similar_ids(film, arguments.k) for film in most_popular}
        shared = np.mean([jaccard(genres, film, others) for film, others in lists.items()])
        unwatched = sum(strangers(bundle, film, others) for film, others in lists.items())
        table.add_row(label, *(f"{recall:.1%}" for recall in recalls), f"{shared:.3f}", str(unwatched))
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
