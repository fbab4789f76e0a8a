"""Dynamic micro-batching: concurrent compatible requests run as one batch.

Requests wait in a bounded queue. The worker takes the oldest, then for up to ``max_wait_ms``
adds every queued request with the same key (model, sampler, steps, guidance scale, sampler
settings; an adaptive sampler's request has a key of its own) that still fits in
``max_batch_images``; the rest keep their place for the next batch. Model calls run on one
worker thread, so the event loop keeps answering health checks and metrics meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class Overloaded(Exception):
    """The queue is full: answer 503 with Retry-After."""


class ShuttingDown(Exception):
    """The server is draining and takes no new work."""


@dataclass
class Job:
    """One request in the queue: jobs with equal ``key`` (model and sampler settings) may
    share a batch of up to ``max_batch_images`` images."""

    key: Hashable
    images: int
    payload: Any
    enqueued: float = field(default_factory=time.perf_counter)
    future: asyncio.Future | None = None
    started: float | None = None


@dataclass
class BatchStats:
    """What a finished job learns about the batch it ran in."""

    queue_s: float
    compute_s: float
    batch_images: int
    batch_requests: int


RunBatch = Callable[[list[Job]], list[Any]]


class MicroBatcher:
    """Collects jobs into batches and runs ``run_batch(jobs) -> results`` (same order)."""

    def __init__(self, run_batch: RunBatch, *, max_batch_images: int = 16,
                 max_wait_ms: float = 10.0, max_queue: int = 64,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        self.run_batch = run_batch
        self.max_batch_images = max_batch_images
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.queue: list[Job] = []
        self.running = 0
        self.closed = False
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="entpruner-model")

    @property
    def depth(self) -> int:
        """Jobs waiting (the ``/metrics`` queue depth)."""
        return len(self.queue)

    async def run_in_worker(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the model thread. All PyTorch work of a server (loading, warm-up,
        batches) goes through this one thread: on CPU, OpenMP thread teams started from two
        threads fight over the cores and make every call several times slower."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def start(self) -> None:
        """Start the batching loop on the running event loop (the app's startup)."""
        self._wakeup = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, job: Job) -> tuple[Any, BatchStats]:
        """Queue ``job`` and wait for its result. Raises Overloaded or ShuttingDown at once."""
        if self.closed:
            raise ShuttingDown
        if len(self.queue) >= self.max_queue:
            raise Overloaded
        job.future = asyncio.get_running_loop().create_future()
        self.queue.append(job)
        self._wakeup.set()
        return await job.future

    def cancel(self, job: Job) -> None:
        """Drop a job that has not started (its client gave up)."""
        if job in self.queue:
            self.queue.remove(job)

    async def drain(self) -> None:
        """Stop taking work, finish everything accepted, then stop the worker."""
        self.closed = True
        while self.queue or self.running:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        while True:
            while not self.queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = await self._collect()
            await self._run(batch)

    async def _collect(self) -> list[Job]:
        first = self.queue.pop(0)
        batch, images = [first], first.images
        deadline = time.perf_counter() + self.max_wait_s
        while images < self.max_batch_images:
            for job in list(self.queue):
                if job.key == first.key and images + job.images <= self.max_batch_images:
                    self.queue.remove(job)
                    batch.append(job)
                    images += job.images
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or images >= self.max_batch_images:
                break
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        return batch

    async def _run(self, batch: list[Job]) -> None:
        self.running = len(batch)
        start = time.perf_counter()
        for job in batch:
            job.started = start
        images = sum(job.images for job in batch)
        if self.on_batch:
            self.on_batch(images, len(batch))
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.run_batch, batch)
        except Exception as error:  # one bad batch fails its own requests, not the server
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
        else:
            compute = time.perf_counter() - start
            for job, result in zip(batch, results):
                stats = BatchStats(start - job.enqueued, compute, images, len(batch))
                if not job.future.done():
                    job.future.set_result((result, stats))
        finally:
            self.running = 0
