"""Batching across requests: photos from concurrent requests share model calls.

Each photo waits in one queue per model. A free stream takes what is queued, up to
`max_batch` photos, waiting at most `max_wait_ms` for more, and runs them as one batch in
its own thread (`Predictor.forward`, the batch tagger's path). On a 2-core CPU batches of
one on parallel single-threaded streams were fastest (bench.service), so that is the CPU
default; a GPU gets larger batches on one stream.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import torch

from landmark.predict import BatchPlan, Predictor
from landmark.serve.metrics import Metrics


class Batcher:
    """Queues uint8 squares (`Predictor.prepare`) for one predictor and answers each with
    its (probabilities, embedding) row."""

    def __init__(self, name: str, predictor: Predictor, plan: BatchPlan,
                 metrics: Metrics) -> None:
        self.name, self.predictor, self.plan, self.metrics = name, predictor, plan, metrics
        self.queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] = asyncio.Queue()
        self.pool = ThreadPoolExecutor(plan.streams, thread_name_prefix=f"model-{name}")
        self.free = asyncio.Semaphore(plan.streams)
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._dispatch())

    async def close(self) -> None:
        if self.task:
            self.task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, square: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((square, future))
        self.metrics.queue.labels(self.name).set(self.queue.qsize())
        return await future

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            await self.free.acquire()  # photos queued meanwhile join this batch
            deadline = loop.time() + self.plan.max_wait_ms / 1000
            while len(batch) < self.plan.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self.queue.get(), left))
                    except TimeoutError:
                        break
            self.metrics.queue.labels(self.name).set(self.queue.qsize())
            self.metrics.batch.labels(self.name).observe(len(batch))
            run = loop.run_in_executor(self.pool, self.predictor.forward,
                                       torch.stack([square for square, _ in batch]))
            run.add_done_callback(lambda done, batch=batch: self._answer(done, batch))

    def _answer(self, done: asyncio.Future, batch: list) -> None:
        self.free.release()
        error = done.exception()
        for i, (_, future) in enumerate(batch):
            if future.done():  # its request was cancelled (client gone)
                continue
            if error is not None:
                future.set_exception(error)
            else:
                probs, emb = done.result()
                future.set_result((probs[i], emb[i]))
