"""Exact resume: a run checkpointed and resumed ends with the parameters of the run that never stopped, on CPU, in
Python (``checkpoints.save_checkpoint`` / ``load_checkpoint``) and through the service (a ``kill -9`` between two
checkpoints, a restart and ``POST /training/{id}/resume``)."""

import io
import signal
import time
from pathlib import Path

import pytest
import torch as th
from harness import TINY, Server, free_port
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from artifacts import read_normalizer
from checkpoints import load_checkpoint, read_training_state, save_checkpoint
from grpo import GRPO

TOTAL = 4096
SETTINGS = {
    "n_steps": 32,
    "batch_size": 64,
    "n_epochs": 2,
    "group_size": 4,
    "seed": 0,
    "device": "cpu",
    "policy_kwargs": {"net_arch": [16]},
}


def parameters(model: GRPO) -> th.Tensor:
    return th.cat([parameter.detach().flatten() for parameter in model.policy.parameters()])


class CheckpointOnce(BaseCallback):
    """Saves one checkpoint, at the first rollout start past ``at`` timesteps, as the service's callback does."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.checkpoint: io.BytesIO | None = None

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self.checkpoint is None and self.model.num_timesteps >= self.at:
            self.checkpoint = io.BytesIO()
            save_checkpoint(self.model, self.checkpoint)
            self.checkpoint.seek(0)


class StopAt(BaseCallback):
    """Stops training in the middle of a rollout, as a stop request does."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def _on_step(self) -> bool:
        return self.model.num_timesteps < self.at


def _env(normalize: bool) -> VecEnv:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    return VecNormalize(env) if normalize else env


@pytest.mark.parametrize(("beta", "normalize"), [(0.0, False), (0.04, False), (0.0, True)])
def test_a_run_resumed_from_a_checkpoint_ends_where_the_uninterrupted_run_does(
    one_torch_thread: None, beta: float, normalize: bool
) -> None:
    straight = GRPO("MlpPolicy", _env(normalize), beta=beta, **SETTINGS)
    callback = CheckpointOnce(at=1500)
    straight.learn(TOTAL, callback=callback)
    assert callback.checkpoint is not None
    assert not th.equal(parameters(straight), parameters(GRPO("MlpPolicy", _env(False), **SETTINGS)))  # it learned

    resumed = load_checkpoint(callback.checkpoint, device="cpu")
    assert 1500 <= resumed.num_timesteps < TOTAL
    resumed.learn(TOTAL - resumed.num_timesteps, reset_num_timesteps=False)
    assert resumed.num_timesteps == straight.num_timesteps
    assert th.equal(parameters(resumed), parameters(straight))
    if normalize:
        assert resumed.get_vec_normalize_env() is not None
        assert (resumed.get_vec_normalize_env().obs_rms.mean == straight.get_vec_normalize_env().obs_rms.mean).all()


def test_a_branching_run_checkpoints_and_resumes_where_the_uninterrupted_run_ends(one_torch_thread: None) -> None:
    # Branching forks its envs instead of seeding their resets: they count no touches, and saving must not ask.
    settings = {**SETTINGS, "group_mode": "state", "lookahead": 2}
    straight = GRPO("MlpPolicy", _env(False), **settings)
    callback = CheckpointOnce(at=200)
    straight.learn(600, callback=callback)
    assert callback.checkpoint is not None

    resumed = load_checkpoint(callback.checkpoint, device="cpu")
    resumed.learn(600 - resumed.num_timesteps, reset_num_timesteps=False)
    assert resumed.num_timesteps == straight.num_timesteps
    assert th.equal(parameters(resumed), parameters(straight))


def test_a_run_stopped_mid_rollout_resumes_exactly_and_a_plain_load_does_not(one_torch_thread: None) -> None:
    straight = GRPO("MlpPolicy", _env(False), **SETTINGS)
    straight.learn(TOTAL)
    stopped = GRPO("MlpPolicy", _env(False), **SETTINGS)
    stopped.learn(TOTAL, callback=StopAt(1500))
    checkpoint = io.BytesIO()
    save_checkpoint(stopped, checkpoint)
    checkpoint.seek(0)

    resumed = load_checkpoint(checkpoint, device="cpu")
    resumed.learn(TOTAL - resumed.num_timesteps, reset_num_timesteps=False)
    assert th.equal(parameters(resumed), parameters(straight))

    # What resume was before: the zip alone, on fresh environments. The checkpoint is still an ordinary SB3 zip.
    checkpoint.seek(0)
    plain = GRPO.load(checkpoint, env=_env(False), device="cpu")
    plain.learn(TOTAL - plain.num_timesteps, reset_num_timesteps=False)
    assert not th.equal(parameters(plain), parameters(straight))


