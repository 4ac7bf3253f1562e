from __future__ import annotations

import asyncio
import math

import pytest

from kaon.errors import OverloadedError
from kaon.serving.batcher import PROBE_EVERY, Batcher, Deadlines, decide_flush


def test_decide_flush_waits_for_nothing_when_queue_is_empty():
    decision = decide_flush(num_queued=0, oldest_wait_s=0.0, num_arriving=3, max_batch_size=8, max_wait_s=0.005)
    assert not decision.flush and math.isinf(decision.wait_s)


def test_decide_flush_flushes_a_full_batch_at_once():
    assert decide_flush(8, 0.0, 5, 8, 0.005).flush


def test_batcher_flushes_partial_batch_after_max_wait():
    assert not decide_flush(3, 0.004, 2, 8, 0.005).flush
    assert decide_flush(3, 0.005, 2, 8, 0.005).flush


def test_decide_flush_waits_only_the_rest_of_the_window():
    decision = decide_flush(3, 0.002, 2, 8, 0.005)
    assert not decision.flush
    assert decision.wait_s == pytest.approx(0.003)


def test_lone_request_is_flushed_without_waiting_for_the_window():
    # nobody else is on the way in: waiting would only add latency
    assert decide_flush(1, 0.0, 0, 64, 0.050).flush


def _run(coro):
    return asyncio.run(coro)


async def _arriving_together(handler, requests: list[list[int]]) -> list:
    """Each request announced as arriving, then queued in turn: one batch (exceptions returned, not raised)."""
    batcher = Batcher(handler, max_batch_size=16, max_wait_ms=200, max_queue=100)
    for _ in requests:
        batcher.arriving()
    futures = []
    for items in requests:
        futures.append(batcher.submit(items))
        batcher.arrived()
    results = await asyncio.gather(*futures, return_exceptions=True)
    await batcher.stop()
    return results


def test_batcher_groups_concurrent_requests_into_one_call():
    calls: list[list[int]] = []

    def handler(items):
        calls.append(list(items))
        return [i * 10 for i in items]

    results = _run(_arriving_together(handler, [[i, i + 100] for i in range(4)]))
    assert results == [[0, 1000], [10, 1010], [20, 1020], [30, 1030]]
    assert calls == [[0, 100, 1, 101, 2, 102, 3, 103]]


def test_batcher_never_exceeds_max_batch_size():
    sizes: list[int] = []

    def handler(items):
        sizes.append(len(items))
        return items

    async def scenario():
        batcher = Batcher(handler, max_batch_size=4, max_wait_ms=1, max_queue=100)
        futures = [batcher.submit([i]) for i in range(10)]
        await asyncio.gather(*futures)
        await batcher.stop()

    _run(scenario())
    assert sum(sizes) == 10 and max(sizes) <= 4


def test_batcher_refuses_work_over_max_queue():
    async def scenario():
        batcher = Batcher(lambda items: items, max_batch_size=4, max_wait_ms=1000, max_queue=3)
        batcher.arriving()  # keep the window open so nothing flushes
        batcher.submit([1, 2])
        with pytest.raises(OverloadedError) as info:
            batcher.submit([3, 4])
        await batcher.stop()
        return info.value

    error = _run(scenario())
    assert error.status_code == 503 and "max_queue=3" in error.message


def test_batcher_fails_every_request_of_a_batch_whose_handler_raises():
    def handler(items):
        if min(items) < 3:
            raise ValueError("boom")
        return items

    async def scenario():
        batcher = Batcher(handler, max_batch_size=4, max_wait_ms=1, max_queue=10)
        futures = [batcher.submit([1]), batcher.submit([2])]
        results = await asyncio.gather(*futures, return_exceptions=True)
        ok = await asyncio.wait_for(batcher.submit([3]), 1)  # still running
        await batcher.stop()
        return results, ok

    results, ok = _run(scenario())
    assert all(isinstance(r, ValueError) for r in results)
    assert ok == [3]  # the batcher keeps serving after a failing batch


def test_an_exception_returned_for_one_input_fails_only_its_request():
    calls = []

    def handler(items):
        calls.append(list(items))
        return [OverloadedError(f"bad {i}") if i == 2 else i * 10 for i in items]

    async def scenario():
        batcher = Batcher(handler, max_batch_size=8, max_wait_ms=50, max_queue=10)
        for _ in range(3):
            batcher.arriving()  # three requests on their way in: the batcher waits for them
        futures = []
        for items in ([1], [2, 3], [4]):
            batcher.arrived()
            futures.append(batcher.submit(items))
        results = await asyncio.gather(*futures, return_exceptions=True)
        await batcher.stop()
        return results

    first, second, third = _run(scenario())
    assert calls == [[1, 2, 3, 4]]  # one batch
    assert first == [10] and third == [40]
    assert isinstance(second, OverloadedError) and str(second) == "bad 2"  # its request fails, with that error


