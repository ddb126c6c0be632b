"""The pipeline's results: each learned number beside a baseline worked out by hand here."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from latent_pretraining import report


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run_dir(path, record):
    path.mkdir()
    _jsonl(path / "metrics.jsonl", [{"step": 1, "train/loss": 2.0}, {"step": 2, **record}])
    return path


def _closed_loop(path, rates):
    def rate(r):
        return {"success_rate": r, "ci95": [max(r - 0.1, 0), r + 0.1], "episodes": 10}

    policies = {name: {"overall": rate(r), "per_task": {"reach": rate(r / 2)}} for name, r in rates.items()}
    path.write_text(json.dumps({"policies": policies}))
    return path


def test_results_set_each_number_beside_its_hand_computed_baseline(tmp_path, capsys):
    latent_run = _run_dir(tmp_path / "latent", {"eval/accuracy_latent": 0.6})
    # majority per position over training rows: [1, 2]; held out: 2 of 4 codes match -> 0.5
    latent_train = _jsonl(tmp_path / "lt.jsonl", [{"delta": [1, 2]}, {"delta": [1, 3]}, {"delta": [0, 2]}])
    latent_eval = _jsonl(tmp_path / "le.jsonl", [{"delta": [1, 2]}, {"delta": [0, 3]}])
    finetune_run = _run_dir(
        tmp_path / "finetune",
        {
            "eval/action_mae": 1.0,
            "eval/action_mae_0": 1.5,
            "eval/action_mae_1": 0.0,
            "eval/action_mae_median_0": 1.25,
            "eval/action_mae_median_1": 0.0,
            "eval/accuracy_action": 0.25,
        },
    )
    # dx: training mean 1, held-out 3 -> MAE 2; training median 0 -> MAE 3; dy never moves, so it is
    # left out. tokens: majority [5, 7]; held out [5, 8] -> 1 of 2
    train_rows = [
        {"raw_actions": [0.0, 1.0], "action": [5, 7]},
        {"raw_actions": [0.0, 1.0], "action": [5, 7]},
        {"raw_actions": [3.0, 1.0], "action": [5, 7]},
    ]
    finetune_train = _jsonl(tmp_path / "ft.jsonl", train_rows)
    finetune_eval = _jsonl(tmp_path / "fe.jsonl", [{"raw_actions": [3.0, 1.0], "action": [5, 8]}])
    closed = _closed_loop(
        tmp_path / "results.json", {"policy": 0.3, "expert": 1.0, "random": 0.1, "noop": 0.25, "still": 0.5}
    )
    out = tmp_path / "out"
    report.main(
        [
            "--out", str(out),
            "--latent_run", str(latent_run), "--latent_train", str(latent_train),
            "--latent_eval", str(latent_eval),
            "--finetune_run", str(finetune_run), "--finetune_train", str(finetune_train),
            "--finetune_eval", str(finetune_eval), "--closed_loop", str(closed),
        ]
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["latent"]["accuracy"] == 0.6 and results["latent"]["majority_baseline"] == 0.5
    assert results["action"]["mae_per_moving_dimension"] == {
        "dx": {"mae": 1.5, "mae_median_bins": 1.25, "mean_baseline": 2.0, "median_baseline": 3.0}
    }
    assert results["action"]["token_majority_baseline"] == 0.5
    printed = capsys.readouterr().out
    assert (
        "latent-code accuracy 0.600 (teacher-forced) is above the per-position majority code's 0.500"
        in printed
    )
    assert "action MAE of dx 1.5000 (teacher-forced) is below the training mean's 2.0000" in printed
    assert (
        "action MAE of dx with median bins 1.2500 is below the training mean's 2.0000 and below the "
        "training median's 3.0000" in printed
    )
    assert (
        "action-token accuracy 0.250 (teacher-forced) is NOT above the per-dimension majority token's 0.500"
        in printed
    )
    assert "closed-loop success 0.30 [0.20, 0.40] is above the random policy's 0.10" in printed
    # 0.30 beats 0.25, but its interval reaches below it
    assert "is NOT clearly above (within its interval) the noop policy's 0.25" in printed
    markdown = (out / "report.md").read_text()
    assert (
        "| expert | 1.00 | [0.90, 1.10] | 10 |" in markdown
        and "| dx | 1.5000 | 2.0000 | 1.2500 | 3.0000 |" in markdown
    )


def test_bad_rows_are_named_and_nothing_is_written(tmp_path):
    run = _run_dir(tmp_path / "latent", {"eval/accuracy_latent": 0.6})
    good = _jsonl(tmp_path / "lt.jsonl", [{"delta": [1]}])
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"delta": [1]}\n{"delta": \n')
    no_field = _jsonl(tmp_path / "nofield.jsonl", [{"delta": [1]}, {"codes": [1]}])
    out = tmp_path / "out"
    for held_out, message in (
        (bad_json, "bad.jsonl:2: not valid JSON"),
        (no_field, "nofield.jsonl:2: no 'delta' field"),
    ):
        argv = [
            "--out",
            str(out),
            "--latent_run",
            str(run),
            "--latent_train",
            str(good),
            "--latent_eval",
            str(held_out),
        ]
        with pytest.raises(SystemExit, match=re.escape(message)):
            report.main(argv)
    assert not (out / "results.json").exists()
    unevaluated = _run_dir(tmp_path / "unevaluated", {"train/loss": 1.0})
    with pytest.raises(
        SystemExit,
        match=re.escape("unevaluated/metrics.jsonl: no evaluation record with eval/accuracy_latent"),
    ):
        report.main(["--out", str(out), "--latent_run", str(unevaluated), "--latent_train", str(good),
                     "--latent_eval", str(good)])  # fmt: skip
    with pytest.raises(SystemExit):
        report.main(["--out", str(out), "--latent_run", str(run)])  # the rows are missing


def test_an_action_head_with_no_valid_prediction_has_no_mae_and_does_not_beat_the_mean(tmp_path, capsys):
    run = _run_dir(tmp_path / "finetune", {"eval/accuracy_action": 0.1, "eval/action_invalid_rate": 1.0})
    rows = _jsonl(
        tmp_path / "rows.jsonl",
        [{"raw_actions": [0.0], "action": [1]}, {"raw_actions": [2.0], "action": [1]}],
    )
    out = tmp_path / "out"
    argv = ["--finetune_run", str(run), "--finetune_train", str(rows), "--finetune_eval", str(rows)]
    report.main(["--out", str(out), *argv])
    results = json.loads((out / "results.json").read_text())["action"]
    assert results["mae_per_moving_dimension"] == {
        "dx": {"mae": None, "mae_median_bins": None, "mean_baseline": 1.0, "median_baseline": 1.0}
    }
    assert results["invalid_rate"] == 1.0
    assert (
        "action MAE of dx none is NOT comparable with the training mean's 1.0000: 100% of held-out"
        in capsys.readouterr().out
    )
    assert "| dx | none | 1.0000 |" in (out / "report.md").read_text()


def test_figures_plot_the_runs_and_the_evaluation(tmp_path):
    run = _run_dir(tmp_path / "run", {"eval/accuracy_latent": 0.5})  # train/loss 2.0 at step 1 only
    closed = _closed_loop(tmp_path / "results.json", {"policy": 0.4, "random": 0.0})
    assert report.training_curve(run) == ([1], [2.0])
    rates = report.closed_loop_rates(report.closed_loop_part(closed))
    assert rates["policy"] == {
        "reach": pytest.approx((0.2, 0.1, 0.3)),
        "overall": pytest.approx((0.4, 0.3, 0.5)),
    }
    out = tmp_path / "out"
    report.main(["--out", str(out), "--closed_loop", str(closed), "--curves", f"latent={run}"])
    for name in ("training_curves.png", "closed_loop.png"):
        assert (out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}](figures/{name})" in (out / "report.md").read_text()
    with pytest.raises(SystemExit):
        report.main(["--out", str(out), "--closed_loop", str(closed), "--curves", "no-equals-sign"])


def _evaluation(path, per_task):
    """An evaluation's results.json whose policy scored ``per_task[task] = (successes, episodes)``."""

    def stats(k, n):
        return {"successes": k, "episodes": n, "success_rate": k / n, "ci95": [0.0, 1.0]}

    k, n = (sum(v[i] for v in per_task.values()) for i in (0, 1))
    policy = {"overall": stats(k, n), "per_task": {t: stats(*v) for t, v in per_task.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"policies": {"policy": policy}}))
    return path


