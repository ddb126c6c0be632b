"""Resume safety: a damaged newest checkpoint falls back to the previous step, a failed
write stops the run, a resume with a different batch size or model is refused, and reading
another run's checkpoints (``init``) creates nothing there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO_ROOT
from helpers import override
from ml_collections import ConfigDict
from orbax.checkpoint._src.handlers import json_checkpoint_handler

from latent_pretraining import train as vla_train
from latent_pretraining.actions import decoder as action_decoder
from latent_pretraining.configs.action_decoder import get_config as action_decoder_config
from latent_pretraining.core import loop
from latent_pretraining.core.batches import BatchStream
from latent_pretraining.core.checkpointing import Checkpointer, CheckpointError
from latent_pretraining.core.logger import MetricsLogger
from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.core.state import abstract_state


def _state(step: int = 0, leaves: int = 3) -> dict:
    return {
        "params": {f"w{i}": jnp.full((8,), float(step + i)) for i in range(leaves)},
        "step": jnp.asarray(step, jnp.int32),
    }


def _save(run_dir: Path, steps: list[int], leaves: int = 3) -> Path:
    """Checkpoints at ``steps`` (state ``step`` = the step, data ``{"i": step}``); returns their directory."""
    checkpointer = Checkpointer(run_dir, keep=5, save_every=1, async_save=False)
    for step in steps:
        assert checkpointer.maybe_save(step, _state(step, leaves), {"i": step})
    checkpointer.close()
    return checkpointer.directory


def _damage(step_dir: Path, how: str) -> None:
    """Deletes or truncates the files of the saved state, as a full disk or a bad copy does."""
    for path in sorted((step_dir / "state").rglob("*")):
        if path.is_file():
            path.unlink() if how == "delete" else path.write_bytes(b"")


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("how", ["delete", "truncate"])
def test_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_resumes(tmp_path, capsys, how):
    directory = _save(tmp_path, [1, 2])
    _damage(directory / "2", how)
    checkpointer = Checkpointer(tmp_path, save_every=1, async_save=False)
    state, data = checkpointer.restore(abstract_state(_state()))
    assert int(state["step"]) == 1 and data == {"i": 1}
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and len(lines[0]) < 600, lines
    assert lines[0].startswith(f"checkpoint {directory}/2 is damaged (")
    assert lines[0].endswith(f"moved it to {directory}/2.damaged-0 and resuming from step 1")
    # the damaged step is kept for the user, out of the way of the save that step 2 makes again
    assert (directory / "2.damaged-0" / "state").is_dir() and not (directory / "2").exists()
    assert checkpointer.maybe_save(2, _state(2), {"i": 2})
    checkpointer.close()
    again = Checkpointer(tmp_path)
    assert again.latest_step() == 2
    state, data = again.restore(abstract_state(_state()))
    assert int(state["step"]) == 2 and data == {"i": 2}
    again.close()
    assert "damaged" not in capsys.readouterr().out


def test_a_passing_read_error_leaves_the_newest_step_in_place(tmp_path, monkeypatch):
    """An I/O error or out-of-memory while restoring is not the step's fault: it is reported and
    the step stays where it is, instead of being moved aside with training rolled back."""
    directory = _save(tmp_path, [1, 2])
    checkpointer = Checkpointer(tmp_path, save_every=1, async_save=False)
    real = checkpointer.manager.restore

    def flaky(step, args):
        if step == 2:
            raise OSError(5, "Input/output error")
        return real(step, args=args)

    monkeypatch.setattr(checkpointer.manager, "restore", flaky)
    with pytest.raises(CheckpointError, match=rf"restoring checkpoint {directory}/2 failed .*left in place"):
        checkpointer.restore(abstract_state(_state()))
    monkeypatch.undo()
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2"]
    state, _ = checkpointer.restore(abstract_state(_state()))
    assert int(state["step"]) == 2
    checkpointer.close()


def test_no_restorable_checkpoint_is_one_error_naming_each_step(tmp_path):
    directory = _save(tmp_path, [1, 2])
    _damage(directory / "1", "delete")
    _damage(directory / "2", "truncate")
    checkpointer = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError) as raised:
        checkpointer.restore(abstract_state(_state()))
    message = str(raised.value)
    assert str(directory) in message and "step 2 (" in message and "step 1 (" in message
    assert len(message) < 1500 and "\n" not in message
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2"]  # nothing moved: no good step to keep


def test_failed_restore_leaves_no_event_loop_noise_at_exit(tmp_path):
    """Many arrays in flight when one read fails: their late callbacks used to hit a closed loop."""
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        import jax.numpy as jnp
        from latent_pretraining.core.checkpointing import Checkpointer
        from latent_pretraining.core.state import abstract_state
        run = Path({str(tmp_path)!r})
        state = {{f"w{{i}}": jnp.full((8,), float(i)) for i in range(40)}}
        first = Checkpointer(run, save_every=1, async_save=False)
        first.maybe_save(1, state, {{"i": 1}})
        first.maybe_save(2, state, {{"i": 2}})
        first.close()
        for path in (run / "checkpoints" / "2" / "state").rglob("*"):
            if path.is_file() and path.parent.name == "d":
                path.unlink()
        restored = Checkpointer(run).restore(abstract_state(state))
        print("restored", restored[1])
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "restored {'i': 1}" in done.stdout and "resuming from step 1" in done.stdout
    assert "Event loop is closed" not in done.stderr and "sys.meta_path" not in done.stderr, done.stderr[
        -3000:
    ]


def _failing_json_save(monkeypatch, fail_call: int) -> None:
    """The ``fail_call``-th write of a checkpoint's data fails as a full disk does."""
    original = json_checkpoint_handler.JsonCheckpointHandler._save_fn
    calls = {"n": 0}

    async def save(self, item, directory):
        calls["n"] += 1
        if calls["n"] == fail_call:
            raise OSError(28, "No space left on device")
        await original(self, item, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", save)


@pytest.mark.parametrize("async_save", [False, True])
def test_failed_checkpoint_write_stops_training_at_its_step(tmp_path, monkeypatch, async_save):
    _failing_json_save(monkeypatch, fail_call=2)  # the save at step 8; step 4's succeeds
    mesh = make_mesh("1,1,1,1", devices=jax.devices()[:1])
    data = BatchStream(16, 2, lambda rows, epoch, index: {"x": rows.astype(np.float32)}, prefetch=0)
    checkpointer = Checkpointer(tmp_path, save_every=4, async_save=async_save)
    calls = {"n": 0}

    def step_fn(state, batch):
        calls["n"] += 1
        time.sleep(0.01)  # lets a failed background write finish while training goes on
        return {**state, "step": state["step"] + 1}, {"loss": jnp.zeros(())}

    settings = loop.LoopSettings(total_steps=40, log_every=1000)
    logger = MetricsLogger(tmp_path, tensorboard=False)
    with pytest.raises(CheckpointError, match=r"/checkpoints/8 .*No space left on device"):
        loop.run(settings, step_fn, _state(), data, mesh, checkpointer, logger)
    # a synchronous write fails inside step 8; an asynchronous one is noticed after a few more
    # steps at most, and at the latest before the next save starts
    assert calls["n"] == 8 if not async_save else 8 <= calls["n"] <= 12
    assert checkpointer.manager.all_steps() == [4]
    logger.close()
    data.close()


def _run_config(run_dir: Path, **fields) -> ConfigDict:
    config = ConfigDict({"run_dir": str(run_dir), "batch_size": 8, "seed": 0, "total_steps": 10})
    config.model = ConfigDict({"hidden": 4, "dtype": "float32"})
    return override(config, fields)


def test_resume_with_a_different_batch_size_or_model_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    loop.prepare_run(_run_config(run_dir))
    (run_dir / "checkpoints" / "10").mkdir(parents=True)
    before = (run_dir / "config.json").read_text()
    with pytest.raises(ValueError) as raised:
        loop.prepare_run(_run_config(run_dir, batch_size=16, **{"model.hidden": 8}))
    message = str(raised.value)
    assert "batch_size 8 -> 16" in message and "model.hidden 4 -> 8" in message
    assert "run_dir" in message and str(run_dir / "checkpoints") in message
    assert (run_dir / "config.json").read_text() == before
    # a longer run and a different compute dtype resume the same parameters
    loop.prepare_run(_run_config(run_dir, total_steps=20, **{"model.dtype": "bfloat16"}))
    assert json.loads((run_dir / "config.json").read_text())["total_steps"] == 20
    # without a checkpoint there is nothing to be inconsistent with
    fresh = tmp_path / "fresh"
    loop.prepare_run(_run_config(fresh))
    loop.prepare_run(_run_config(fresh, batch_size=16))
    assert json.loads((fresh / "config.json").read_text())["batch_size"] == 16


def test_init_from_a_missing_run_dir_refuses_and_creates_nothing(tmp_path):
    missing = tmp_path / "no_such_run"
    with pytest.raises(FileNotFoundError, match=str(missing / "checkpoints")):
        vla_train._initialise(_state(), ConfigDict({"init": str(missing)}), None)
    assert not missing.exists()
    with pytest.raises(FileNotFoundError, match=str(missing / "checkpoints")):
        Checkpointer(missing, read_only=True)
    assert not missing.exists()


def test_reading_a_damaged_run_read_only_falls_back_and_changes_nothing(tmp_path, capsys):
    directory = _save(tmp_path, [1, 2])
    _damage(directory / "2", "delete")
    before = _files(tmp_path)
    state, _ = Checkpointer(tmp_path, read_only=True).restore(abstract_state(_state()))
    assert int(state["step"]) == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"checkpoint {directory}/2 is damaged (") and line.endswith("); using step 1")
    assert _files(tmp_path) == before


