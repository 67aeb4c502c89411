"""Any environment through the service: presets fill what a request omits, normalisation travels with the model,
every GRPO mode is reachable, a job can start from a saved model."""

import io
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from fastapi.testclient import TestClient
from harness import TINY, make_settings, train, wait_for_job

import artifacts
import presets
from api import create_app
from grpo import GRPO
from settings import Settings
from training import TrainingSettings, resolve_settings

PENDULUM_OBS = [[1.0, 0.0, 0.5], [0.0, 1.0, -3.0], [-0.7, 0.7, 7.5]]
# Pendulum's episodes are 200 steps: groups of 2 on one env complete every 400 steps.
NORMALISED = {**TINY, "env_name": "Pendulum-v1", "group_size": 2, "normalize": True}


def test_presets_are_listed_and_shown(service: TestClient) -> None:
    listed = service.get("/presets").json()["presets"]
    assert {entry["env_id"] for entry in listed} == set(presets.read())
    acrobot = service.get("/presets/Acrobot-v1").json()
    assert acrobot == {"env_id": "Acrobot-v1", "settings": dict(presets.load("Acrobot-v1").values)}
    missing = service.get("/presets/NoSuchEnv-v0")
    assert missing.status_code == 404 and "Acrobot-v1" in missing.json()["detail"]


def test_a_models_hyperparameters_say_where_each_value_came_from(service: TestClient) -> None:
    hyperparameters = service.get("/models/pendulum").json()["hyperparameters"]
    assert hyperparameters["net_arch"] == [16]  # the request's
    # Left open in the request: the environment's preset, else GRPO's own default, read back from the model.
    assert hyperparameters["gamma"] == presets.load("Pendulum-v1").values["gamma"]
    assert hyperparameters["clip_range"] == GRPO("MlpPolicy", "Pendulum-v1", device="cpu").clip_range(1.0)
    expected_sources = {"gamma": "preset", "clip_range": "default", "group_size": "request"}
    assert {name: hyperparameters["sources"][name] for name in expected_sources} == expected_sources


def test_the_documents_defaults_hold_on_cartpole_and_the_preset_fills_the_rest(client: TestClient) -> None:
    answer = client.post("/train", json={"model_name": "doc", "total_timesteps": 2_000}).json()
    client.post(f"/training/{answer['job_id']}/stop")
    config = answer["config"]
    document = {"learning_rate": 3e-4, "n_steps": 32, "batch_size": 64, "n_epochs": 10}
    assert {name: config[name] for name in document} == document
    assert config["reward_function_type"] == "optimized_cartpole"
    preset = presets.load("CartPole-v1").values
    assert config["n_envs"] == preset["n_envs"] and config["group_size"] == preset["group_size"]
    sources = config["sources"]
    assert {sources[name] for name in document} == {"default"}
    assert sources["total_timesteps"] == "request" and sources["n_envs"] == "preset"
    assert config["policy"] == "MlpPolicy" and sources["policy"] == "preset"
    # Without a preset, the policy follows the observation space.
    other = client.post("/train", json={"env_name": "FrozenLake-v1", "total_timesteps": 2_000}).json()
    client.post(f"/training/{other['job_id']}/stop")
    other = other["config"]
    assert other["policy"] == "MlpPolicy" and other["sources"]["policy"] == "default"


def test_other_environments_take_their_preset(client: TestClient) -> None:
    config = client.post("/train", json={"env_name": "Acrobot-v1", "model_name": "acro", "n_envs": 2}).json()["config"]
    preset = presets.load("Acrobot-v1")
    assert config["total_timesteps"] == preset.n_timesteps and config["sources"]["total_timesteps"] == "preset"
    assert config["n_envs"] == 2 and config["sources"]["n_envs"] == "request"
    assert config["normalize"] == {
        "norm_obs": True,
        "norm_reward": True,
        "clip_obs": 10.0,
        "clip_reward": 10.0,
        "gamma": None,
        "epsilon": 1e-8,
    }
    for name in ("n_steps", "batch_size", "learning_rate", "group_size", "gamma"):
        assert config[name] == preset.values[name] and config["sources"][name] == "preset", name
    client.post(f"/training/{client.get('/training/jobs').json()['jobs'][0]['job_id']}/stop")


def _hyperparameters_of(client: TestClient, name: str) -> dict[str, Any]:
    return client.get(f"/models/{name}").json()["hyperparameters"]


