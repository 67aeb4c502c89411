"""A 20-trial Optuna study on CartPole-v1 through the service: the env's own reward, 20k steps per trial, GRPO's
default search space, TPE and the median pruner, two trials at a time on the thread executor of a real
``python run_api.py``. Reports the best evaluated return, how many trials the pruner stopped and the wall time;
writes the ``studies`` section of docs/benchmarks.md.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from benchmarks.report import DEFAULT_MARKDOWN, publish  # noqa: E402
from tests.harness import Server, free_port  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--timesteps", type=int, default=20_000)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, default=DEFAULT_MARKDOWN)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="grpo-study-bench-"))
    server = Server(root, free_port(), "--max-concurrent-jobs", str(args.parallel))
    server.start()
    body = {
        "env_name": "CartPole-v1",
        "n_trials": args.trials,
        "total_timesteps": args.timesteps,
        "fixed": {"reward_function_type": "env"},
        "parallel_trials": args.parallel,
        "n_eval_episodes": 10,
        "seed": args.seed,
        "model_name": "cartpole_study_best",
    }
    started = time.monotonic()
    try:
        answer = server.post("/studies", body)
        assert answer.status_code == 200, answer.text
        study_id = answer.json()["study_id"]
        while (study := server.get(f"/studies/{study_id}"))["status"] == "running":
            time.sleep(5)
            print(f"{time.monotonic() - started:.0f}s {study['trials']} best {study['best_value']}", flush=True)
        wall = time.monotonic() - started
        best = server.http.post("/models/cartpole_study_best/evaluate", json={"n_episodes": 20, "seed": 123}).json()
    finally:
        server.kill()
    trials = study["trials_list"]
    pruned = [t for t in trials if t["state"] == "pruned"]
    rows = [
        f"| {t['number']} | {t['state']} | {'' if t['value'] is None else format(t['value'], '.1f')} | "
        f"{t['params'].get('learning_rate', 0):.2e} | {max(map(int, t['intermediate_values']), default=0)} |"
        for t in trials
    ]
    publish(
        args.markdown,
        "studies",
        [
            "## Studies",
            "",
            f"`python benchmarks/studies.py`: `POST /studies` on CartPole-v1, {args.trials} trials of "
            f"{args.timesteps} steps with the env's reward, the default search space, TPE (seed {args.seed}) and the "
            f"median pruner (5 startup trials), {args.parallel} trials at once on the thread executor of "
            f"`python run_api.py`, {os.cpu_count()} cores shared with other work (load average "
            f"{os.getloadavg()[0]:.1f} at the end).",
            "",
            f"- status {study['status']}, wall time {wall / 60:.1f} min; trials {study['trials']}",
            f"- pruned early: {len(pruned)} of {len(trials)} ({len(pruned) / max(1, len(trials)):.0%})",
            f"- best trial {study['best_trial']}: evaluated return {study['best_value']} over 10 episodes; its model "
            f"`cartpole_study_best` re-evaluated on 20 other episodes: {best['mean_return']:.1f} ± "
            f"{best['std_return']:.1f}",
            "",
            "Best trial as a preset entry:",
            "",
            "```yaml",
            study["best_preset_yaml"].rstrip() if study["best_preset_yaml"] else "(none)",
            "```",
            "",
            "| trial | state | value (pruned: last reported return) | learning rate | last reported step |",
            "| --- | --- | --- | --- | --- |",
            *rows,
        ],
    )


if __name__ == "__main__":
    main()
