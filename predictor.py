"""How checked observations become actions for ``POST /inference``.

Deterministic requests run the model's deterministic policy (``export.py``), built once per loaded model: its ONNX
export in onnxruntime (``engine="onnxruntime"``, the default: a fifth of torch's cost per call for a small
policy) or the torch module itself under ``torch.inference_mode`` (``engine="torch"``, and always for models on a
GPU), through the micro-batcher when it is on. Stochastic requests sample from SB3's distribution.

A forward pass small enough (observations x parameters up to ``inline_max_work``) runs on the event loop, where it
costs less than the hop to a worker thread; a larger one goes to a thread, so it never holds up other requests.
"""

import asyncio
import logging
import weakref
from collections.abc import Callable
from functools import partial
from typing import Literal

import anyio
import numpy as np
import torch as th
from gymnasium import spaces

from artifacts import TrainedModel
from batching import MicroBatcher, Result
from errors import ModelNotFound
from export import DeterministicPolicy, ExportUnsupported, OnnxPolicy, export_onnx
from grpo import GRPO
from jobs import JobRunner
from store import ModelStore

logger = logging.getLogger("grpo.predictor")

Engine = Literal["onnxruntime", "torch"]
Policy = OnnxPolicy | DeterministicPolicy


def sample(model: GRPO, observations: np.ndarray, deterministic: bool = False) -> Result:
    """Actions through SB3's distribution (sampled unless ``deterministic``), with the probabilities of each
    action where the space is Discrete: one forward pass gives both."""
    if isinstance(model.action_space, spaces.Discrete):
        observation, _ = model.policy.obs_to_tensor(observations)
        with th.inference_mode():
            distribution = model.policy.get_distribution(observation)
            actions = distribution.get_actions(deterministic=deterministic)
            probabilities = distribution.distribution.probs
        return actions.cpu().numpy(), probabilities.cpu().numpy()
    actions, _ = model.predict(observations, deterministic=deterministic)
    return actions, None


class Predictor:
    """Models and actions for the inference route: the model cache without a thread hop, the deterministic fast
    path, micro-batching, and where the work runs.

    :param store: Where models are loaded from
    :param runner: Asked which job is still training a model that is not saved yet
    :param max_observations: Most observations one request may carry
    :param batcher: Groups concurrent deterministic requests per model (None: each request alone)
    :param inline_max_work: Largest observations x parameters of a forward pass run on the event loop
    :param on_batch: Told the number of observations of each forward pass (the metrics)
    :param engine: What runs the deterministic policy: "onnxruntime" or "torch"
    :param threads: onnxruntime's threads per session
    """

    def __init__(
        self,
        store: ModelStore,
        runner: JobRunner,
        max_observations: int = 1024,
        batcher: MicroBatcher | None = None,
        inline_max_work: int = 4_000_000,
        on_batch: Callable[[int], None] | None = None,
        engine: Engine = "onnxruntime",
        threads: int = 1,
    ) -> None:
        self.store = store
        self.runner = runner
        self.max_observations = max_observations
        self.batcher = batcher
        self.inline_max_work = inline_max_work
        self.on_batch = on_batch
        self.engine = engine
        self.threads = threads
        # One module per loaded model, dropped with the model when the cache lets it go.
        self._policies: weakref.WeakKeyDictionary[GRPO, Policy | None] = weakref.WeakKeyDictionary()
        self._sizes: weakref.WeakKeyDictionary[GRPO, int] = weakref.WeakKeyDictionary()
        self._compiling = asyncio.Lock()

    async def model(self, name: str) -> TrainedModel:
        """The model named ``name``: from the cache on the event loop, else read from disk in a thread."""
        model = self.store.loaded(name)
        if model is None:
            model = await anyio.to_thread.run_sync(self._load, name)
        return model

    def _load(self, name: str) -> TrainedModel:
        try:
            return self.store.load(name)
        except ModelNotFound:
            job = self.runner.training_job_for(name)
            if job is None:
                raise
            # The document's example asks for a prediction right after starting training: say when to come back.
            raise ModelNotFound(
                f"Model {name!r} is not trained yet: job {job.job_id} is {job.status.value} ({job.progress:.0%} done)"
            ) from None

    async def predict(self, trained: TrainedModel, observations: np.ndarray, deterministic: bool) -> Result:
        """Actions for the environment's own observations: a model trained under VecNormalize has its statistics
        applied (baked into the fast path's module)."""
        model = trained.model
        policy = await self._policy(trained) if deterministic else None
        if policy is None:
            normalized = trained.normalize(observations)
            return await self._run(model, partial(sample, model, deterministic=deterministic), normalized)

        async def forward(batch: np.ndarray) -> Result:
            return await self._run(model, policy.predict, batch)

        if self.batcher is None:
            return await forward(observations)
        return await self.batcher.run(policy, observations, forward)

    async def _policy(self, trained: TrainedModel) -> Policy | None:
        model = trained.model
        if model not in self._policies:
            # Once per loaded model, however many requests ask at once; an export takes a while: in a thread.
            async with self._compiling:
                if model not in self._policies:
                    self._policies[model] = await anyio.to_thread.run_sync(self._compile, trained)
        return self._policies[model]

    def _compile(self, trained: TrainedModel) -> Policy | None:
        model = trained.model
        try:
            module = DeterministicPolicy(model.policy, trained.normalizer)
        except ExportUnsupported as reason:  # e.g. Dict observations: SB3's own predict serves them
            logger.info("no fast path for a %s: %s", type(model.policy).__name__, reason)
            return None
        if self.engine == "onnxruntime" and module.device.type == "cpu":
            return OnnxPolicy(export_onnx(model, trained.normalizer), self.threads)
        return module

    async def _run(self, model: GRPO, function: Callable[[np.ndarray], Result], observations: np.ndarray) -> Result:
        if self.on_batch is not None:
            self.on_batch(len(observations))
        if len(observations) * self._parameters(model) <= self.inline_max_work:
            return function(observations)
        return await anyio.to_thread.run_sync(function, observations)

    def _parameters(self, model: GRPO) -> int:
        if model not in self._sizes:
            self._sizes[model] = sum(parameter.numel() for parameter in model.policy.parameters())
        return self._sizes[model]
