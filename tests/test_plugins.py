"""Plugins: an administrator's package adds an environment and reward functions, trained and served over HTTP."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from harness import REPO, TINY, Server, free_port

import plugins

ENV_MODULE = '''
import gymnasium as gym
import numpy as np


class Line(gym.Env):
    """A point on a line: push it left or right; the env's reward is 1 a step."""

    observation_space = gym.spaces.Box(-10.0, 10.0, (1,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1)
        return np.array([self.x], dtype=np.float32), {}

    def step(self, action):
        self.x += 0.1 if action == 1 else -0.1
        return np.array([self.x], dtype=np.float32), 1.0, abs(self.x) > 2, False, {}


gym.register("PluginLine-v0", entry_point=Line, max_episode_steps=20)
'''
REWARD_MODULE = """
from rewards import reward_function


@reward_function("Plugin: stay near the origin", observation_shape=(1,), name="plugin_centre")
def plugin_centre(state, action, next_state):
    return -next_state.abs()
"""
ENTRY_POINT_MODULE = """
def register():
    from rewards import register as add
    add("plugin_entry", lambda state, action, next_state: -state.abs())
"""


@pytest.fixture
def plugin_site(tmp_path: Path) -> Path:
    """A folder holding the package ``myplug`` and the metadata of an installed distribution whose entry point
    (group ``grpo.rewards``) registers one more reward function."""
    site = tmp_path / "site"
    package = site / "myplug"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "envs.py").write_text(ENV_MODULE)
    (package / "rewards.py").write_text(REWARD_MODULE)
    (package / "extra.py").write_text(ENTRY_POINT_MODULE)
    (package / "broken.py").write_text("raise RuntimeError('this plugin is broken on purpose')\n")
    metadata = site / "myplug-0.1.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (metadata / "entry_points.txt").write_text("[grpo.rewards]\nextra = myplug.extra:register\n")
    return site


def test_a_plugin_that_fails_stops_loading_with_its_reason() -> None:
    with pytest.raises(plugins.PluginError, match="no_such_module"):
        plugins.load_plugins(["no_such_module_for_grpo"])


def test_plugins_register_an_environment_and_rewards_trained_and_served_over_http(
    tmp_path: Path, plugin_site: Path
) -> None:
    environment = {"PYTHONPATH": os.pathsep.join([str(plugin_site), str(REPO)])}
    server = Server(tmp_path, free_port(), "--plugins", "myplug.envs,myplug.rewards", env=environment)
    server.start()
    try:
        names = {entry["name"] for entry in server.get("/reward-functions")["reward_functions"]}
        assert {"plugin_centre", "plugin_entry"} <= names  # the module's and the entry point's
        body = {**TINY, "env_name": "PluginLine-v0", "reward_function_type": "plugin_centre", "group_size": 2}
        response = server.post("/train", {**body, "model_name": "line", "total_timesteps": 200})
        assert response.status_code == 200, response.text
        assert server.wait_for_job(response.json()["job_id"])["status"] == "completed"
        action = server.post("/inference", {"model_name": "line", "observation": [0.5]})
        assert action.status_code == 200 and action.json()["action"] in (0, 1)
    finally:
        server.kill()


def test_a_server_whose_plugin_fails_does_not_start(tmp_path: Path, plugin_site: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(REPO)])}
    command = [sys.executable, "run_api.py", "--port", str(free_port()), "--models-dir", str(tmp_path / "models")]
    result = subprocess.run(
        [*command, "--plugins", "myplug.broken"], cwd=REPO, env=environment, capture_output=True, timeout=120
    )
    assert result.returncode != 0
    log = result.stdout.decode() + result.stderr.decode()
    assert "myplug.broken" in log and "broken on purpose" in log, textwrap.shorten(log, 2000)
