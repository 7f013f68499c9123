"""Batching across requests: photos from concurrent requests share model calls.

Every decoded photo becomes an item (model name, uint8 square from `Predictor.prepare`).
`run_batch` is the one path from a batch of items to their rows: the items of each model
stacked into one `Predictor.forward` call, the batch tagger's path. Two schedulers feed
it: the plain server's `Batcher` below, and on Ray Serve a replica's `@serve.batch`
method (landmark.serve.replicas).

The Batcher keeps one queue. A free stream takes what is queued, up to `max_batch` items,
waiting at most `max_wait_ms` for more, and runs them in its own thread. On a 2-core CPU
batches of one on parallel single-threaded streams were fastest (bench.service), so that
is the CPU default; a GPU gets larger batches on one stream.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import torch

from landmark.predict import BatchPlan, Predictor
from landmark.serve.metrics import Metrics

Item = tuple[str, torch.Tensor]  # (model name, uint8 square)
Row = tuple[torch.Tensor, torch.Tensor]  # (probabilities, embedding)


def run_batch(predictors: dict[str, Predictor], items: list[Item],
              metrics: Metrics) -> list[Row]:
    """Each item's (probabilities, embedding), in order: one model call per model."""
    rows: list[Row | None] = [None] * len(items)
    for name in dict.fromkeys(name for name, _ in items):
        at = [i for i, (n, _) in enumerate(items) if n == name]
        metrics.batch.labels(name).observe(len(at))
        probs, emb = predictors[name].forward(torch.stack([items[i][1] for i in at]))
        for j, i in enumerate(at):
            rows[i] = (probs[j], emb[j])
    return rows


class Batcher:
    """Queues items for the predictors and answers each with its row."""

    def __init__(self, predictors: dict[str, Predictor], plan: BatchPlan,
                 metrics: Metrics) -> None:
        self.predictors, self.plan, self.metrics = predictors, plan, metrics
        self.queue: asyncio.Queue[tuple[Item, asyncio.Future]] = asyncio.Queue()
        self.pool = ThreadPoolExecutor(plan.streams, thread_name_prefix="model")
        self.free = asyncio.Semaphore(plan.streams)
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._dispatch())

    async def close(self) -> None:
        if self.task:
            self.task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, item: Item) -> Row:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        self.metrics.queue.set(self.queue.qsize())
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
            self.metrics.queue.set(self.queue.qsize())
            run = loop.run_in_executor(self.pool, run_batch, self.predictors,
                                       [item for item, _ in batch], self.metrics)
            run.add_done_callback(lambda done, batch=batch: self._answer(done, batch))

    def _answer(self, done: asyncio.Future, batch: list) -> None:
        self.free.release()
        error = done.exception()
        for (_, future), row in zip(batch, [None] * len(batch) if error else done.result(),
                                    strict=True):
            if future.done():  # its request was cancelled (client gone)
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(row)
