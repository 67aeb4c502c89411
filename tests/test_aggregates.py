"""The benchmark's statistics against rliable's definitions, on hand-made runs."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def aggregates():
    from benchmarks import aggregates as module  # the repository's root is on the path, as for every test

    return module


def test_iqm_is_the_mean_of_the_middle_half(aggregates):
    assert aggregates.iqm(np.array([100.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -50.0])) == pytest.approx(3.5)
    assert aggregates.iqm(np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 4.0, 4.0, 4.0]]), axis=1) == pytest.approx([2.5, 4.0])


def test_bootstrap_interval_holds_the_iqm_and_collapses_on_equal_runs(aggregates):
    low, high = aggregates.bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert low <= 3.0 <= high and low >= 1.0 and high <= 5.0
    assert aggregates.bootstrap_ci([7.0] * 5) == (7.0, 7.0)


def test_probability_of_improvement_counts_pairs_and_half_ties(aggregates):
    assert aggregates.probability_of_improvement([2, 3], [1, 2]) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    # steps to threshold: fewer is better, and a run that never got there (inf) loses to any that did
    assert aggregates.probability_of_improvement([1000, np.inf], [2000, 2000], higher_is_better=False) == 0.5


def test_runs_from_points(aggregates, tmp_path):
    path = tmp_path / "points.csv"
    path.write_text(
        "algo,env,seed,timesteps,mean_return,std_return,branch_steps\n"
        "grpo,CartPole-v1,0,0,500,0,0\ngrpo,CartPole-v1,0,1000,100,0,10\ngrpo,CartPole-v1,0,2000,480,0,30\n"
        "grpo,CartPole-v1,1,0,20,0,0\ngrpo,CartPole-v1,1,1000,30,0,0\ngrpo,CartPole-v1,1,2000,40,0,0\n"
    )
    runs = aggregates.read_runs([path], {"grpo": "after"})
    assert [run.algo for run in runs] == ["after", "after"]
    assert runs[0].steps_to(475) == 2000 and runs[0].steps_to(475, with_branch_steps=True) == 2030
    assert runs[1].steps_to(475) == np.inf  # the untrained policy at mark 0 never counts
    cell = aggregates.cell(runs, 475)
    assert cell.censored == 1 and cell.final == [480.0, 40.0]
