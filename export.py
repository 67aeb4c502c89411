"""A trained model's deterministic policy as one plain torch module, and that module written as an ONNX file.

``DeterministicPolicy`` computes what ``model.predict(observation, deterministic=True)`` returns (SB3's
preprocessing, the actor's layers, the distribution's mode, then clipping or unscaling for Box actions), with an
optional ``VecNormalize`` observation normalisation in front. The service's inference route runs it for
deterministic requests, and ``export_onnx`` writes the same module to ONNX, so what the server answers and what
the exported file computes are one piece of code.

    from export import export_onnx
    export_onnx(GRPO.load("model.zip"), normalizer=None, path="model.onnx")

The ONNX graph takes ``observation`` (float32, ``[batch, *observation_shape]``; Discrete observations as
``[batch]``) and gives ``action`` (int64 for Discrete, MultiDiscrete and MultiBinary spaces, float32 for Box),
and for Discrete actions ``action_probs`` (float32, ``[batch, n]``). Writing it needs torch and ``onnx``; running
it, ``onnxruntime`` (both in requirements.txt). ``OnnxPolicy`` runs it with the same ``predict`` as
``DeterministicPolicy``: for the small policies this service trains, onnxruntime's call costs a fifth of torch's.
"""

import copy
import io
import threading
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from torch import nn

# 17 is what the torch exporter knows best and every onnxruntime of the last years runs.
ONNX_OPSET = 17
SUPPORTED_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
# torch's exporter keeps its state in globals: one export at a time in the process.
_EXPORTING = threading.Lock()


class ExportUnsupported(ValueError):
    """A model whose policy or spaces the deterministic module cannot express."""


class ObservationNormalizer(Protocol):
    """What export reads of SB3's ``VecNormalize``: its running statistics and settings."""

    norm_obs: bool
    clip_obs: float
    epsilon: float
    obs_rms: Any  # RunningMeanStd: .mean, .var


