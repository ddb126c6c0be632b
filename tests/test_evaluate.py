"""The closed-loop evaluator and its baseline policies."""

from __future__ import annotations

import json

import pytest

from sim.env import EnvConfig, TabletopEnv
from sim.evaluate import ExpertPolicy, NoOpPolicy, RandomPolicy, evaluate, format_summary, wilson_interval
from sim.tasks import TASK_KINDS


def test_wilson_interval_known_values():
    # 0 of 10: upper bound z^2 / (n + z^2) = 3.8416 / 13.8416
    assert wilson_interval(0, 10) == pytest.approx((0.0, 3.8416 / 13.8416), abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0


def test_expert_succeeds_and_baselines_do_not(tmp_path):
    env = TabletopEnv(EnvConfig(max_steps=60))
    expert = evaluate(ExpertPolicy(env), env, episodes_per_task=6, out_dir=tmp_path / "expert")
    noop = evaluate(NoOpPolicy(), env, episodes_per_task=6)
    random = evaluate(RandomPolicy(seed=1), env, episodes_per_task=6)
    assert expert["overall"]["success_rate"] >= 0.95
    assert noop["overall"]["success_rate"] == 0.0
    assert noop["overall"]["mean_length"] == 60
    assert random["overall"]["success_rate"] < 0.3
    lo, hi = expert["overall"]["ci95"]
    assert lo < expert["overall"]["success_rate"] <= hi
    assert set(expert["per_task"]) == {"pick_place", "push", "reach"}
    written = json.loads((tmp_path / "expert" / "summary.json").read_text())
    assert written["overall"] == expert["overall"] and written["policy"] == "ExpertPolicy"
    gifs = sorted(p.name for p in (tmp_path / "expert").glob("*.gif"))
    assert len(gifs) == 3 and all(p.startswith("rollout_") for p in gifs)
    assert "overall" in format_summary(expert)


def test_evaluation_seeds_are_fixed():
    env = TabletopEnv()
    a = evaluate(RandomPolicy(seed=3), env, episodes_per_task=2, tasks=("reach",))
    b = evaluate(RandomPolicy(seed=3), env, episodes_per_task=2, tasks=("reach",))
    assert [e["instruction"] for e in a["episodes"]] == [e["instruction"] for e in b["episodes"]]
    assert a["overall"] == b["overall"]


def test_no_episodes_or_unknown_tasks_are_refused(capsys):
    from sim.evaluate import main

    for argv, message in (
        (["--episodes", "0"], "--episodes must be >= 1"),
        (["--tasks", ","], "--tasks ','"),
        (["--tasks", "fly"], "--tasks 'fly'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least one episode"):
        evaluate(NoOpPolicy(), TabletopEnv(EnvConfig(image_size=32)), 0)


def test_a_bundle_is_scored_beside_its_baselines_on_the_same_episodes(tmp_path, sp_model, capsys):
    from bundles import write_action_bundle

    from latent_pretraining.evaluate import main as evaluate_main

    bundle, _ = write_action_bundle(tmp_path, sp_model)
    task = TASK_KINDS[0]
    out = tmp_path / "eval"
    argv = ["--policy", str(bundle.directory), "--episodes", "2", "--tasks", task, "--max_steps", "12"]
    evaluate_main([*argv, "--out", str(out), "--videos", "1"])
    results = json.loads((out / "results.json").read_text())
    assert list(results["policies"]) == ["policy", "expert", "random", "noop"]
    env = TabletopEnv(EnvConfig(max_steps=12))
    for name, baseline in (("expert", ExpertPolicy(env)), ("noop", NoOpPolicy())):
        direct = evaluate(baseline, env, episodes_per_task=2, tasks=(task,))
        assert results["policies"][name]["overall"] == direct["overall"]
    scores = results["policies"]["policy"]
    assert scores["overall"]["episodes"] == 2 and scores["per_task"][task]["episodes"] == 2
    lo, hi = scores["overall"]["ci95"]
    assert lo <= scores["overall"]["success_rate"] <= hi
    assert len(list((out / "policy").glob("rollout_*.gif"))) == 1
    printed = capsys.readouterr().out
    assert printed.splitlines()[-5].split()[0] == "policy" and f"results: {out / 'results.json'}" in printed
    with pytest.raises(SystemExit, match="not both"):
        evaluate_main([*argv, "--server", "http://127.0.0.1:1"])
    with pytest.raises(SystemExit):
        evaluate_main(["--policy", str(bundle.directory), "--tasks", "fly"])
    assert "--tasks 'fly': choose one or more of" in capsys.readouterr().err
