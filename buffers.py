"""GRPO's rollout buffer: in-flight episodes until their whole group is done, then a flat training batch.

A small ``RolloutBuffer`` subclass with a ``NamedTuple`` of samples, as sb3-contrib's ``common/maskable/buffers.py``;
``grpo`` re-exports it.
"""

from collections.abc import Callable, Generator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.type_aliases import TensorDict
from stable_baselines3.common.utils import obs_as_tensor

from envs import Observation, obs_concat, obs_map


class GroupRolloutBufferSamples(NamedTuple):
    observations: th.Tensor | TensorDict
    actions: th.Tensor
    old_log_prob: th.Tensor  # under the behaviour policy, which sampled the action
    advantages: th.Tensor
    ref_log_prob: th.Tensor
    proximal_log_prob: th.Tensor  # under the policy as the update started (the behaviour's, until GRPO sets it)


class GroupRolloutBuffer(RolloutBuffer):
    """Rollout buffer for GRPO.

    Steps are recorded per environment slot into the episode that slot is running. A group's data becomes
    trainable only once all ``group_size`` of its episodes ended; until then (possibly across rollouts) it
    stays in flight. :meth:`release_complete_groups` turns the finished groups into a flat batch, ordered by
    episode and time, which :meth:`get` serves in shuffled mini-batches after the algorithm has filled in
    ``rewards`` and ``advantages``.

    In state mode a group is the branches tried from one state (:meth:`start_branch_group`), each branch an
    episode recorded with :meth:`add_transitions`: its first step (the tried action) is the training sample,
    its lookahead steps are kept only so that their rewards count in the branch's return.

    :param observation_space: Observation space
    :param action_space: Action space
    :param device: PyTorch device the training batch lives on
    :param n_envs: Number of environment slots
    :param group_size: Number of episodes in a group
    :param store_next_obs: Also keep the environment's own observations and next observations (what reward
        functions are called with)
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        group_size: int = 8,
        store_next_obs: bool = False,
    ):
        self.group_size = group_size
        self.store_next_obs = store_next_obs
        self.policy_version = 0  # updates so far: each row keeps the version that collected it
        # buffer_size is meaningless here: a batch is as long as its groups' episodes.
        super().__init__(1, observation_space, action_space, device=device, n_envs=n_envs)
        self.clear_in_flight()

    def reset(self) -> None:
        """Drop the training batch (in-flight episodes are kept)."""
        self.size = 0
        self.observations: Observation | None = None
        self.env_observations: Observation | None = None  # as the env made them (reward functions)
        self.next_observations: Observation | None = None  # the env's own too
        self.actions = np.zeros((0, self.action_dim), dtype=np.float32)
        self.env_rewards = np.zeros(0, dtype=np.float32)
        self.log_probs = np.zeros(0, dtype=np.float32)
        self.rewards = np.zeros(0, dtype=np.float32)
        self.advantages = np.zeros(0, dtype=np.float32)
        self.ref_log_probs: np.ndarray | None = None
        self.proximal_log_probs: np.ndarray | None = None
        self.policy_versions = np.zeros(0, dtype=np.int64)
        self.episodes = np.zeros(0, dtype=np.int64)
        self.episode_groups = np.zeros(0, dtype=np.int64)
        self.truncated = np.zeros(0, dtype=bool)  # per released episode: cut by a time limit, not ended
        self.trainable = np.zeros(0, dtype=bool)
        self.full = False
        self.generator_ready = False

    def clear_in_flight(self) -> None:
        """Forget unfinished episodes, e.g. when the environment is reset under them."""
        self._chunks: dict[str, list[Any]] = {key: [] for key in self._chunk_keys()}
        self._next_episode_id = 0
        self._slot_episode = np.full(self.n_envs, -1, dtype=np.int64)
        self._episode_group: dict[int, int] = {}
        self._episode_length: dict[int, int] = {}
        self._group_members: dict[int, int] = {}
        self._group_done: dict[int, int] = {}
        self._group_steps: dict[int, int] = {}
        self._truncated: set[int] = set()  # finished episodes a time limit cut short
        self._next_branch_group = -1  # branch groups count down from -1, episode groups up from 0
        self.ready_steps = 0

    @staticmethod
    def _chunk_keys() -> tuple[str, ...]:
        return (
            "obs",
            "env_obs",
            "next_obs",
            "actions",
            "env_rewards",
            "log_probs",
            "episodes",
            "steps",
            "trainable",
            "versions",
        )

    def _open_episode(self, group: int, members: int) -> int:
        episode = self._next_episode_id
        self._next_episode_id += 1
        self._episode_group[episode] = group
        self._episode_length[episode] = 0
        self._group_members.setdefault(group, members)
        self._group_done.setdefault(group, 0)
        self._group_steps.setdefault(group, 0)
        return episode

    def start_episode(self, slot: int, group: int) -> None:
        """The slot starts an episode of ``group`` (one of ``group_size`` episodes reset with the same seed)."""
        self._slot_episode[slot] = self._open_episode(group, self.group_size)

    def has_open_episodes(self) -> bool:
        """Whether every slot is running an episode this buffer knows (not the case after a load or reset)."""
        return bool((self._slot_episode >= 0).all())

    def start_branch_group(self, members: int) -> np.ndarray:
        """Open a group of ``members`` branches tried from one state (state mode); returns their episode ids."""
        group = self._next_branch_group
        self._next_branch_group -= 1
        return np.array([self._open_episode(group, members) for _ in range(members)], dtype=np.int64)

    def add(  # type: ignore[override]
        self,
        obs: Observation,
        action: np.ndarray,
        reward: np.ndarray,
        log_prob: th.Tensor,
        env_obs: Observation | None = None,
        next_obs: Observation | None = None,
    ) -> None:
        """Record one VecEnv step (one transition per slot); ``env_obs``/``next_obs``: the env's own."""
        self.add_transitions(self._slot_episode.copy(), obs, action, reward, log_prob, env_obs, next_obs)

    def add_transitions(
        self,
        episodes: np.ndarray,
        obs: Observation,
        action: np.ndarray,
        reward: np.ndarray,
        log_prob: th.Tensor,
        env_obs: Observation | None = None,
        next_obs: Observation | None = None,
        trainable: bool = True,
    ) -> None:
        """Record one transition for each of ``episodes``; ``trainable=False`` rows only contribute rewards."""
        n = len(episodes)
        steps = np.array([self._episode_length[e] for e in episodes], dtype=np.int64)
        for episode in episodes:
            self._episode_length[episode] += 1
        chunk = {
            "obs": obs_map(np.copy, obs),
            "env_obs": obs_map(np.copy, env_obs) if self.store_next_obs and env_obs is not None else None,
            "next_obs": obs_map(np.copy, next_obs) if self.store_next_obs and next_obs is not None else None,
            "actions": np.asarray(action).reshape(n, self.action_dim).astype(np.float32),
            "env_rewards": np.asarray(reward, dtype=np.float32).reshape(n),
            "log_probs": log_prob.detach().cpu().numpy().reshape(n).astype(np.float32),
            "episodes": episodes,
            "steps": steps,
            "trainable": np.full(n, trainable),
            "versions": np.full(n, self.policy_version),
        }
        for key, value in chunk.items():
            self._chunks[key].append(value)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Checkpoints written before time-limit truncations were recorded have no record of them.
        state.setdefault("_truncated", set())
        state.setdefault("truncated", np.zeros(len(state.get("episode_groups", ())), dtype=bool))
        self.__dict__.update(state)

    def finish_episode(self, slot: int, truncated: bool = False) -> None:
        """The slot's episode ended; ``truncated``: a time limit cut it (its last returns-to-go are cut short)."""
        episode = int(self._slot_episode[slot])
        if truncated:
            self._truncated.add(episode)
        self.finish_episodes([episode])

    def finish_episodes(self, episodes: Sequence[int] | np.ndarray) -> None:
        for episode in episodes:
            group = self._episode_group[episode]
            self._group_done[group] += 1
            self._group_steps[group] += self._episode_length[episode]
            if self._group_done[group] == self._group_members[group]:
                self.ready_steps += self._group_steps[group]

    def release_complete_groups(self) -> None:
        """Move every complete group into the training batch; keep the rest in flight."""
        self.reset()
        complete = {g for g, done in self._group_done.items() if done == self._group_members[g]}
        if not complete or not self._chunks["episodes"]:
            return
        episodes = np.concatenate(self._chunks["episodes"])
        steps = np.concatenate(self._chunks["steps"])
        groups = np.array([self._episode_group[e] for e in episodes])
        ready = np.isin(groups, list(complete))
        # Group by episode, then by time inside each episode.
        order = np.flatnonzero(ready)[np.lexsort((steps[ready], episodes[ready]))]
        keep = np.flatnonzero(~ready)

        flat = {
            key: (obs_concat(chunks) if key in ("obs", "env_obs", "next_obs") else np.concatenate(chunks))
            for key, chunks in self._chunks.items()
            if chunks and chunks[0] is not None
        }
        take = {key: obs_map(lambda a, idx=order: a[idx], value) for key, value in flat.items()}
        self._chunks = {key: [] for key in self._chunk_keys()}
        if len(keep):
            for key in self._chunk_keys():
                self._chunks[key].append(obs_map(lambda a, idx=keep: a[idx], flat[key]) if key in flat else None)

        # Dense ids for the released episodes and groups, as the advantage functions expect.
        _, self.episodes = np.unique(take["episodes"], return_inverse=True)
        released_episodes = np.unique(take["episodes"])
        _, self.episode_groups = np.unique([self._episode_group[e] for e in released_episodes], return_inverse=True)
        self.truncated = np.isin(released_episodes, list(self._truncated))
        for episode in released_episodes:
            del self._episode_group[episode], self._episode_length[episode]
            self._truncated.discard(episode)
        for group in complete:
            del self._group_members[group], self._group_done[group], self._group_steps[group]
        self.ready_steps = 0

        self.observations = take["obs"]
        self.env_observations = take.get("env_obs")
        self.next_observations = take.get("next_obs")
        self.actions = take["actions"]
        self.env_rewards = take["env_rewards"]
        self.log_probs = take["log_probs"]
        self.trainable = take["trainable"]
        self.policy_versions = take["versions"]
        self.size = len(order)
        self.full = True

    @property
    def n_groups(self) -> int:
        return int(self.episode_groups.max()) + 1 if self.size else 0

    def observation_tensor(self, indices: np.ndarray | slice | None = None) -> th.Tensor | TensorDict:
        assert self.observations is not None
        index = slice(None) if indices is None else indices
        return obs_as_tensor(obs_map(lambda a: a[index], self.observations), self.device)

    def log_probs_under(self, policy: Any, as_policy_actions: Callable[[th.Tensor], th.Tensor]) -> np.ndarray:
        """Log-probabilities of the trainable rows' actions under ``policy`` (other rows keep the behaviour's)."""
        out = self.log_probs.copy()
        rows = np.flatnonzero(self.trainable)
        with th.no_grad():
            for start in range(0, len(rows), 4096):
                idx = rows[start : start + 4096]
                dist = policy.get_distribution(self.observation_tensor(idx))
                out[idx] = dist.log_prob(as_policy_actions(self.to_torch(self.actions[idx]))).cpu().numpy()
        return out

    def get(self, batch_size: int | None = None) -> Generator[GroupRolloutBufferSamples, None, None]:  # type: ignore[override]
        """Shuffled mini-batches of the trainable rows (every row, except a branch's lookahead steps)."""
        assert self.full, "release_complete_groups() first"
        indices = np.random.permutation(np.flatnonzero(self.trainable))
        batch_size = batch_size or len(indices)
        for start in range(0, len(indices), batch_size):
            yield self._get_samples(indices[start : start + batch_size])

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> GroupRolloutBufferSamples:  # type: ignore[override]
        ref = self.ref_log_probs if self.ref_log_probs is not None else self.log_probs
        proximal = self.proximal_log_probs if self.proximal_log_probs is not None else self.log_probs
        return GroupRolloutBufferSamples(
            observations=self.observation_tensor(batch_inds),
            actions=self.to_torch(self.actions[batch_inds]),
            old_log_prob=self.to_torch(self.log_probs[batch_inds]),
            advantages=self.to_torch(self.advantages[batch_inds]),
            ref_log_prob=self.to_torch(ref[batch_inds]),
            proximal_log_prob=self.to_torch(proximal[batch_inds]),
        )
