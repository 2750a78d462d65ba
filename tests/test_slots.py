"""The Caller's slots (run.concurrency): never more holders than slots, first come first
served, and a waiter cancelled at any moment neither loses a slot nor takes one for good. The
engine's gate: as many records held as slots, plus one per record waiting without a slot."""

from __future__ import annotations

import anyio
import pytest

from llmrun.run.slots import Gate, Slots


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
@pytest.mark.parametrize("handed", [False, True])
async def test_a_cancelled_waiter_neither_loses_a_slot_nor_keeps_one(handed: bool) -> None:
    # One slot, held here; two waiters queue behind it, and the first is cancelled: while it
    # waits (it leaves the queue), or in the same step as the slot is released to it (it
    # passes the slot on). Either way the second gets the slot, and the slot comes back.
    slots = Slots(1)
    got: list[str] = []
    scope = anyio.CancelScope()

    async def cancelled() -> None:
        with scope:
            async with slots:
                got.append("cancelled")  # never: cancelled before the slot reaches it

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
            scope.cancel()
            if not handed:
                await anyio.sleep(0.01)  # the cancellation lands while it waits
                assert got == []
            await slots.__aexit__(None, None, None)
    assert got == ["later"]
    with anyio.fail_after(1):  # every slot is back: one holder enters at once
        async with slots:
            pass


@pytest.mark.anyio
async def test_the_gate_lets_in_one_more_record_for_each_that_waits_without_a_slot() -> None:
    gate = Gate(2)
    inside: list[int] = []

    async def enter(i: int) -> None:
        await gate.enter()
        inside.append(i)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(enter, i)
                await anyio.sleep(0.01)
            assert inside == [0, 1]  # as many as the size
            gate.resize(1)  # a record inside starts backing off: one more comes in
            await anyio.sleep(0.01)
            assert inside == [0, 1, 2]
            gate.resize(-1)  # its backoff ended: one too many inside, none comes in
            assert gate.over()
            gate.leave()  # the worker that saw `over` steps out; still full
            assert not gate.over()
            await anyio.sleep(0.01)
            assert inside == [0, 1, 2]
            gate.leave()  # a place frees: the longest waiter comes in
            await anyio.sleep(0.01)
            assert inside == [0, 1, 2, 3]


@pytest.mark.anyio
async def test_a_waiter_cancelled_as_the_gate_lets_it_in_passes_its_place_on() -> None:
    gate = Gate(1)
    got: list[str] = []
    scope = anyio.CancelScope()

    async def cancelled() -> None:
        with scope:
            await gate.enter()
            got.append("cancelled")

    async def later() -> None:
        await gate.enter()
        got.append("later")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await gate.enter()
            tg.start_soon(cancelled)
            await anyio.sleep(0.01)
            tg.start_soon(later)
            await anyio.sleep(0.01)
            scope.cancel()
            gate.leave()  # handed to `cancelled` in the same step as its cancellation
    assert got == ["later"]
    assert not gate.over()