def test_grpo_load_keeps_the_group_seed_generator(tmp_path: Path) -> None:
    model = GRPO("MlpPolicy", "CartPole-v1", **SETTINGS)
    model.learn(512)
    model.save(tmp_path / "model.zip")
    loaded = GRPO.load(tmp_path / "model.zip", device="cpu")
    # The loaded model's next groups are the saved run's next ones, not the seed's first ones again.
    assert loaded.groups.schedule.open_group == model.groups.schedule.open_group > 0
    assert [loaded.groups.schedule._reserve() for _ in range(8)] == [model.groups.schedule._reserve() for _ in range(8)]
    fresh = GRPO("MlpPolicy", "CartPole-v1", **SETTINGS)
    assert fresh.groups.schedule._reserve()[1] != loaded.groups.schedule._reserve()[1]
    # Loaded with another group size (a job's init_model), the model starts a schedule of that size.
    regrouped = GRPO.load(tmp_path / "model.zip", device="cpu", group_size=8)
    assert regrouped.groups.schedule.group_size == 8 and regrouped.groups.schedule.open_group == -1


def test_a_plain_model_zip_has_no_training_state(tmp_path: Path) -> None:
    model = GRPO("MlpPolicy", "CartPole-v1", **SETTINGS)
    model.save(tmp_path / "model.zip")
    assert read_training_state(tmp_path / "model.zip") is None
    assert load_checkpoint(tmp_path / "model.zip", device="cpu").num_timesteps == 0
    save_checkpoint(model, tmp_path / "checkpoint")
    assert read_training_state(tmp_path / "checkpoint.zip") is not None


def test_a_model_loaded_on_environments_it_never_stepped_carries_none(tmp_path: Path) -> None:
    # What the service saves of a Ray actor's model: loaded on one fresh environment (under the saved statistics),
    # whose episodes are no run's; a resume must make the job's own environments, not go on in that one.
    trained = GRPO("MlpPolicy", _env(True), **SETTINGS)
    trained.learn(64)
    save_checkpoint(trained, tmp_path / "trained.zip")
    assert read_training_state(tmp_path / "trained.zip")["environments"] is not None
    assert read_normalizer(tmp_path / "trained.zip") is not None  # the statistics a plain load goes on with
    reloaded = GRPO.load(tmp_path / "trained.zip", env=make_vec_env("CartPole-v1", n_envs=1), device="cpu")
    save_checkpoint(reloaded, tmp_path / "reloaded.zip")
    assert read_training_state(tmp_path / "reloaded.zip")["environments"] is None
    resumed = load_checkpoint(tmp_path / "reloaded.zip", env=_env(False), device="cpu")
    assert resumed.get_env().num_envs == 2


def test_a_job_killed_and_resumed_ends_with_the_uninterrupted_jobs_parameters(tmp_path: Path) -> None:
    server = Server(tmp_path, free_port())
    server.start()
    try:
        job = {**TINY, "total_timesteps": 16_384, "seed": 0, "checkpoint_interval": 1024}
        straight = server.post("/train", {**job, "model_name": "straight"}).json()["job_id"]
        # Generous waits: on a loaded 2-core machine a 16k-step job can take minutes.
        assert server.wait_for_job(straight, timeout=600)["status"] == "completed"

        job_id = server.post("/train", {**job, "model_name": "resumed"}).json()["job_id"]
        deadline = time.monotonic() + 600
        while (server.get(f"/training/{job_id}/status")["checkpoint_timesteps"] or 0) < 2048:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.stop(signal.SIGKILL)
        server.start()
        interrupted = server.get(f"/training/{job_id}/status")
        assert interrupted["status"] == "interrupted" and interrupted["current_timesteps"] < 16_384
        assert server.post(f"/training/{job_id}/resume").status_code == 200
        assert server.wait_for_job(job_id, timeout=600)["status"] == "completed"
        print(f"\nkilled after the checkpoint at {interrupted['current_timesteps']} timesteps, resumed to 16384")

        models = tmp_path / "models"
        a = GRPO.load(models / "straight.zip", device="cpu")
        b = GRPO.load(models / "resumed.zip", device="cpu")
        assert a.num_timesteps == b.num_timesteps == 16_384
        assert th.equal(parameters(a), parameters(b))
    finally:
        server.kill()
