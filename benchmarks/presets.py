"""What a new user of the service gets: a job asked for with only an environment's name and a budget.

For each environment and seed, a real server (``python run_api.py`` on a free port, a data folder of its own) gets
``POST /train {"env_name": ..., "total_timesteps": ..., "seed": ...}`` and nothing else (CartPole also
``"reward_function_type": "env"``: its own +1, not the document's shaped default), so every other setting comes
from ``hyperparams/grpo.yml``; the model is then scored by ``POST /models/{name}/evaluate`` over 10 episodes.
Prints the table and writes it into the ``presets`` section of docs/benchmarks.md.

    python benchmarks/presets.py                                  # every env below, 3 seeds
    python benchmarks/presets.py --envs Acrobot-v1 --seeds 0 --workers 2
"""

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import presets  # noqa: E402
from benchmarks.report import DEFAULT_MARKDOWN, publish, write_section  # noqa: E402
from tests.harness import Server, free_port, start_job, wait_for_job  # noqa: E402

# env id -> (budget, return to reach); None: the preset's own n_timesteps.
TARGETS: dict[str, tuple[int | None, float]] = {
    "CartPole-v1": (50_000, 475.0),
    "Acrobot-v1": (100_000, -100.0),
    "Pendulum-v1": (100_000, -200.0),
    "MountainCar-v0": (None, -110.0),
    "MountainCarContinuous-v0": (None, 90.0),
    "LunarLander-v3": (1_000_000, 200.0),
}
QUICK_ENVS = ("CartPole-v1", "Acrobot-v1", "Pendulum-v1", "MountainCar-v0", "MountainCarContinuous-v0")
EVAL_EPISODES = 10
EVAL_SEED = 10_000


@dataclass(frozen=True)
class Result:
    env_id: str
    seed: int
    budget: int
    mean_return: float
    minutes: float


def run(server: Server, env_id: str, seed: int, budget: int) -> Result:
    body: dict = {"env_name": env_id, "total_timesteps": budget, "seed": seed}
    if env_id == "CartPole-v1":
        body["reward_function_type"] = "env"
    started = time.monotonic()
    job = start_job(server.http, body)
    status = wait_for_job(server.http, job["job_id"], timeout=4 * 3600, poll_s=2.0)
    assert status["status"] == "completed", status
    evaluation = server.post(
        f"/models/{status['model_name']}/evaluate", {"n_episodes": EVAL_EPISODES, "seed": EVAL_SEED}
    )
    assert evaluation.status_code == 200, evaluation.text
    minutes = (time.monotonic() - started) / 60
    result = Result(env_id, seed, budget, evaluation.json()["mean_return"], minutes)
    print(f"{env_id} seed {seed}: {result.mean_return:.1f} after {budget:,} steps ({minutes:.1f} min)", flush=True)
    return result


def table(results: list[Result], command: str, workers: int) -> list[str]:
    lines = [
        "## Presets through the API",
        "",
        f"`{command}`: a real server, jobs with only `env_name`, `total_timesteps` and `seed` (CartPole also "
        f"`reward_function_type: env`), every other setting from `hyperparams/grpo.yml`; the model evaluated by "
        f"`POST /models/{{name}}/evaluate` over {EVAL_EPISODES} episodes; {workers} job(s) at a time on a 2-core "
        "machine.",
        "",
        "| environment | budget | target | return per seed | mean | target met |",
        "|---|---|---|---|---|---|",
    ]
    for env_id in dict.fromkeys(result.env_id for result in results):
        runs = [result for result in results if result.env_id == env_id]
        _, target = TARGETS[env_id]
        mean = statistics.fmean(result.mean_return for result in runs)
        per_seed = ", ".join(f"{result.mean_return:.1f}" for result in runs)
        met = sum(result.mean_return >= target for result in runs)
        lines.append(
            f"| {env_id} | {runs[0].budget:,} | {target:g} | {per_seed} | {mean:.1f} | {met} of {len(runs)} seeds |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", choices=list(TARGETS), default=list(QUICK_ENVS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="jobs the server trains at once")
    parser.add_argument("--markdown", type=Path, default=DEFAULT_MARKDOWN)
    args = parser.parse_args(argv)
    command = " ".join(["python benchmarks/presets.py", *(argv if argv is not None else sys.argv[1:])])

    book = presets.read()
    runs = [
        (env_id, seed, TARGETS[env_id][0] or book[env_id].n_timesteps or 0)
        for env_id in args.envs
        for seed in args.seeds
    ]
    with tempfile.TemporaryDirectory() as folder:
        server = Server(Path(folder), free_port(), "--max-concurrent-jobs", str(args.workers), "--log-level", "warning")
        server.start()
        try:
            results: list[Result] = []
            with ThreadPoolExecutor(args.workers) as pool:
                for future in as_completed([pool.submit(run, server, *run_args) for run_args in runs]):
                    results.append(future.result())
                    # Written after every run: a long benchmark cut short still leaves what it measured.
                    order = {run_args[:2]: i for i, run_args in enumerate(runs)}
                    results.sort(key=lambda result: order[result.env_id, result.seed])
                    write_section(args.markdown, "presets", "\n".join(table(results, command, args.workers)))
        finally:
            server.stop()
    publish(args.markdown, "presets", table(results, command, args.workers))


if __name__ == "__main__":
    main()
