from schemas.redis_format import seen_filter_of
from schemas.runtime.feature_store import UserRead
from schemas.runtime.seen_filter import SeenFilterIndex
from serving.handlers import _interacted


class VocabularyOf:
    """`LoadedBundle.seen_before` over a vocabulary of its own."""

    def __init__(self, items):
        self.index = SeenFilterIndex(items)

    def seen_before(self, seen_filter):
        return set(self.index.held(seen_filter)) if seen_filter else set()


def test_a_heavy_users_filter_adds_the_vocabularys_items_it_holds_or_without_models_the_trending_ones():
    heavy = UserRead(seen_set=frozenset({"newest"}), seen_filter=seen_filter_of(["old-1", "old-2", "newest"]))

    assert _interacted(heavy, VocabularyOf(["old-1", "old-2", "other"]), []) == {"newest", "old-1", "old-2"}
    assert _interacted(heavy, None, ["old-2", "fresh", "newest"]) == {"newest", "old-2"}
    assert _interacted(UserRead(seen_set=frozenset({"a"})), None, ["a", "b"]) == {"a"}
