"""The Caller's slots (run.concurrency): never more holders than slots, first come first
served, and a waiter cancelled at any moment neither loses a slot nor takes one for good."""

from __future__ import annotations

import anyio
import pytest

from llmrun.run.slots import Slots


@pytest.mark.anyio
@pytest.mark.parametrize("size", [1, 3])
async def test_never_more_holders_than_slots_and_waiters_served_in_order(size: int) -> None:
    slots = Slots(size)
    holding = 0
    most = 0
    queued: list[int] = []
    order: list[int] = []

    async def hold(i: int) -> None:
        nonlocal holding, most
        queued.append(i)  # and into the slots' queue in the same step, when none is free
        async with slots:
            order.append(i)
            holding += 1
            most = max(most, holding)
            await anyio.sleep(0.01)
            holding -= 1

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(hold, i)
    assert most == size
    assert sorted(order) == list(range(20))
    if size == 1:  # one slot at a time: served exactly in the order they queued
        assert order == queued


@pytest.mark.anyio
async def test_a_waiter_cancelled_before_its_turn_leaves_the_queue() -> None:
    slots = Slots(1)
    got: list[str] = []
    scope = anyio.CancelScope()

    async def cancelled() -> None:
        with scope:
            async with slots:
                got.append("cancelled")

    async def later() -> None:
        async with slots:
            got.append("later")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await slots.__aenter__()
            tg.start_soon(cancelled)
            await anyio.sleep(0.01)  # it runs and queues
            tg.start_soon(later)
            await anyio.sleep(0.01)  # it runs and queues
            scope.cancel()  # while it waits, before the slot is free
            await anyio.sleep(0.01)
            assert got == []
            await slots.__aexit__(None, None, None)  # the slot goes to `later`, not to it
    assert got == ["later"]


@pytest.mark.anyio
async def test_a_slot_handed_to_a_waiter_as_it_is_cancelled_passes_on() -> None:
    slots = Slots(1)
    got: list[str] = []
    scope = anyio.CancelScope()

    async def cancelled() -> None:
        with scope:
            async with slots:
                got.append("cancelled")  # never: it is cancelled as the slot reaches it

    async def later() -> None:
        async with slots:
            got.append("later")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await slots.__aenter__()
            tg.start_soon(cancelled)
            await anyio.sleep(0.01)  # it runs and queues
            tg.start_soon(later)
            await anyio.sleep(0.01)  # it runs and queues
            # Cancel it and release in one step: the slot is handed to a waiter whose
            # cancellation lands before it runs again.
            scope.cancel()
            await slots.__aexit__(None, None, None)
    assert got == ["later"]
    # Every slot is back: one holder can enter at once.
    with anyio.fail_after(1):
        async with slots:
            pass
