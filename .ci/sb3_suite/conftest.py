"""Runs Stable-Baselines3's own tests with GRPO in PPO's place; ``.ci/sb3_suite/run`` copies it into their tests/.

Only the tests that exercise PPO run (the others test other algorithms). Every remaining difference is listed in
``EXPECTED_FAILURES`` with its reason, so that the run passes and any other failure fails it.
"""

import inspect

import pytest
import stable_baselines3
from stable_baselines3.common.base_class import BaseAlgorithm

from grpo import GRPO

# Before the test modules import it: `from stable_baselines3 import PPO` now gives GRPO.
stable_baselines3.PPO = GRPO  # type: ignore[misc]

_TOO_SHORT = (
    "its budget (1,000 to 1,200 steps of 100-step episodes) cannot complete one group of 16 episodes, so GRPO "
    "never updates: learn warns (issue 16, defect 3); GRPO keeps group_size=16 rather than shrink groups silently"
)
# node id without "tests/" (a prefix matches every parametrization) -> why GRPO differs from PPO there
EXPECTED_FAILURES: dict[str, str] = {
    "test_identity.py::test_discrete": _TOO_SHORT,
    "test_identity.py::test_continuous": _TOO_SHORT,
    "test_train_eval_mode.py::test_a2c_ppo_train_with_batch_norm": (
        "learn(1000 steps) with n_steps=64 completes no group of 16 episodes, so the batch-norm statistics are "
        "never updated in train mode (issue 16, defect 3: learn warns)"
    ),
    "test_dict_env.py::test_multiprocessing": (
        "a SubprocVecEnv without GroupResetWrapper is refused on purpose, with the error saying how to build it"
    ),
    "test_run.py::test_advantage_normalization": "normalize_advantage is PPO's: GRPO normalises within groups",
    "test_run.py::test_ppo": "clip_range_vf clips a value function, and GRPO has none (the None case passes)",
    "test_run.py::test_ppo_warnings": "PPO's checks of normalize_advantage and n_steps=1, arguments GRPO lacks",
    "test_tensorboard.py::test_tensorboard[ppo]": "GRPO logs to GRPO_1, the test looks for PPO_1",
    "test_sde.py::test_state_dependent_noise[True-": (
        "255 steps of Pendulum complete no group of 16 (defect 3), so the buffer the test inspects is empty"
    ),
}
# Known failures that take minutes: reported as xfail without running them.
NOT_RUN = ("test_identity.py::", "test_dict_env.py::test_multiprocessing")  # the latter leaves workers behind
_ALGORITHM_NAMES = {"a2c", "ddpg", "dqn", "ppo", "sac", "td3"}


def _algorithms(item: pytest.Item) -> list[type]:
    params = getattr(item, "callspec", None)
    values = params.params.values() if params is not None else []
    return [v for v in values if isinstance(v, type) and issubclass(v, BaseAlgorithm)]


def _uses_grpo(item: pytest.Item) -> bool:
    algorithms = _algorithms(item)
    if algorithms:
        return GRPO in algorithms
    params = getattr(item, "callspec", None)
    words = set(params.id.lower().split("-")) if params is not None else set()
    if words & _ALGORITHM_NAMES:  # parametrized by name, as test_tensorboard.py is
        return "ppo" in words
    return "PPO" in inspect.getsource(item.function)  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selected = [item for item in items if _uses_grpo(item)]
    config.hook.pytest_deselected(items=[item for item in items if item not in selected])
    items[:] = selected
    for item in selected:
        node_id = item.nodeid.removeprefix("tests/")
        reason = next((why for node, why in EXPECTED_FAILURES.items() if node_id.startswith(node)), None)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, run=not node_id.startswith(NOT_RUN), strict=False))
