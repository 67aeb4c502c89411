"""Hyperparameters of the learning benchmark (``benchmarks/learning.py``), one dict per algorithm and env.

Entries keep rl-baselines3-zoo's vocabulary so they can be compared line by line with its ``ppo.yml``, and are
translated by the same loader as GRPO's presets (``presets.py``): ``n_envs`` and ``normalize`` shape the training
VecEnv, ``"lin_<x>"`` is a schedule decaying linearly from ``x`` to 0, ``policy_kwargs`` may be a string evaluated
with ``torch.nn`` in scope as ``nn``, and every other key goes to the algorithm's constructor unchanged. Keys not
listed take the algorithm's default.
"""

from typing import Any

import presets

# rl-baselines3-zoo `hyperparams/ppo.yml` (DLR-RM/rl-baselines3-zoo, commit 208b6fdf3a9aa24de44b2e068c6e5f6a07d97fcc),
# copied verbatim except `n_timesteps` (the benchmark's budget, see BUDGETS in learning.py) and `policy`
# (always MlpPolicy). The zoo's LunarLander-v3 entry is its LunarLander-v2 entry renamed when gymnasium 1.0
# retired v2; the values are the same. Acrobot's `normalize: true` means VecNormalize(norm_obs=True,
# norm_reward=True, gamma=<the algorithm's gamma>), as the zoo's ExperimentManager builds it.
PPO_ZOO: dict[str, dict[str, Any]] = {
    "CartPole-v1": {
        "n_envs": 8,
        "n_steps": 32,
        "batch_size": 256,
        "gae_lambda": 0.8,
        "gamma": 0.98,
        "n_epochs": 20,
        "ent_coef": 0.0,
        "learning_rate": "lin_0.001",
        "clip_range": "lin_0.2",
    },
    "Acrobot-v1": {
        "normalize": True,
        "n_envs": 16,
        "n_steps": 256,
        "gae_lambda": 0.94,
        "gamma": 0.99,
        "n_epochs": 4,
        "ent_coef": 0.0,
    },
    "Pendulum-v1": {
        "n_envs": 4,
        "n_steps": 1024,
        "gae_lambda": 0.95,
        "gamma": 0.9,
        "n_epochs": 10,
        "ent_coef": 0.0,
        "learning_rate": 1e-3,
        "clip_range": 0.2,
        "use_sde": True,
        "sde_sample_freq": 4,
    },
    "LunarLander-v3": {
        "n_envs": 16,
        "n_steps": 1024,
        "batch_size": 64,
        "gae_lambda": 0.98,
        "gamma": 0.999,
        "n_epochs": 4,
        "ent_coef": 0.01,
    },
    # The zoo's entries for the v2 / v3 versions of these tasks, renamed (same values). Its MuJoCo policy_kwargs
    # use SB3 1.x's `net_arch=[dict(pi=..., vf=...)]`, which SB3 2.x spells `net_arch=dict(pi=..., vf=...)`.
    "LunarLanderContinuous-v3": {
        "n_envs": 16,
        "n_steps": 1024,
        "batch_size": 64,
        "gae_lambda": 0.98,
        "gamma": 0.999,
        "n_epochs": 4,
        "ent_coef": 0.01,
    },
    "MountainCar-v0": {
        "normalize": True,
        "n_envs": 16,
        "n_steps": 16,
        "gae_lambda": 0.98,
        "gamma": 0.99,
        "n_epochs": 4,
        "ent_coef": 0.0,
    },
    "MountainCarContinuous-v0": {
        "normalize": True,
        "n_envs": 1,
        "batch_size": 256,
        "n_steps": 8,
        "gamma": 0.9999,
        "learning_rate": 7.77e-05,
        "ent_coef": 0.00429,
        "clip_range": 0.1,
        "n_epochs": 10,
        "gae_lambda": 0.9,
        "max_grad_norm": 5,
        "vf_coef": 0.19,
        "use_sde": True,
        "policy_kwargs": "dict(log_std_init=-3.29, ortho_init=False)",
    },
    "Hopper-v5": {
        "normalize": True,
        "n_envs": 1,
        "batch_size": 32,
        "n_steps": 512,
        "gamma": 0.999,
        "learning_rate": 9.80828e-05,
        "ent_coef": 0.00229519,
        "clip_range": 0.2,
        "n_epochs": 5,
        "gae_lambda": 0.99,
        "max_grad_norm": 0.7,
        "vf_coef": 0.835671,
        "policy_kwargs": "dict(log_std_init=-2, ortho_init=False, activation_fn=nn.ReLU, "
        "net_arch=dict(pi=[256, 256], vf=[256, 256]))",
    },
    "HalfCheetah-v5": {
        "normalize": True,
        "n_envs": 1,
        "batch_size": 64,
        "n_steps": 512,
        "gamma": 0.98,
        "learning_rate": 2.0633e-05,
        "ent_coef": 0.000401762,
        "clip_range": 0.1,
        "n_epochs": 20,
        "gae_lambda": 0.92,
        "max_grad_norm": 0.8,
        "vf_coef": 0.58096,
        "policy_kwargs": "dict(log_std_init=-2, ortho_init=False, activation_fn=nn.ReLU, "
        "net_arch=dict(pi=[256, 256], vf=[256, 256]))",
    },
}