def test_a_normalised_model_acts_the_same_over_http_after_a_restart_and_in_python(
    settings: Settings, tmp_path: Path
) -> None:
    def http_actions(client: TestClient) -> list[Any]:
        body = {"model_name": "norm", "observations": PENDULUM_OBS}
        return client.post("/inference", json=body).json()["actions"]

    with TestClient(create_app(settings)) as client:
        status = wait_for_job(client, train(client, model_name="norm", total_timesteps=800, seed=0, **NORMALISED))
        assert status["status"] == "completed", status
        served = http_actions(client)
        download = client.get("/models/norm/download").content
    with TestClient(create_app(settings)) as client:
        assert http_actions(client) == served

    agent = artifacts.load_trained(io.BytesIO(download), device="cpu")
    assert agent.normalizer is not None and agent.normalizer.obs_rms.count > 800
    actions, _ = agent.predict(np.array(PENDULUM_OBS, dtype=np.float32), deterministic=True)
    np.testing.assert_allclose(actions, served, atol=1e-6)
    # Without its statistics the policy would act on the raw observations, and differently.
    raw, _ = agent.model.predict(np.array(PENDULUM_OBS, dtype=np.float32), deterministic=True)
    assert not np.allclose(raw, served, atol=1e-3)


def test_evaluation_applies_the_statistics_and_checkpoints_carry_them(client: TestClient, settings: Settings) -> None:
    job_id = train(client, model_name="ckpt", total_timesteps=2_000, checkpoint_interval=400, **NORMALISED)
    wait_for_job(client, job_id, until=lambda s: (s["checkpoint_timesteps"] or 0) >= 400)
    client.post(f"/training/{job_id}/stop")
    checkpoint = settings.jobs_dir / job_id / "checkpoint.zip"
    with zipfile.ZipFile(checkpoint) as archive:
        assert artifacts.NORMALIZER_MEMBER in archive.namelist()
    saved_count = artifacts.load_trained(checkpoint, device="cpu").normalizer.obs_rms.count
    assert client.post(f"/training/{job_id}/resume").status_code == 200
    assert wait_for_job(client, job_id)["status"] == "completed"
    final = client.app.state.store.load("ckpt").normalizer
    assert final.obs_rms.count > saved_count  # went on from the checkpoint's statistics, not from scratch

    evaluation = client.post("/models/ckpt/evaluate", json={"n_episodes": 2, "seed": 3}).json()
    assert -2000 < evaluation["mean_return"] < 0  # Pendulum's own (unnormalised) returns


def test_branching_over_http(client: TestClient) -> None:
    body = {**TINY, "group_mode": "state", "lookahead": 2, "branch_interval": 4}
    status = wait_for_job(client, train(client, model_name="branching", total_timesteps=256, **body))
    assert status["status"] == "completed", status
    model = client.app.state.store.load("branching").model
    assert (model.group_mode, model.lookahead, model.branch_interval) == ("state", 2, 4)
    assert model.num_branch_steps > 0


class Uncopyable(gym.Env):
    """An environment holding something deepcopy refuses (a live generator), and no get_state/set_state."""

    observation_space = gym.spaces.Box(-1, 1, (2,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self) -> None:
        self.source = (i for i in range(10))

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(2, dtype=np.float32), 1.0, False, False, {}


@pytest.fixture
def uncopyable_env() -> Any:
    gym.register("Uncopyable-v0", entry_point=Uncopyable, max_episode_steps=20)
    yield "Uncopyable-v0"
    del gym.registry["Uncopyable-v0"]


def test_a_branching_request_that_cannot_fork_is_400_before_any_job(client: TestClient, uncopyable_env: str) -> None:
    response = client.post("/train", json={"env_name": uncopyable_env, "group_mode": "state"})
    assert response.status_code == 400 and "cannot be copied" in response.json()["detail"]
    subproc = client.post("/train", json={"group_mode": "state", "vec_env": "subproc"})
    assert subproc.status_code == 400 and "dummy" in subproc.json()["detail"]
    assert client.get("/training/jobs").json()["jobs"] == []


def test_env_kwargs_are_tried_at_submission_and_reach_the_environment(client: TestClient) -> None:
    bad = client.post("/train", json={"env_name": "Pendulum-v1", "env_kwargs": {"gravity": 1.0}})
    assert bad.status_code == 400 and "gravity" in bad.json()["detail"]
    status = wait_for_job(
        client, train(client, model_name="moon", total_timesteps=400, env_kwargs={"g": 1.6}, **NORMALISED)
    )
    assert status["status"] == "completed", status
    assert _hyperparameters_of(client, "moon")["env_kwargs"] == {"g": 1.6}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"policy": "CnnPolicy"}, "image"),
        ({"policy": "MultiInputPolicy"}, "Dict"),
        ({"normalize": {"norm_obs": True, "bogus": 1}}, None),
        ({"group_mode": "sideways"}, None),
        ({"lookahead": -1}, None),
        ({"branch_on": "sometimes"}, None),
        # GRPO's own checks, run on the environment's spaces before a job is queued
        ({"env_name": "Pendulum-v1", "group_mode": "state", "branch_on": "entropy"}, "state-independent"),
        ({"group_mode": "state", "advantage": "timestep"}, "outcome"),
        ({"advantage": "timestep", "gae_lambda": 0.9}, "advantage='nearest'"),
        ({"gae_lambda": 1.5}, None),
        ({"group_mode": "state", "tie_break": "novelty"}, "group_mode='episode'"),
        ({"tie_break": "sometimes"}, None),
        ({"advantage": "timestep", "nearest_fit": "linear"}, "advantage='nearest'"),
        ({"advantage": "nearest", "nearest_fit": "cubic"}, None),
        ({"env_kwargs": {"x": {"nested": "object"}}}, None),
    ],
)
def test_bad_mode_and_policy_requests(service: TestClient, body: dict[str, Any], fragment: str | None) -> None:
    response = service.post("/train", json=body)
    if fragment is None:
        assert response.status_code == 422
    else:
        assert response.status_code == 400 and fragment in response.json()["detail"]


