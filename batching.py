"""Micro-batching: observations that concurrent requests send to the same model within a short window run as one
forward pass, and each caller gets back exactly the rows of its own observations (as Ray Serve's ``@serve.batch``
and BentoML's adaptive batching do).

A batch opens with the first request for a model and closes when the first of these happens:

- it holds ``max_batch`` observations (a request that would overflow it closes it and opens the next one);
- a turn of the event loop brought no new request: nobody else is coming now, so a lone request is not kept
  waiting (under 0.1 ms at concurrency 1);
- ``max_wait_s`` has passed since it opened.

The forward pass is the caller's coroutine: it decides where the work runs (on the event loop for a tiny policy,
whose forward costs less than a hop to a thread; in a worker thread for a large one).
"""

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Result = tuple[np.ndarray, np.ndarray | None]
# observations -> (actions, per-observation probabilities or None), one row per observation
Forward = Callable[[np.ndarray], Awaitable[Result]]


@dataclass
class _Batch:
    forward: Forward
    parts: list[np.ndarray] = field(default_factory=list)
    waiters: list[asyncio.Future[Result]] = field(default_factory=list)
    size: int = 0
    closed: bool = False
    answered: bool = False


class MicroBatcher:
    """Groups concurrent ``run`` calls with the same key into one call of their ``forward``.

    :param max_batch: Most observations in one forward pass
    :param max_wait_s: Longest a request waits for others to join its batch
    """

    def __init__(self, max_batch: int = 64, max_wait_s: float = 0.002) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._open: dict[Hashable, _Batch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, key: Hashable, observations: np.ndarray, forward: Forward) -> Result:
        """``forward(observations)``, computed together with the other requests for ``key`` of the moment."""
        if len(observations) >= self.max_batch:  # a full batch by itself
            return await forward(observations)
        batch = self._open.get(key)
        if batch is not None and batch.size + len(observations) > self.max_batch:
            self._seal(key, batch)  # its leader runs it at its next turn
            batch = None
        leads = batch is None
        if batch is None:
            batch = self._open[key] = _Batch(forward)
        waiter: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        batch.parts.append(observations)
        batch.waiters.append(waiter)
        batch.size += len(observations)
        if batch.size >= self.max_batch:
            self._seal(key, batch)
        if leads:  # the first request of a batch collects and runs it: no task of its own to start
            await self._lead(key, batch)
        return await waiter

    def _start(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _lead(self, key: Hashable, batch: _Batch) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        seen = 0
        try:
            # Let other requests join while each turn of the loop brings new ones, up to the deadline.
            while not batch.closed and batch.size > seen and loop.time() < deadline:
                seen = batch.size
                await asyncio.sleep(0)
            await self._execute(self._seal(key, batch))
        except asyncio.CancelledError:
            if not batch.answered:  # the leader's client went away: the others still get their answers
                self._start(self._execute(self._seal(key, batch)))
            raise

    def _seal(self, key: Hashable, batch: _Batch) -> _Batch:
        batch.closed = True
        if self._open.get(key) is batch:
            del self._open[key]
        return batch

    async def _execute(self, batch: _Batch) -> None:
        observations = batch.parts[0] if len(batch.parts) == 1 else np.concatenate(batch.parts)
        try:
            actions, probabilities = await batch.forward(observations)
        except Exception as error:  # every caller of the batch hears of it: the forward pass is theirs too
            batch.answered = True
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_exception(error)
            return
        batch.answered = True
        start = 0
        for part, waiter in zip(batch.parts, batch.waiters, strict=True):
            end = start + len(part)
            if not waiter.done():  # a caller that went away (client disconnected) is skipped
                waiter.set_result((actions[start:end], probabilities[start:end] if probabilities is not None else None))
            start = end