def test_arms_pool_their_seeds_and_compare_with_the_papers_targets(tmp_path, capsys):
    runs, evals = {}, {}
    # (reach, push) successes of 5 each per seed: scratch 3/20, latent 12/20, actions 14/20
    for arm, seeds in {
        "scratch": [(1, 0), (2, 0)],
        "latent": [(5, 1), (5, 1)],
        "actions": [(5, 2), (5, 2)],
    }.items():
        for s, (reach, push) in enumerate(seeds):
            evals[arm, s] = _evaluation(
                tmp_path / f"{arm}{s}" / "results.json", {"reach": (reach, 5), "push": (push, 5)}
            )
            runs[arm, s] = _run_dir(
                tmp_path / f"{arm}{s}run",
                {
                    "eval/accuracy_action": 0.5,
                    "eval/action_mae_0": 0.1 * (s + 1),
                    "eval/action_mae_median_1": 0.3,
                },
            )
    flags = [f for (arm, s), e in evals.items() for f in ("--arm", f"{arm},{runs[arm, s]},{e}")]
    report.main(["--out", str(tmp_path / "out"), *flags])
    arms = json.loads((tmp_path / "out" / "results.json").read_text())["arms"]
    assert arms["arms"]["scratch"]["success"]["overall"]["successes"] == 3
    assert arms["arms"]["scratch"]["success"]["overall"]["episodes"] == 20
    assert arms["arms"]["scratch"]["success"]["seed_rates"] == [0.1, 0.2]
    assert arms["arms"]["latent"]["success"]["per_task"]["reach"]["successes"] == 10
    assert arms["arms"]["latent"]["action_mae"] == {"dx": pytest.approx(0.15)}  # the seeds' mean
    # Wilson 95% for 3/20, worked out by hand: centre (0.15 + 1.96^2/40) / (1 + 1.96^2/20) = 0.2056,
    # half width 1.96 sqrt(0.15 * 0.85 / 20 + 1.96^2 / 1600) / 1.1921 = 0.1534
    assert arms["arms"]["scratch"]["success"]["overall"]["ci95"] == pytest.approx([0.0524, 0.3604], abs=1e-3)
    printed = capsys.readouterr().out
    assert "latent pretraining is +45 points over scratch: meets the paper's target of +20" in printed
    assert "latent pretraining is 10 points below true-action pretraining: within the paper's 10" in printed
    assert (tmp_path / "out" / "figures" / "arms.png").read_bytes()[:4] == b"\x89PNG"


