"""How much two items' titles share their rarer words: what tells similar items that a film has
sequels watched by too few for co-watching to find them (Ocean's Twelve beside Ocean's Eleven).

Each title is a TF-IDF vector over its words (lower case; alternative titles in brackets left out,
since they are often another language's title), of unit length; two titles match by the cosine of
theirs. A word every titled item has weighs nothing, one a single film has weighs most. The vectors
are stored as an inverted index (each word's rows and weights), so matching one row against every
other reads only the postings of that row's few words.

An index takes new titles (`with_titles`) without reading the others again: it keeps each title's
word ids in row order and in word order, so only the new titles are split into words and inserted
in both, and the weights are computed afresh from the ids (a word's weight depends on every title).
"""

import re
from collections.abc import Mapping

import numpy as np

WORD = re.compile(r"[^\W_]+")
ALTERNATIVE_TITLE = re.compile(r"\([^)]*\)")


def title_words(title: str) -> set[str]:
    """'Ocean's Eleven' -> {'ocean', 's', 'eleven'}; bracketed alternative titles are left out."""
    return set(WORD.findall(ALTERNATIVE_TITLE.sub(" ", title.lower())))


Entries = tuple[np.ndarray, np.ndarray]
"""(rows [E] int64, word ids [E] int64): each word of each title, once."""


class TitleIndex:
    """The titles of rows 0..rows-1; a row without a title matches nothing."""

    def __init__(self, rows: int, words: dict[str, int], by_row: Entries, by_word: Entries):
        """`words`: word -> id; `by_row`: the entries in ascending rows; `by_word`: the same entries in
        ascending word ids. Use `empty` and `with_titles`."""
        self.rows, self._words, self._by_row, self._by_word = rows, words, by_row, by_word
        per_row, frequency = np.bincount(by_row[0], minlength=rows), np.bincount(by_row[1], minlength=len(words))
        self._row_starts = np.concatenate([[0], np.cumsum(per_row)])
        """Row r's entries are [_row_starts[r], _row_starts[r + 1]) of _by_row."""
        self._word_starts = np.concatenate([[0], np.cumsum(frequency)])
        """Word w's postings are [_word_starts[w], _word_starts[w + 1]) of _by_word."""
        idf = np.log(np.count_nonzero(per_row) / np.maximum(frequency, 1)).astype(np.float32)
        lengths = np.maximum(np.sqrt(np.bincount(by_row[0], idf[by_row[1]] ** 2, minlength=rows)), 1e-12)
        self._row_weights = idf[by_row[1]] / lengths[by_row[0]].astype(np.float32)
        self._word_weights = idf[by_word[1]] / lengths[by_word[0]].astype(np.float32)

    @classmethod
    def empty(cls, rows: int) -> "TitleIndex":
        none = np.empty(0, np.int64)
        return cls(rows, {}, (none, none), (none, none))

    def with_titles(self, rows: int, titles: Mapping[int, str]) -> "TitleIndex":
        """This index over `rows` rows (no fewer than now) with each row of `titles` (row -> title)
        titled anew; this index is unchanged. Only the new titles are split into words."""
        words = dict(self._words)
        entries = sorted(
            (row, words.setdefault(word, len(words))) for row, title in titles.items() for word in title_words(title)
        )
        new_rows, new_words = (np.array(column, np.int64) for column in (list(zip(*entries, strict=True)) or [(), ()]))
        retitled = [row for row in titles if row < self.rows and self._row_starts[row + 1] > self._row_starts[row]]
        by_word = np.argsort(new_words, kind="stable")
        return TitleIndex(
            rows,
            words,
            _inserted(self._by_row, retitled, (new_rows, new_words), key=0),
            _inserted(self._by_word, retitled, (new_rows[by_word], new_words[by_word]), key=1),
        )

    def match(self, row: int) -> np.ndarray:
        """-> [rows] float32: the cosine of row's title vector with each row's (0 without a word in common)."""
        matched = np.zeros(self.rows, np.float32)
        for entry in range(self._row_starts[row], self._row_starts[row + 1]):
            word, weight = self._by_row[1][entry], self._row_weights[entry]
            postings = slice(self._word_starts[word], self._word_starts[word + 1])
            matched[self._by_word[0][postings]] += weight * self._word_weights[postings]
        return matched


def _inserted(entries: Entries, retitled: list[int], new: Entries, key: int) -> Entries:
    """`entries` (ascending in entries[key]) without the rows of `retitled`, with `new` (ascending in
    new[key]) inserted where they keep that order: no sort of all the entries."""
    if retitled:
        kept = ~np.isin(entries[0], retitled)
        entries = (entries[0][kept], entries[1][kept])
    at = np.searchsorted(entries[key], new[key], side="right")
    return np.insert(entries[0], at, new[0]), np.insert(entries[1], at, new[1])