# GRPO's branching mode (group_mode="state", issue 3), on the envs its benchmark covers. `reward_function` names an
# entry of rewards.REWARD_FUNCTIONS. Branching needs a reward that tells the tried actions apart within the lookahead.
# CartPole: the original API's `optimized_cartpole`, PPO's VecEnv size and rollout length, GRPO's default branch
# budget (every 4th state, lookahead 2: far cheaper than every state with lookahead 4, issue 12; `lookahead=0` carries
# no signal in CartPole). Acrobot: its own -1 per step differs only where a branch reaches the goal inside the
# lookahead, which an untrained policy almost never does (lookahead 32, every 4th state: still -500 after 20k real
# steps, seed 0), so the tip's height, looking 8 steps ahead from every 8th state (issue 12, 5 seeds: -100 after 8,912
# real + branch steps IQM, against 28,112 looking 16 steps ahead from every 4th state).
GRPO_STATE: dict[str, dict[str, Any]] = {
    "CartPole-v1": {
        "n_envs": 8,
        "normalize": False,
        "group_mode": "state",
        "branch_interval": 4,
        "lookahead": 2,
        "reward_function": "optimized_cartpole",
        "n_steps": 32,
        "batch_size": 256,
        "n_epochs": 10,
        "gamma": 0.98,
        "learning_rate": 1e-3,
    },
    "Acrobot-v1": {
        "n_envs": 16,
        "normalize": False,
        "group_mode": "state",
        "lookahead": 8,
        "branch_interval": 8,
        "reward_function": "acrobot_height",
        "n_steps": 64,
        "batch_size": 256,
        "n_epochs": 10,
        "gamma": 0.99,
        "learning_rate": 1e-3,
    },
}

# GRPO's own settings are its presets, hyperparams/grpo.yml: the same file the service and Python users read.
GRPO_PRESETS: dict[str, dict[str, Any]] = {env_id: dict(preset.values) for env_id, preset in presets.read().items()}

# PPO with the zoo's settings on the shaped reward branching is given (a RewardFunctionWrapper around each env):
# the same signal on both sides of the branching table.
PPO_SHAPED: dict[str, dict[str, Any]] = {
    env_id: {**PPO_ZOO[env_id], "reward_wrapper": entry["reward_function"]} for env_id, entry in GRPO_STATE.items()
}

HYPERPARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "ppo": PPO_ZOO,
    "grpo": GRPO_PRESETS,
    "grpo_state": GRPO_STATE,
    "ppo_shaped": PPO_SHAPED,
}


# --------------------------------------------------------------------------------------------------------------
# Environments: thresholds, budgets, eval intervals and seeds of benchmarks/learning.py
# --------------------------------------------------------------------------------------------------------------

# What a plain run covers; the others (MountainCar, box2d's continuous lander, MuJoCo) are asked for by --envs.
DEFAULT_ENVS = ("CartPole-v1", "Acrobot-v1", "Pendulum-v1", "LunarLander-v3")
# Mean eval return that counts as solved.
THRESHOLDS: dict[str, float] = {
    "CartPole-v1": 475.0,
    "Acrobot-v1": -100.0,
    "Pendulum-v1": -200.0,
    "LunarLander-v3": 200.0,
    "MountainCar-v0": -110.0,
    "MountainCarContinuous-v0": 90.0,
    "LunarLanderContinuous-v3": 200.0,
    # MuJoCo has no "solved" line; these are about what PPO with the zoo's settings reaches in 1M steps.
    "Hopper-v5": 2500.0,
    "HalfCheetah-v5": 3000.0,
}
# Default env-step budgets, sized for a 2-core CPU.
BUDGETS: dict[str, int] = {
    "CartPole-v1": 50_000,
    "Acrobot-v1": 100_000,
    "Pendulum-v1": 100_000,
    "LunarLander-v3": 300_000,
    "MountainCar-v0": 100_000,
    "MountainCarContinuous-v0": 50_000,
    "LunarLanderContinuous-v3": 300_000,
    "Hopper-v5": 1_000_000,
    "HalfCheetah-v5": 1_000_000,
}
# rl-baselines3-zoo's own `n_timesteps` (ppo.yml), quoted in the docs next to ours.
ZOO_BUDGETS: dict[str, int] = {
    "CartPole-v1": 100_000,
    "Acrobot-v1": 1_000_000,
    "Pendulum-v1": 100_000,
    "LunarLander-v3": 1_000_000,
    "MountainCar-v0": 1_000_000,
    "MountainCarContinuous-v0": 20_000,
    "LunarLanderContinuous-v3": 1_000_000,
    "Hopper-v5": 1_000_000,
    "HalfCheetah-v5": 1_000_000,
}
EVAL_EVERY: dict[str, int] = {
    "CartPole-v1": 2_500,
    "Acrobot-v1": 5_000,
    "Pendulum-v1": 5_000,
    "LunarLander-v3": 10_000,
    "MountainCar-v0": 5_000,
    "MountainCarContinuous-v0": 2_500,
    "LunarLanderContinuous-v3": 10_000,
    "Hopper-v5": 50_000,
    "HalfCheetah-v5": 50_000,
}
SEEDS: dict[str, tuple[int, ...]] = {
    # 5 seeds (issue 12: IQM and bootstrap intervals need them); LunarLander and MuJoCo: what 2 cores allow
    "CartPole-v1": (0, 1, 2, 3, 4),
    "Acrobot-v1": (0, 1, 2, 3, 4),
    "Pendulum-v1": (0, 1, 2, 3, 4),
    "LunarLander-v3": (0,),
    "MountainCar-v0": (0, 1, 2),
    "MountainCarContinuous-v0": (0, 1, 2),
    "LunarLanderContinuous-v3": (0,),
    "Hopper-v5": (0,),
    "HalfCheetah-v5": (0,),
}