def test_batcher_rejects_a_handler_that_returns_the_wrong_number_of_results():
    async def scenario():
        batcher = Batcher(lambda items: items[:1], max_batch_size=4, max_wait_ms=1, max_queue=10)
        result = await asyncio.gather(batcher.submit([1, 2]), return_exceptions=True)
        await batcher.stop()
        return result[0]

    error = _run(scenario())
    assert "returned 1 results for a batch of 2" in str(error)


def test_async_handlers_are_awaited():
    async def handler(items):
        await asyncio.sleep(0)
        return [x + 1 for x in items]

    async def scenario():
        batcher = Batcher(handler, max_batch_size=4, max_wait_ms=1, max_queue=10, is_async=True)
        result = await batcher.submit([1, 2])
        await batcher.stop()
        return result

    assert _run(scenario()) == [2, 3]


def test_fast_handlers_move_onto_the_event_loop_and_slow_ones_stay_on_the_worker_thread(monkeypatch):
    import threading
    import time

    monkeypatch.setenv("KAON_PROCESS_CORES", "2")  # a process with a core for the thread (one core: next test)

    def run(delay_s: float, count: int) -> list[str]:
        threads: list[str] = []

        def handler(items):
            time.sleep(delay_s)
            threads.append(threading.current_thread().name)
            return items

        async def scenario():
            batcher = Batcher(handler, max_batch_size=4, max_wait_ms=1, max_queue=10)
            for i in range(count):
                await batcher.submit([i])
            await batcher.stop()

        _run(scenario())
        return threads

    # past one probe: on a loaded machine (a CI run at twice its usual time) the first batch, timed in the thread,
    # can take over INLINE_MAX_S and keep a fast handler there until the probe brings it back
    fast = run(0.0, PROBE_EVERY + 4)
    assert fast[0].startswith("kaon-") and fast[-1] == threading.main_thread().name
    assert all(name.startswith("kaon-") for name in run(0.002, 12))


@pytest.mark.parametrize("cores", ["1", "2"])
def test_on_one_core_batches_up_to_the_one_core_limit_run_on_the_event_loop(monkeypatch, cores):
    """A worker with one core to itself gains nothing from the batch thread: its 20 ms batches run inline."""
    import threading
    import time

    from kaon.serving import batcher as batcher_module

    monkeypatch.setenv("KAON_PROCESS_CORES", cores)
    assert batcher_module.default_inline_max_s() == (batcher_module.ONE_CORE_INLINE_MAX_S if cores == "1"
                                                     else batcher_module.INLINE_MAX_S)
    on_loop: list[bool] = []

    def handler(items):
        on_loop.append(threading.current_thread() is threading.main_thread())
        time.sleep(0.02)
        return items

    async def scenario():
        batcher = Batcher(handler, max_batch_size=4, max_wait_ms=1, max_queue=10)
        for i in range(6):
            assert await batcher.submit([i]) == [i]
        await batcher.stop()

    _run(scenario())
    # the first batch is timed in the thread; then 20 ms is under the one-core limit and over the usual one
    assert on_loop == ([False] + [True] * 5 if cores == "1" else [False] * 6)
    # an explicit limit wins over the process's default
    assert Batcher(handler, max_batch_size=1, max_wait_ms=1, max_queue=1, inline_max_s=0.5).inline_max_s == 0.5


def test_a_one_core_process_driving_a_gpu_keeps_its_batches_in_the_thread(monkeypatch):
    """While a batch runs on the card, the event loop decodes the next requests: inline would leave the GPU idle."""
    import sys
    import types

    from kaon.serving import batcher as batcher_module

    monkeypatch.setenv("KAON_PROCESS_CORES", "1")
    for started in (False, True):  # a stand-in for torch: only whether CUDA was initialized matters here
        fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda started=started: started))
        monkeypatch.setitem(sys.modules, "torch", fake)
        assert batcher_module.default_inline_max_s() == (batcher_module.INLINE_MAX_S if started
                                                         else batcher_module.ONE_CORE_INLINE_MAX_S)


def test_a_process_counts_its_cores_from_its_worker_share_or_its_affinity(monkeypatch):
    import os

    from kaon._internal.processes import available_cores, process_cores

    monkeypatch.setenv("KAON_PROCESS_CORES", "3")
    assert process_cores() == 3
    for unusable in ("", "0", "two", "-1"):  # not a share: every core this process may run on
        monkeypatch.setenv("KAON_PROCESS_CORES", unusable)
        assert process_cores() == available_cores() == len(os.sched_getaffinity(0))


