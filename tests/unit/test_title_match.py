import math
from collections import Counter

import hypothesis
import numpy as np
from hypothesis import strategies as st

from schemas.runtime.title_match import TitleIndex, title_words


def test_title_words_are_lower_case_words_without_the_bracketed_alternative_title():
    assert title_words("Ocean's Eleven") == {"ocean", "s", "eleven"}
    assert title_words("Amelie (Fabuleux destin d'Amélie Poulain, Le)") == {"amelie"}
    assert title_words("Se7en: Part II") == {"se7en", "part", "ii"}


def titled(*titles: str | None) -> TitleIndex:
    return TitleIndex.empty(len(titles)).with_titles(
        len(titles), {row: title for row, title in enumerate(titles) if title is not None}
    )


def test_titles_match_by_the_cosine_of_their_idf_weighted_words():
    index = titled("Alpha Beta", "Alpha Gamma", "Beta", None)

    # 3 titled rows: alpha and beta in 2 weigh ln 1.5, gamma in 1 weighs ln 3; each row of unit length.
    alpha_gamma = math.log(1.5) / math.hypot(math.log(1.5), math.log(3))
    assert np.allclose(index.match(0), [1.0, alpha_gamma / math.sqrt(2), 1 / math.sqrt(2), 0.0])
    assert np.allclose(index.match(2), [1 / math.sqrt(2), 0.0, 1.0, 0.0])
    assert np.allclose(index.match(3), 0.0)  # no title: matches nothing
    assert index.match(0).dtype == np.float32


def test_a_word_every_title_has_weighs_nothing():
    index = titled("The Alpha", "The Beta", "The")

    assert np.allclose(index.match(0), [1.0, 0.0, 0.0])
    assert np.allclose(index.match(2), 0.0)  # only the word every title has: no direction at all


def test_an_index_given_new_titles_matches_as_one_built_with_them_and_the_first_is_unchanged():
    first = titled("Alpha Beta", "Alpha Gamma", "Delta", None)
    grown = first.with_titles(5, {3: "Beta", 4: "Gamma Delta", 2: "Epsilon"})  # row 2 retitled

    built = titled("Alpha Beta", "Alpha Gamma", "Epsilon", "Beta", "Gamma Delta")
    for row in range(5):
        assert np.allclose(grown.match(row), built.match(row))
    assert np.allclose(first.match(0), titled("Alpha Beta", "Alpha Gamma", "Delta", None).match(0))
    assert first.match(2)[2] == 1.0 and grown.match(2)[2] == 1.0 and grown.match(4)[2] == 0.0


def reference_match(titles: dict[int, str], rows: int, row: int) -> np.ndarray:
    """The cosine of TF-IDF title vectors, written out plainly over the final titles."""
    words = {r: title_words(title) for r, title in titles.items()}
    frequency = Counter(word for title in words.values() for word in title)
    vectors = {r: {w: math.log(len(titles) / frequency[w]) for w in title} for r, title in words.items()}
    length = {r: math.sqrt(sum(v * v for v in vector.values())) for r, vector in vectors.items()}
    matched = np.zeros(rows)
    for other, vector in vectors.items():
        if row in vectors and length[row] > 0 and length[other] > 0:
            shared = sum(weight * vectors[row].get(word, 0.0) for word, weight in vector.items())
            matched[other] = shared / (length[row] * length[other])
    return matched


WORDS = st.sampled_from(["alpha", "beta", "gamma", "delta", "the", "2", "ii"])


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    st.lists(st.dictionaries(st.integers(0, 7), st.lists(WORDS, min_size=1, max_size=4).map(" ".join)), max_size=4)
)
def test_titles_given_in_any_batches_match_as_tf_idf_cosines_of_the_final_titles(batches):
    index, titles = TitleIndex.empty(8), {}
    for batch in batches:
        index, titles = index.with_titles(8, batch), titles | batch

    for row in range(8):
        assert np.allclose(index.match(row), reference_match(titles, 8, row), atol=1e-5)
