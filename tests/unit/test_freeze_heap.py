import gc
import weakref

from serving.models import freeze_heap


class Node:
    pass


def test_freeze_heap_frees_cycles_an_earlier_freeze_kept_and_freezes_the_survivors():
    node = Node()
    node.itself = node  # a reference cycle: only the cyclic collector frees it
    alive = weakref.ref(node)
    gc.freeze()  # as the swap before would have, while the node was still in use
    del node
    try:
        freeze_heap()
        assert alive() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