def test_arms_that_never_succeed_are_not_compared(tmp_path, capsys):
    flags = []
    for arm in ("scratch", "latent"):
        # no valid argmax prediction (no action_mae_*), median bins are always valid (a micro run)
        run = _run_dir(tmp_path / f"{arm}run", {"eval/accuracy_action": 0.5, "eval/action_mae_median_0": 0.2})
        flags += ["--arm", f"{arm},{run},{_evaluation(tmp_path / arm / 'r.json', {'reach': (0, 4)})}"]
    report.main(["--out", str(tmp_path / "out"), *flags])
    printed = capsys.readouterr().out
    assert "no arm succeeded in closed loop" in printed and "points over scratch" not in printed
    assert (
        json.loads((tmp_path / "out" / "results.json").read_text())["arms"]["arms"]["latent"]["action_mae"]
        == {}
    )


def test_the_labelled_data_curve_pools_seeds_per_count(tmp_path):
    flags = []
    for arm, count, k in (("scratch", 5, 1), ("scratch", 5, 3), ("scratch", 10, 4), ("latent", 5, 6)):
        flags += [
            "--labelled",
            f"{arm},{count},{_evaluation(tmp_path / f'{arm}{count}{k}' / 'r.json', {'reach': (k, 10)})}",
        ]
    report.main(["--out", str(tmp_path / "out"), *flags])
    curve = json.loads((tmp_path / "out" / "results.json").read_text())["labelled_data"]["curve"]
    assert {arm: {n: p["successes"] for n, p in c.items()} for arm, c in curve.items()} == {
        "scratch": {"5": 4, "10": 4},
        "latent": {"5": 6},
    }
    assert curve["scratch"]["5"]["episodes"] == 20
    assert (tmp_path / "out" / "figures" / "labelled_data.png").exists()
    with pytest.raises(SystemExit):
        report.main(["--out", str(tmp_path / "out2"), "--labelled", "scratch,five,x.json"])


def test_rollouts_side_by_side_and_the_lam_reconstructions_are_drawn(tmp_path):
    from PIL import Image

    folder = tmp_path / "eval"
    for policy, success in (("policy", False), ("expert", True)):
        (folder / policy).mkdir(parents=True)
        frames = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(3 if success else 5)]
        frames[0].save(folder / policy / "rollout_reach_7.gif", save_all=True, append_images=frames[1:])
        episodes = [{"success": success, "video": "rollout_reach_7.gif"}, {"success": True}]
        (folder / policy / "summary.json").write_text(json.dumps({"episodes": episodes}))
    closed = _closed_loop(folder / "results.json", {"policy": 0.0, "expert": 1.0})
    pairs = report.rollout_pairs(closed)
    assert pairs == {
        "rollout_reach_7.gif": {
            "policy (failed)": folder / "policy" / "rollout_reach_7.gif",
            "expert (success)": folder / "expert" / "rollout_reach_7.gif",
        }
    }
    arrays = {
        k: np.full((2, 8, 8, 3), v, np.uint8)
        for k, v in (("current", 0), ("future", 10), ("reconstruction", 5))
    }
    np.savez(tmp_path / "recon.npz", **arrays)
    out = tmp_path / "out"
    report.main(
        [
            "--out",
            str(out),
            "--closed_loop",
            str(closed),
            "--lam_reconstructions",
            str(tmp_path / "recon.npz"),
        ]
    )
    with Image.open(out / "figures" / "side_by_side_rollout_reach_7.gif") as gif:
        assert gif.n_frames == 5  # the longer rollout; the shorter one holds its last frame
    assert (out / "figures" / "lam_reconstructions.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        "![side_by_side_rollout_reach_7.gif](figures/side_by_side_rollout_reach_7.gif)"
        in (out / "report.md").read_text()
    )


def test_the_pooled_interval_is_the_evaluators_wilson_interval():
    from sim.evaluate import wilson_interval

    for k, n in ((0, 9), (3, 9), (9, 9), (17, 60)):
        # the evaluator rounds z to 1.96; scipy takes the exact normal quantile, 1.95996...
        assert report.wilson(k, n) == pytest.approx(list(wilson_interval(k, n)), abs=1e-4)