def test_a_branching_job_checkpoints_and_completes(client: TestClient) -> None:
    # Checkpoints asked the envs for the touch counts that only episode groups keep: such a job failed at its first.
    body = {"group_mode": "state", "lookahead": 2, "total_timesteps": 400, "checkpoint_interval": 64}
    status = wait_for_job(client, train(client, model_name="branching", **body))
    assert status["status"] == "completed", status
    assert status["checkpoint_timesteps"] is not None


def test_tie_break_reaches_the_algorithm(client: TestClient) -> None:
    status = wait_for_job(client, train(client, model_name="ties", total_timesteps=400, tie_break="novelty"))
    assert status["status"] == "completed", status
    assert _hyperparameters_of(client, "ties")["tie_break"] == "novelty"
    assert client.app.state.store.load("ties").model.tie_break == "novelty"
    # Acrobot's preset compares tied groups on novelty, which is for episode groups: asking it for branching drops it
    response = client.post("/train", json={"env_name": "Acrobot-v1", "group_mode": "state", "total_timesteps": 64})
    assert response.status_code == 200, response.text
    config = response.json()["config"]
    assert (config["tie_break"], config["sources"]["tie_break"]) == ("none", "default")


def test_nearest_fit_reaches_the_algorithm_and_branching_drops_the_presets(client: TestClient) -> None:
    body = {"model_name": "fitted", "total_timesteps": 400, "advantage": "nearest", "nearest_fit": "linear"}
    status = wait_for_job(client, train(client, **body))
    assert status["status"] == "completed", status
    assert client.app.state.store.load("fitted").model.nearest_fit == "linear"
    # HalfCheetah's preset fits the nearest states' values, which branching (judged by outcome) does not use
    request = TrainingSettings(env_name="HalfCheetah-v5", group_mode="state")
    values, sources = resolve_settings(request, presets.load("HalfCheetah-v5"))
    assert (values["nearest_fit"], sources["nearest_fit"], values["advantage"]) == ("none", "default", "outcome")
    values, sources = resolve_settings(TrainingSettings(env_name="HalfCheetah-v5"), presets.load("HalfCheetah-v5"))
    assert (values["nearest_fit"], sources["nearest_fit"]) == ("linear", "preset")


def test_a_job_starts_from_a_saved_model_and_keeps_its_statistics(client: TestClient) -> None:
    status = wait_for_job(client, train(client, model_name="first", total_timesteps=800, **NORMALISED))
    assert status["status"] == "completed", status
    # A tiny learning rate: the second job's weights stay where the first job left them, if it started there.
    body = {**NORMALISED, "learning_rate": 1e-9, "init_model": "first"}
    status = wait_for_job(client, train(client, model_name="second", total_timesteps=400, **body))
    assert status["status"] == "completed", status
    first, second = client.app.state.store.load("first"), client.app.state.store.load("second")
    for name, weights in first.model.policy.state_dict().items():
        np.testing.assert_allclose(second.model.policy.state_dict()[name].numpy(), weights.numpy(), atol=1e-5)
    assert second.normalizer.obs_rms.count > first.normalizer.obs_rms.count  # the statistics went on too
    assert _hyperparameters_of(client, "second")["learning_rate"] == 1e-9

    unknown = client.post("/train", json={**NORMALISED, "init_model": "nothing"})
    assert unknown.status_code == 400 and "nothing" in unknown.json()["detail"]
    mismatch = client.post("/train", json={"env_name": "CartPole-v1", "init_model": "first"})
    assert mismatch.status_code == 400 and "spaces" in mismatch.json()["detail"]


def test_a_preset_key_the_service_does_not_take_stops_the_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "grpo.yml"
    bad.write_text("CartPole-v1:\n  n_envs: 2\n  learning_rat: 0.001\n")
    with (
        pytest.raises(presets.PresetError, match="learning_rat"),
        TestClient(create_app(make_settings(tmp_path, presets_file=bad))),
    ):
        pass