class DeterministicPolicy(nn.Module):
    """observation -> (action, action probabilities or None), as ``predict(deterministic=True)`` computes them.

    Build it once per model: it keeps references to the policy's layers (no copy) and the space bounds as buffers.
    """

    def __init__(self, policy: ActorCriticPolicy, normalizer: ObservationNormalizer | None = None) -> None:
        super().__init__()
        if not isinstance(policy, ActorCriticPolicy):
            raise ExportUnsupported(f"{type(policy).__name__} is not an actor-critic policy")
        self.observation_space, self.action_space = policy.observation_space, policy.action_space
        for role, space in (("observation", self.observation_space), ("action", self.action_space)):
            if not isinstance(space, SUPPORTED_SPACES):
                raise ExportUnsupported(f"{type(space).__name__} {role} spaces are not supported")
        self.features_extractor = policy.pi_features_extractor
        self.mlp_extractor = policy.mlp_extractor
        self.action_net = policy.action_net
        self.normalize_images = policy.normalize_images
        self.squash_output = policy.squash_output
        space = self.action_space
        if isinstance(space, spaces.Box):
            self.register_buffer("low", th.as_tensor(space.low, dtype=th.float32))
            self.register_buffer("high", th.as_tensor(space.high, dtype=th.float32))
        self.split = [int(n) for n in space.nvec] if isinstance(space, spaces.MultiDiscrete) else None
        self.normalize = normalizer is not None and normalizer.norm_obs
        if self.normalize:
            if not isinstance(self.observation_space, spaces.Box):
                raise ExportUnsupported("observation normalisation applies to Box observations only")
            # float64 like VecNormalize's numpy statistics, so the normalised observation is the same to the bit.
            self.register_buffer("obs_mean", th.as_tensor(normalizer.obs_rms.mean, dtype=th.float64))
            self.register_buffer(
                "obs_std", th.sqrt(th.as_tensor(normalizer.obs_rms.var, dtype=th.float64) + normalizer.epsilon)
            )
            self.clip_obs = float(normalizer.clip_obs)
        self.to(policy.device)  # the bounds and statistics beside the layers (a GPU's model serves on the GPU)

    @property
    def device(self) -> th.device:
        return next(self.action_net.parameters()).device

    def forward(self, observation: th.Tensor) -> tuple[th.Tensor, th.Tensor | None]:
        if self.normalize:
            normalized = (observation.double() - self.obs_mean) / self.obs_std
            observation = th.clamp(normalized, -self.clip_obs, self.clip_obs).float()
        features = self.features_extractor(preprocess_obs(observation, self.observation_space, self.normalize_images))
        out = self.action_net(self.mlp_extractor.forward_actor(features))
        space = self.action_space
        if isinstance(space, spaces.Discrete):
            # Categorical's mode: the argmax of its probabilities, which are the softmax of the logits.
            probabilities = th.softmax(out, dim=-1)
            return th.argmax(probabilities, dim=-1), probabilities
        if isinstance(space, spaces.MultiDiscrete):
            parts = th.split(out, self.split, dim=-1)
            return th.stack([th.argmax(th.softmax(part, dim=-1), dim=-1) for part in parts], dim=-1), None
        if isinstance(space, spaces.MultiBinary):
            # Bernoulli's mode rounds the probability (half to even, as numpy and ONNX's Round do).
            action = th.round(th.sigmoid(out)).to(th.int64)
            return action.reshape(-1, *space.shape), None
        action = out.reshape(-1, *space.shape)
        if self.squash_output:  # gSDE's squashed Gaussian: tanh, then from [-1, 1] to the bounds
            action = self.low + 0.5 * (th.tanh(action) + 1.0) * (self.high - self.low)
        else:
            action = th.minimum(th.maximum(action, self.low), self.high)
        return action, None

    def predict(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Actions (and Discrete probabilities) for a batch of observations already checked against the space."""
        with th.inference_mode():
            action, probabilities = self(th.as_tensor(observations, device=self.device))
        return action.cpu().numpy(), probabilities.cpu().numpy() if probabilities is not None else None


class OnnxPolicy:
    """The exported graph in an onnxruntime session: ``predict`` gives what ``DeterministicPolicy.predict`` gives."""

    def __init__(self, data: bytes, threads: int = 1) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # Like torch in the service (Settings.torch_threads): a small net gains nothing from more threads.
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def predict(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self.session.run(None, {"observation": observations.astype(np.float32, copy=False)})
        return outputs[0], outputs[1] if len(outputs) > 1 else None


class _OnnxGraph(nn.Module):
    """The deterministic policy with a float32 input of any batch size, as the ONNX file exposes it."""

    def __init__(self, policy: DeterministicPolicy) -> None:
        super().__init__()
        self.policy = policy
        self.discrete_observation = isinstance(policy.observation_space, (spaces.Discrete, spaces.MultiDiscrete))

    def forward(self, observation: th.Tensor) -> tuple[th.Tensor, ...]:
        if self.discrete_observation:
            observation = observation.to(th.int64)
        action, probabilities = self.policy(observation)
        return (action, probabilities) if probabilities is not None else (action,)


def export_onnx(model: Any, normalizer: ObservationNormalizer | None = None, path: str | Path | None = None) -> bytes:
    """The ONNX file of ``model``'s deterministic policy (a GRPO or any SB3 on-policy model), normalisation
    included when ``normalizer`` (a ``VecNormalize`` or anything with its statistics) is given; also written to
    ``path`` when given."""
    # A copy on the CPU: the served model keeps its device, and the graph holds no CUDA tensors.
    policy = copy.deepcopy(DeterministicPolicy(model.policy, normalizer)).cpu().eval()
    graph = _OnnxGraph(policy)
    shape = tuple(policy.observation_space.shape or ())
    example = th.zeros((2, *shape), dtype=th.float32)  # 2: a batch dimension the tracer cannot fold into a constant
    outputs = ["action", "action_probs"] if isinstance(policy.action_space, spaces.Discrete) else ["action"]
    buffer = io.BytesIO()
    with _EXPORTING, warnings.catch_warnings():
        # The TorchScript exporter needs no extra package (the torch.export one needs onnxscript); torch 2.13,
        # which requirements.txt pins, still has it and says it is deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        th.onnx.export(
            graph,
            (example,),
            buffer,
            dynamo=False,
            input_names=["observation"],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["observation", *outputs]},
            opset_version=ONNX_OPSET,
        )
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data
