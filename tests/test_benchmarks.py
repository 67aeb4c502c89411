import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from stable_baselines3.common.utils import LinearSchedule
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def learning():
    """``benchmarks/learning.py`` is a script, not an installed package: load it from its path."""
    spec = importlib.util.spec_from_file_location("benchmarks_learning", ROOT / "benchmarks" / "learning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_zoo_entries_translate_like_the_zoo(learning):
    setup = learning.model_setup(
        {
            "normalize": True,
            "n_envs": 4,
            "gamma": 0.98,
            "learning_rate": "lin_0.001",
            "policy_kwargs": "dict(log_std_init=-2, activation_fn=nn.ReLU, net_arch=dict(pi=[256], vf=[256]))",
        }
    )
    assert setup.n_envs == 4
    assert setup.normalize == {"gamma": 0.98}
    assert isinstance(setup.kwargs["learning_rate"], LinearSchedule)
    assert setup.kwargs["learning_rate"](1.0) == pytest.approx(1e-3)
    assert setup.kwargs["learning_rate"](0.25) == pytest.approx(2.5e-4)
    assert setup.kwargs["policy_kwargs"] == {
        "log_std_init": -2,
        "activation_fn": nn.ReLU,
        "net_arch": {"pi": [256], "vf": [256]},
    }
    assert learning.model_setup({"n_envs": 8}).normalize is None
    assert learning.model_setup({"normalize": True}).normalize == {}


def test_markdown_update_keeps_other_sections(learning, tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\n## Throughput\nkept\n")
    marks = learning.MARK_START, learning.MARK_END
    learning.update_markdown(path, f"{learning.MARK_START}\nfirst\n{learning.MARK_END}", *marks)
    learning.update_markdown(path, f"{learning.MARK_START}\nsecond\n{learning.MARK_END}", *marks)
    text = path.read_text()
    assert "## Throughput\nkept\n" in text
    assert "second" in text and "first" not in text
    assert text.count(learning.MARK_START) == 1


@pytest.mark.usefixtures("one_torch_thread")
def test_quick_benchmark_writes_every_output(learning, tmp_path):
    budget, every = 2_000, 1_000
    jobs = learning.make_jobs(
        ["CartPole-v1"], ["grpo", "ppo"], {"CartPole-v1": [0]}, {"CartPole-v1": budget}, {"CartPole-v1": every}
    )
    markdown = tmp_path / "benchmarks.md"
    results = learning.benchmark(jobs, workers=1, out_dir=tmp_path, markdown=markdown, command="pytest")

    assert [(run.algo, run.seed) for run in results] == [("grpo", 0), ("ppo", 0)]
    for run in results:
        assert run.num_timesteps >= budget
        assert run.steps_per_second > 0
        assert run.final_return == run.points[-1].mean_return

    with (tmp_path / "learning.csv").open() as f:
        rows = list(csv.DictReader(f))
    for algo in ("grpo", "ppo"):
        points = [row for row in rows if row["algo"] == algo]
        # both algorithms are evaluated at the same marks, whatever their rollout lengths
        assert [int(row["timesteps"]) for row in points] == [0, 1_000, 2_000]
        assert all(0 < float(row["mean_return"]) <= 500 for row in points)  # CartPole's possible returns
        # the sampled training episodes' mean: none ended before the first eval, some by the last
        assert math.isnan(float(points[0]["train_return"])) and 8 <= float(points[-1]["train_return"]) <= 500

    summary = json.loads((tmp_path / "learning_summary.json").read_text())
    assert set(summary["envs"]["CartPole-v1"]["targets_met"]) == {"steps", "final", "speed"}
    assert (tmp_path / "learning_curves.png").stat().st_size > 0
    text = markdown.read_text()
    section = text[text.index(learning.MARK_START) : text.index(learning.MARK_END)]
    assert "| CartPole-v1 (475) | 2,000 | 8 / 8 |" in section
    assert "pytest" in section and "learning_curves.png" in section


def test_steps_to_threshold_is_the_first_eval_at_or_above_it_after_the_start(learning):
    points = [learning.EvalPoint(t, r, 0.0) for t, r in [(0, 500.0), (1_000, 100.0), (2_000, 475.0), (3_000, 500.0)]]
    assert learning.steps_to_threshold(points, 475.0) == 2_000
    assert learning.steps_to_threshold(points[:2], 475.0) is None


WRK_OUTPUT = """\
Running 3s test @ http://127.0.0.1:8001/echo
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.31ms    1.02ms  21.46ms   91.20%
    Req/Sec     6.66k   312.20     7.01k    80.00%
  Latency Distribution
     50%    2.13ms
     75%    2.40ms
     90%    2.90ms
     99%   21.46ms
  19878 requests in 3.00s, 3.47MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   6626.01
Transfer/sec:      1.16MB
"""


def test_wrk_output_is_read_into_numbers() -> None:
    from benchmarks import wrk

    result = wrk.parse(WRK_OUTPUT)
    assert result == wrk.LoadResult(rps=6626.01, p50_ms=2.13, p99_ms=21.46, requests=19878, errors=3)
    assert (
        wrk.parse(
            WRK_OUTPUT.replace("99%   21.46ms", "99%  1.20s").replace("  Non-2xx or 3xx responses: 3\n", "")
        ).p99_ms
        == 1200.0
    )
    assert 'wrk.body = [==[{"a":1}]==]' in wrk.lua_script("POST", '{"a":1}', {"X-API-Key": "k"})
