"""The latent-to-action decoder: learns actions from codes (and state), reports errors in the data's units."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import run_reading_every_field

from latent_pretraining.actions import decoder as action_decoder
from latent_pretraining.actions.decoder import evaluate, load_decoder, load_rows
from latent_pretraining.configs.action_decoder import get_config


def _write(path, n, seed, state_dim=0):
    """Actions are a known function of the codes (+ a state term) plus small noise."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            codes = rng.integers(0, 8, 4)
            state = rng.normal(size=state_dim)
            action = [
                0.01 * (codes[0] - 3.5),
                0.01 * (codes[1] - 3.5),
                0.005 * (codes[2] - codes[3]),
                0.0,
                0.0,
                0.1 * (codes[3] - 3.5) + (0.05 * state[0] if state_dim else 0.0),
                float(codes[0] >= 4),
            ]
            action = [a + rng.normal(0, 1e-4) if d < 6 else a for d, a in enumerate(action)]
            row = {"delta": [str(c) for c in codes], "raw_actions": action}
            if state_dim:
                row["state"] = state.tolist()
            f.write(json.dumps(row) + "\n")


@pytest.mark.parametrize("state_dim", [0, 3])
def test_decoder_learns_actions_from_latent_codes(tmp_path, state_dim):
    _write(tmp_path / "train.jsonl", 2000, 0, state_dim)
    _write(tmp_path / "eval.jsonl", 200, 1, state_dim)
    config = get_config()
    config.model.state_dim = state_dim
    config.data.train, config.data.eval = str(tmp_path / "train.jsonl"), str(tmp_path / "eval.jsonl")
    config.run_dir, config.total_steps, config.eval_every, config.batch_size = (
        str(tmp_path / "run"),
        600,
        0,
        128,
    )
    last = run_reading_every_field(config, lambda: action_decoder.train(config), {})
    # an uninformed predictor (the mean) is off by about 0.02 on dx/dy and 0.2 on dyaw
    assert last["eval_mae_0"] < 0.003 and last["eval_mae_5"] < 0.03
    assert last["eval_gripper_accuracy"] > 0.97
    assert (tmp_path / "run" / "summary.json").exists()
    # the run leaves the decoder a policy bundle takes: it scores as the run's final evaluation did
    saved = load_rows(str(tmp_path / "eval.jsonl"), config.model)
    assert evaluate(load_decoder(tmp_path / "run" / "decoder"), saved) == pytest.approx(
        {k.removeprefix("eval_"): v for k, v in last.items() if k.startswith("eval_")}, rel=1e-6
    )


def test_bad_rows_name_the_line(tmp_path):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"delta": [1, 2, 3], "raw_actions": [0.0] * 7}) + "\n")
    with pytest.raises(ValueError, match=r"rows\.jsonl:1: 'delta' must be 4 codes"):
        action_decoder.load_rows(str(tmp_path / "rows.jsonl"), get_config().model)
    (tmp_path / "rows.jsonl").write_text(json.dumps({"delta": [1, 2, 3, 4]}) + "\n")
    with pytest.raises(ValueError, match=r"rows\.jsonl:1: needs 'delta' codes and 'raw_actions'"):
        action_decoder.load_rows(str(tmp_path / "rows.jsonl"), get_config().model)
