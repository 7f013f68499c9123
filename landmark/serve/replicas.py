"""Replicas on Ray Serve: the app of `python -m landmark.serve`, one copy per replica.

    serve run deploy/ray-serve.yaml    # from the repo root: 2 replicas on 127.0.0.1:8000

The deployment wraps `create_app` with `@serve.ingress`; no route is copied. Each replica
reads its settings from the environment as the plain server does (`Settings.from_env`),
loads the models in its constructor, so that Serve sends it nothing before it can answer,
and batches photos across requests with `@serve.batch`, through `run_batch`, the plain
server's path. The largest batch and the longest wait come from the deployment's
`user_config` and change without a restart. The replica runs one batch at a time per CPU
it was given (`ray_actor_options.num_cpus`), each on one thread.

The place store is one folder that every replica reads (a ReadWriteMany volume on
Kubernetes). Writes land by a rename under a file lock, and each tag checks the store's
version, so a place taught through one replica is used by all of them from their next
request on, and none sees half of one.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import ray
import torch
from fastapi import FastAPI
from ray import serve

from landmark.serve.batching import Item, Row, run_batch
from landmark.serve.metrics import Metrics
from landmark.serve.service import Settings, create_app, load_models

BATCH = {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}  # the CPU plan (bench.service)


@serve.deployment(name="Tagger", ray_actor_options={"num_cpus": 1}, user_config=BATCH,
                  max_ongoing_requests=32, health_check_period_s=5,
                  graceful_shutdown_timeout_s=5)
@serve.ingress()
class Tagger:
    """One replica: the models, its batch method and the FastAPI app around them."""

    def __init__(self) -> None:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        streams = max(1, int(cpus))
        torch.set_num_threads(1)  # one thread a batch, `streams` batches at once
        self.settings = Settings.from_env()
        self.predictors = load_models(self.settings.models, self.settings.runtime)
        self.metrics = Metrics()
        self.pool = ThreadPoolExecutor(streams, thread_name_prefix="model")
        self.infer = serve.batch(max_concurrent_batches=streams, **BATCH)(self._run)

    async def _run(self, items: list[Item]) -> list[Row]:
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, run_batch, self.predictors, items, self.metrics)

    def reconfigure(self, config: dict) -> None:
        """Serve's user_config: `max_batch_size` and `batch_wait_timeout_s`."""
        unknown = set(config) - set(BATCH)
        if unknown:
            raise ValueError(f"unknown user_config keys {sorted(unknown)}; "
                             f"expected {sorted(BATCH)}")
        self.infer.set_max_batch_size(int(config.get("max_batch_size", 1)))
        self.infer.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.0)))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.settings, self.predictors, self.infer, self.metrics)


app = Tagger.bind()
