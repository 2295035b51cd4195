"""Film series in a catalogue's titles: the labelled set that measures whether similar items know
series (a user expects Ocean's Twelve beside Ocean's Eleven).

A title ending in a sequel number (2 to 8, in digits or Roman numerals, after "Part" or not, a
subtitle after a colon allowed) names its series by the words before the number; its previous film
is the one titled with the series name alone (for number 2) or with the number before, released no
later. MovieLens's "Godfather: Part II, The" and "Godfather, The" make the pair (The Godfather, The
Godfather: Part II). Titles are compared without articles, alternative titles in brackets, case
and punctuation.
"""

import re
from collections.abc import Callable, Iterable

from schemas.catalogue import CatalogueItem
from schemas.runtime.title_match import ALTERNATIVE_TITLE

ROMAN = {"ii": 2, "iii": 3, "iv": 4, "v": 5, "vi": 6, "vii": 7, "viii": 8}
SEQUEL = re.compile(r"^(?P<series>.+?)\s+(?:part\s+)?(?P<number>[2-8]|ii|iii|iv|v|vi|vii|viii)(?:\s*:.*)?$")
ARTICLE = re.compile(r",\s*(the|a|an)(?=\s*(?::|$))")


def normalised(title: str) -> str:
    """Lower case, without bracketed alternative titles, trailing articles (", The") and punctuation
    but the colon, spaces collapsed."""
    title = ALTERNATIVE_TITLE.sub(" ", title.lower())
    title = ARTICLE.sub("", title)
    title = re.sub(r"[^\w\s:]", " ", title)
    return re.sub(r"\s+", " ", title).strip(" :")


def series_pairs(catalogue: Iterable[CatalogueItem]) -> list[tuple[str, str]]:
    """(film, its next film) item ids for every numbered sequel whose previous film the catalogue holds."""
    items = list(catalogue)
    by_title: dict[str, list[CatalogueItem]] = {}
    for item in items:
        by_title.setdefault(normalised(item.title).replace(":", ""), []).append(item)
    pairs = []
    for item in items:
        match = SEQUEL.match(normalised(item.title))
        if match is None:
            continue
        series, number = match["series"].rstrip(" :"), match["number"]
        number = ROMAN.get(number) or int(number)
        previous_titles = [series] if number == 2 else [f"{series} {number - 1}", f"{series} part {number - 1}"]
        previous = [
            film
            for title in previous_titles
            for film in by_title.get(title.replace(":", ""), [])
            if film.item_id != item.item_id and (film.year or 0) <= (item.year or 0)
        ]
        if previous:
            pairs.append((max(previous, key=lambda film: film.year or 0).item_id, item.item_id))
    return pairs


def series_recall(similar: Callable[[str, int], list[str] | None], pairs: list[tuple[str, str]], k: int) -> float:
    """The share of `pairs` whose next film is among the first film's `k` most similar items."""
    found = [following in (similar(first, k) or []) for first, following in pairs]
    return sum(found) / len(found) if found else 0.0
