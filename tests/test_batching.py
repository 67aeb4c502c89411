"""Micro-batching: concurrent requests share forward passes, and each gets exactly its own answer."""

import asyncio
import time

import numpy as np

from batching import MicroBatcher, Result


class RecordingForward:
    """A stand-in policy: action = 2 * observation, probabilities = the observation's row sums; records calls."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    async def __call__(self, observations: np.ndarray) -> Result:
        self.sizes.append(len(observations))
        return observations * 2, observations.sum(axis=1, keepdims=True)


def requests(count: int, rows: int = 1) -> list[np.ndarray]:
    return [np.full((rows, 3), float(i), dtype=np.float32) + np.arange(rows)[:, None] for i in range(count)]


async def run_all(batcher: MicroBatcher, forward: RecordingForward, batches: list[np.ndarray], key: str = "m"):
    return await asyncio.gather(*(batcher.run(key, observations, forward) for observations in batches))


def assert_own_answers(batches: list[np.ndarray], results: list[Result]) -> None:
    for observations, (actions, probabilities) in zip(batches, results, strict=True):
        np.testing.assert_array_equal(actions, observations * 2)
        np.testing.assert_array_equal(probabilities, observations.sum(axis=1, keepdims=True))


def test_concurrent_requests_share_one_forward_pass() -> None:
    forward, batches = RecordingForward(), requests(20, rows=2)
    results = asyncio.run(run_all(MicroBatcher(max_batch=64), forward, batches))
    assert forward.sizes == [40]
    assert_own_answers(batches, results)


def test_a_batch_never_holds_more_than_max_batch() -> None:
    forward, batches = RecordingForward(), requests(10, rows=3)
    results = asyncio.run(run_all(MicroBatcher(max_batch=8), forward, batches))
    assert sum(forward.sizes) == 30 and max(forward.sizes) <= 8
    assert forward.sizes == [6, 6, 6, 6, 6]  # a request that would overflow a batch opens the next one
    assert_own_answers(batches, results)


def test_a_request_as_large_as_a_batch_runs_alone() -> None:
    forward = RecordingForward()
    batches = [*requests(2), np.ones((16, 3), dtype=np.float32)]
    results = asyncio.run(run_all(MicroBatcher(max_batch=16), forward, batches))
    assert sorted(forward.sizes) == [2, 16]
    assert_own_answers(batches, results)


def test_models_are_batched_apart() -> None:
    forward_a, forward_b = RecordingForward(), RecordingForward()
    batcher = MicroBatcher()

    async def both() -> tuple[list[Result], list[Result]]:
        return await asyncio.gather(
            run_all(batcher, forward_a, requests(3), "a"), run_all(batcher, forward_b, requests(5), "b")
        )

    results_a, results_b = asyncio.run(both())
    assert forward_a.sizes == [3] and forward_b.sizes == [5]
    assert_own_answers(requests(3), results_a)
    assert_own_answers(requests(5), results_b)


def test_a_lone_request_does_not_wait_for_the_window() -> None:
    forward = RecordingForward()
    batcher = MicroBatcher(max_wait_s=1.0)

    async def timed() -> float:
        await batcher.run("m", requests(1)[0], forward)  # warm the loop
        started = time.perf_counter()
        await batcher.run("m", requests(1)[0], forward)
        return time.perf_counter() - started

    assert asyncio.run(timed()) < 0.05
    assert forward.sizes == [1, 1]


def test_the_window_bounds_how_long_a_batch_collects() -> None:
    """Requests that keep arriving, one per turn of the loop, are cut into batches by max_wait_s."""
    forward = RecordingForward()
    batcher = MicroBatcher(max_batch=10_000, max_wait_s=0.005)

    async def trickle() -> list[Result]:
        tasks = []
        stop_at = time.perf_counter() + 0.05
        while time.perf_counter() < stop_at:
            tasks.append(asyncio.ensure_future(batcher.run("m", requests(1)[0], forward)))
            await asyncio.sleep(0)
        return await asyncio.gather(*tasks)

    results = asyncio.run(trickle())
    assert len(forward.sizes) >= 3 and sum(forward.sizes) == len(results)


def test_errors_reach_every_caller_of_the_batch() -> None:
    async def broken(observations: np.ndarray) -> Result:
        raise RuntimeError("forward failed")

    async def go() -> list[object]:
        batcher = MicroBatcher()
        return await asyncio.gather(*(batcher.run("m", obs, broken) for obs in requests(4)), return_exceptions=True)

    errors = asyncio.run(go())
    assert all(isinstance(error, RuntimeError) and str(error) == "forward failed" for error in errors)


def test_a_caller_that_went_away_leaves_the_others_their_answers() -> None:
    forward, batches = RecordingForward(), requests(4)

    async def go() -> list[Result]:
        batcher = MicroBatcher()
        tasks = [asyncio.ensure_future(batcher.run("m", obs, forward)) for obs in batches]
        await asyncio.sleep(0)  # all four have joined the batch
        tasks[1].cancel()
        return await asyncio.gather(*(tasks[i] for i in (0, 2, 3)))

    results = asyncio.run(go())
    assert forward.sizes == [4]
    assert_own_answers([batches[i] for i in (0, 2, 3)], results)


def test_probabilities_may_be_absent() -> None:
    async def go() -> list[Result]:
        batcher = MicroBatcher()

        async def no_probabilities(observations: np.ndarray) -> Result:
            return observations + 1, None

        return await asyncio.gather(*(batcher.run("m", obs, no_probabilities) for obs in requests(3)))

    for observations, (actions, probabilities) in zip(requests(3), asyncio.run(go()), strict=True):
        np.testing.assert_array_equal(actions, observations + 1)
        assert probabilities is None


def test_when_the_first_caller_goes_away_the_others_still_get_their_answers() -> None:
    """The first request of a batch runs it; cancelled while it collects, it hands the batch on."""
    forward, batches = RecordingForward(), requests(4)

    async def go() -> list[Result]:
        batcher = MicroBatcher(max_wait_s=1.0)
        tasks = [asyncio.ensure_future(batcher.run("m", obs, forward)) for obs in batches]
        await asyncio.sleep(0)
        tasks[0].cancel()
        return await asyncio.gather(*tasks[1:])

    results = asyncio.run(go())
    assert forward.sizes == [4]
    assert_own_answers(batches[1:], results)
