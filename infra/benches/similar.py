"""`make bench-similar` (`python -m infra.benches.similar`): do similar items know film series?

MovieLens's titles give a labelled set (`training.series`): each numbered sequel and the film
before it. For the live model of the registry (`make demo`'s, or KF_RUN_DIR's), the share of those
pairs whose next film is among the first film's top k of `GET /v1/items/{id}/similar` (the bundle's
`similar`, as the service answers it), beside the retrieval vectors' cosine alone. The pairs are
split in two halves by the first film's id: the co-watching weight was chosen on the first
(validation), the second (test) measures it. Co-watching also pulls popular films next to each
other whatever their kind, so beside it: the genres each of the 300 most popular films shares with
its top k (Jaccard, averaged), which the choice kept within 0.03 of the cosine's.
"""

import argparse
import time

import numpy as np
from rich.table import Table

from infra.stack import console
from schemas.bundle import Registry
from schemas.config import Settings
from schemas.runtime.loaded_bundle import CO_WATCHED_WEIGHT, LoadedBundle
from schemas.runtime.model_inputs import FIRST_ITEM
from schemas.runtime.sources.movielens import LoadReport, catalogue_items, locate_dataset
from training.series import series_pairs, series_recall


def jaccard(genres: dict[str, set[str]], film: str, others: list[str]) -> float:
    """The mean share of genres `film` has in common with each of `others` (of both's genres)."""
    return float(
        np.mean([len(genres[film] & genres[other]) / max(1, len(genres[film] | genres[other])) for other in others])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.benches.similar", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--k", type=int, default=20, help="similar items per film (default 20)")
    arguments = parser.parse_args(argv)
    settings = Settings()
    registry = Registry(settings.stack.models_dir)
    if not registry.servable():
        console.print(f"[red]no model to measure in {settings.stack.models_dir}: run make demo (or train) first")
        return 1
    bundle = LoadedBundle(registry.path(registry.current()), settings.pipeline.faiss_exact_max_items)
    dataset = locate_dataset(settings.stack.movielens_path)
    catalogue = list(catalogue_items(dataset, LoadReport(), int(time.time() * 1000)))
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
    for label, weight in (("retrieval cosine alone", 0.0), ("served: with co-watching", CO_WATCHED_WEIGHT)):

        def similar_ids(item_id: str, k: int, weight: float = weight) -> list[str]:
            return [similar for similar, _ in bundle.similar(item_id, k, weight) or []]

        recalls = [series_recall(similar_ids, half, arguments.k) for half in halves.values()]
        shared = np.mean([jaccard(genres, film, similar_ids(film, arguments.k)) for film in most_popular])
        table.add_row(label, *(f"{recall:.1%}" for recall in recalls), f"{shared:.3f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