def _write_action_rows(path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for _ in range(n):
            codes = rng.integers(0, 8, 4)
            f.write(json.dumps({"delta": [str(c) for c in codes], "raw_actions": [0.01] * 6 + [1.0]}) + "\n")


def test_trainer_resumes_past_a_damaged_checkpoint_and_refuses_a_new_batch_size(tmp_path, capsys):
    _write_action_rows(tmp_path / "train.jsonl", 64)
    config = action_decoder_config()
    config.data.train, config.run_dir = str(tmp_path / "train.jsonl"), str(tmp_path / "run")
    config.model.hidden_dim, config.batch_size, config.eval_every, config.log_every = 16, 8, 0, 5
    config.total_steps, config.save_every = 10, 5
    action_decoder.train(config)
    directory = tmp_path / "run" / "checkpoints"
    _damage(directory / "10", "truncate")
    capsys.readouterr()
    config.total_steps = 15
    action_decoder.train(config)
    out = capsys.readouterr().out
    assert f"checkpoint {directory}/10 is damaged (" in out and "resuming from step 5" in out
    assert f"resumed from {directory}/5 " in out
    assert sorted(p.name for p in directory.iterdir()) == ["10", "10.damaged-0", "15"]  # keep=2
    config.batch_size = 16
    with pytest.raises(ValueError, match="batch_size 8 -> 16"):
        action_decoder.train(config)


def test_resume_conflicts_name_each_field_that_would_mix_runs():
    old = {"batch_size": 8, "seed": 0, "total_steps": 10, "model": {"hidden": 64, "dtype": "float32"}}
    new = {"batch_size": 8, "seed": 1, "total_steps": 20, "model": {"hidden": 32, "dtype": "bfloat16"}}
    # seed and shapes conflict; the step budget and the compute dtype may change between reruns
    assert loop.resume_conflicts(old, new) == ["model.hidden 64 -> 32", "seed 0 -> 1"]