def test_a_fast_handler_timed_slow_in_the_thread_is_probed_back_onto_the_event_loop(monkeypatch):
    """Under load a worker thread's timing counts its waits for the GIL: a periodic inline probe corrects it."""
    import threading
    import time

    from kaon.serving import batcher as batcher_module

    # limits far from the sleeps below, so a loaded machine's longer sleeps cannot cross them
    monkeypatch.setenv("KAON_PROCESS_CORES", "2")
    monkeypatch.setattr(batcher_module, "PROBE_EVERY", 5)
    monkeypatch.setattr(batcher_module, "INLINE_MAX_S", 0.01)
    monkeypatch.setattr(batcher_module, "PROBE_MAX_S", 1.0)

    def run(thread_delay_s: float, loop_delay_s: float, batches: int) -> list[bool]:
        on_loop: list[bool] = []

        def handler(items):
            inline = threading.current_thread() is threading.main_thread()
            on_loop.append(inline)
            time.sleep(loop_delay_s if inline else thread_delay_s)
            return items

        async def scenario():
            batcher = Batcher(handler, max_batch_size=4, max_wait_ms=1, max_queue=10)
            for i in range(batches):
                await batcher.submit([i])
            await batcher.stop()

        _run(scenario())
        return on_loop

    # looks like 30 ms in the thread (over the inline limit), is instant on the loop: probed after 5, stays
    looked_slow = run(0.03, 0.0, 12)
    assert looked_slow[:6] == [False] * 5 + [True] and all(looked_slow[6:])
    # really 30 ms everywhere: the probe runs once every 5 threaded batches and hands it back each time
    really_slow = run(0.03, 0.03, 13)
    assert [i for i, inline in enumerate(really_slow) if inline] == [5, 11]
    # over PROBE_MAX_S: never blocks the loop, not even for a probe
    monkeypatch.setattr(batcher_module, "PROBE_MAX_S", 0.02)
    assert not any(run(0.03, 0.03, 8))


def test_deadlines_fail_only_the_late_futures_with_one_timer_at_a_time():
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(0.05, lambda: TimeoutError("late"))
        answered, late = loop.create_future(), loop.create_future()
        deadlines.add(answered)
        deadlines.add(late)
        answered.set_result("in time")
        await asyncio.sleep(0.02)
        later = loop.create_future()
        deadlines.add(later)  # the done head is dropped here: the queue is what is in flight
        assert len(deadlines) == 2
        await asyncio.sleep(0.045)  # past the second deadline, not the third
        assert answered.result() == "in time"
        with pytest.raises(TimeoutError, match="late"):
            late.result()
        assert not later.done() and len(deadlines) == 1  # the timer re-armed for the next deadline
        await asyncio.sleep(0.04)
        with pytest.raises(TimeoutError):
            later.result()
        assert len(deadlines) == 0
        deadlines.add(loop.create_future())
        deadlines.close()  # at shutdown: no timer left behind
        assert len(deadlines) == 0

    asyncio.run(scenario())


def test_a_request_that_fails_its_batch_fails_alone_and_the_others_are_answered():
    calls: list[list[int]] = []

    def handler(items):  # like a model given an index out of its embedding's range: the whole call fails
        calls.append(list(items))
        if any(i < 0 for i in items):
            raise ValueError(f"index {min(items)} is out of range")
        return [i * 10 for i in items]

    good, bad, other = _run(_arriving_together(handler, [[1, 2], [-5], [3]]))
    assert good == [10, 20] and other == [30]
    assert isinstance(bad, ValueError) and "index -5" in str(bad)
    assert calls == [[1, 2, -5, 3], [1, 2], [-5], [3]]  # the batch, then each request alone


def test_a_lone_failing_request_is_not_run_twice():
    calls: list[list[int]] = []

    def handler(items):
        calls.append(list(items))
        raise ValueError("broken")

    async def scenario():
        batcher = Batcher(handler, max_batch_size=16, max_wait_ms=1, max_queue=100)
        with pytest.raises(ValueError, match="broken"):
            await batcher.submit([1, 2])
        await batcher.stop()

    _run(scenario())
    assert calls == [[1, 2]]


def test_run_by_shape_runs_each_shape_once_and_keeps_the_order():
    from kaon.serving.batcher import run_by_shape

    calls: list[list[str]] = []

    def run(items):
        calls.append(items)
        return [item.upper() for item in items]

    items = ["ab", "cde", "fg", "h", "ij"]
    assert run_by_shape(items, [len(i) for i in items], run) == ["AB", "CDE", "FG", "H", "IJ"]
    assert calls == [["ab", "fg", "ij"], ["cde"], ["h"]]
    calls.clear()
    assert run_by_shape(["ab", "cd"], [2, 2], run) == ["AB", "CD"] and calls == [["ab", "cd"]]  # one call
