"""Group commit (service.core.batching): what concurrent callers hand in goes out together, and each
caller gets its own result, or the batch's error."""

import asyncio

import pytest

from service.core.batching import Batcher


class Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on
        self.gate = asyncio.Event()
        self.gate.set()

    async def flush(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await self.gate.wait()
        if self.fail_on in items:
            raise ValueError(f"cannot write {self.fail_on}")
        return [item * 10 for item in items]


async def test_an_idle_batcher_writes_at_once() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder.flush)
    assert await batcher.submit(1) == 10
    assert await batcher.submit(2) == 20
    assert recorder.batches == [[1], [2]]


async def test_what_arrives_during_a_write_goes_in_the_next_batch_each_caller_getting_its_own_result() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    batcher = Batcher(recorder.flush)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)  # the first write is under way, held at the gate
    others = [asyncio.create_task(batcher.submit(n)) for n in range(2, 7)]
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await first == 10
    assert await asyncio.gather(*others) == [20, 30, 40, 50, 60]
    assert recorder.batches == [[1], [2, 3, 4, 5, 6]]


async def test_a_failed_write_fails_its_batch_only() -> None:
    recorder = Recorder(fail_on=3)
    recorder.gate.clear()
    batcher = Batcher(recorder.flush)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    failing = [asyncio.create_task(batcher.submit(n)) for n in (2, 3)]
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await first == 10
    results = await asyncio.gather(*failing, return_exceptions=True)
    assert [str(result) for result in results] == ["cannot write 3", "cannot write 3"]
    assert await batcher.submit(4) == 40  # the batcher goes on


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    batcher = Batcher(recorder.flush)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    leaving, staying = asyncio.create_task(batcher.submit(2)), asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0)
    leaving.cancel()
    recorder.gate.set()
    assert await first == 10
    assert await staying == 30
    with pytest.raises(asyncio.CancelledError):
        await leaving
