import asyncio
import gc
import weakref

from serving.heap import InFlight, collect_when_quiet, freeze_imports


class Node:
    pass


def cycle() -> weakref.ref:
    """A weak reference to an object only the cyclic collector can free."""
    node = Node()
    node.itself = node
    return weakref.ref(node)


def test_freezing_at_start_keeps_later_objects_collectable():
    gc.disable()  # no automatic collection may free the cycle before collect_when_quiet does
    try:
        freeze_imports()
        assert gc.get_freeze_count() > 0
        alive = cycle()
        assert alive() is not None
        asyncio.run(collect_when_quiet(InFlight(), patience_s=1))
        assert alive() is None
    finally:
        gc.unfreeze()
        gc.enable()


def test_the_collection_waits_for_the_requests_in_flight():
    async def scenario() -> list[str]:
        in_flight, order = InFlight(), []

        async def request(name: str, seconds: float) -> None:
            with in_flight.request():
                await asyncio.sleep(seconds)
            order.append(name)

        async def collection() -> None:
            assert await in_flight.quiet(patience_s=5)
            order.append("quiet")

        await asyncio.gather(request("short", 0.01), request("long", 0.05), collection())
        return order

    assert asyncio.run(scenario()) == ["short", "long", "quiet"]


def test_under_traffic_that_never_pauses_the_wait_ends_after_its_patience():
    async def scenario() -> tuple[bool, int]:
        in_flight = InFlight()
        with in_flight.request():
            return await in_flight.quiet(patience_s=0.05), in_flight.count

    assert asyncio.run(scenario()) == (False, 1)


def test_with_no_request_in_flight_the_wait_ends_at_once():
    assert asyncio.run(InFlight().quiet(patience_s=0)) is True
