"""The training loop shared by every trainer: resume, step, log, evaluate, checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from latent_pretraining.core.batches import BatchStream
from latent_pretraining.core.checkpointing import Checkpointer, CheckpointError, saved_steps
from latent_pretraining.core.cli import INPUT_ERRORS, exit_on
from latent_pretraining.core.compile_cache import enable_compilation_cache
from latent_pretraining.core.logger import MetricsLogger
from latent_pretraining.core.sharding import maybe_initialize_distributed
from latent_pretraining.core.state import TrainState, abstract_state, global_batch
from latent_pretraining.core.trees import flatten

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoopSettings:
    total_steps: int
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    desc: str = "train"
    items_per_example: int = 1  # e.g. tokens per sequence, for the throughput figure
    items_name: str = "examples"


# the directory that holds the installed packages, so the repository's config paths
# (latent_pretraining/configs/..., lam/configs/...) resolve from any working directory
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# absl's help flags (and -h) -> whether the help is the short one (the main module's flags)
HELP_ARGS = {
    "-h": True,
    "-?": True,
    "-help": True,
    "--help": True,
    "-helpshort": True,
    "--helpshort": True,
    "-helpfull": False,
    "--helpfull": False,
}


def config_main(train: Callable[[Any], Any], default_config: str, argv: list[str] | None = None) -> None:
    """Runs ``train(config)`` with ``--config=<file.py>:<preset>`` and ``--config.a.b=value``
    flags (ml_collections + absl); orbax's per-save INFO logs are silenced. ``--help`` prints
    the config's fields with their values and exits 0 (absl's exits 1 and lists none of them,
    since the config flag is not defined in the main module)."""
    from absl import app, flags, logging
    from ml_collections import config_flags

    argv = resolve_config_args(sys.argv if argv is None else argv)
    helps = [HELP_ARGS[a] for a in argv[1:] if a in HELP_ARGS]
    argv = [argv[0], *(a for a in argv[1:] if a not in HELP_ARGS)]  # parsed, so the help shows them
    config_flags.DEFINE_config_file(
        "config", resolve_config_path(default_config), "Run config: a Python file and preset."
    )
    logging.set_verbosity(logging.WARNING)

    def run(_) -> None:  # absl treats a return value as the exit status
        if helps:
            app.usage(shorthelp=helps[0], writeto_stdout=True)
            print(config_help(config_flags.get_config_filename(flags.FLAGS["config"]), flags.FLAGS.config))
        else:
            run_cli(train, flags.FLAGS.config)

    app.run(run, argv=argv)


def resolve_config_path(spec: str) -> str:
    """``<file.py>[:<preset>]`` with a relative file that does not exist in the working directory
    taken relative to ``PACKAGE_ROOT`` when it is there (paths that exist are kept as given)."""
    path, colon, preset = spec.partition(":")
    if not Path(path).exists() and (PACKAGE_ROOT / path).is_file():
        path = str(PACKAGE_ROOT / path)
    return path + colon + preset


def resolve_config_args(argv: list[str]) -> list[str]:
    """``argv`` with the value of ``--config=...`` / ``--config ...`` passed through
    ``resolve_config_path``; ``--config.a.b=value`` overrides are left alone."""
    names = ("--config", "-config")
    out = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if eq and name in names:
            arg = f"{name}={resolve_config_path(value)}"
        elif i > 0 and argv[i - 1] in names:
            arg = resolve_config_path(arg)
        out.append(arg)
    return out


def config_help(spec: str, config: Any) -> str:
    """The config's fields as ``--config.a.b=value`` lines, under the file they came from."""
    fields = flatten(config.to_dict(), "--config")
    lines = [f"--config={spec}: the run config; each field below is set with --config.<field>=<value>"]
    return "\n".join(lines + [f"  {key}={value!r}" for key, value in fields.items()])


def run_cli(train: Callable[[Any], Any], config: Any) -> Any:
    """``train(config)`` for a command line: a bad input, option or checkpoint ends the process
    with its one-line message (naming the file and row), not a traceback. Compiled programs are
    cached on disk, so a rerun or a resume skips the compile."""
    enable_compilation_cache()
    with exit_on(*INPUT_ERRORS, CheckpointError):
        return train(config)


# A resume continues the checkpoint's parameters and data position, so these must match the
# run that wrote them: the batch size (rows per step: the data position and schedule), the
# seed (the shuffle) and the model (the parameters' shapes); others, e.g. total_steps or the
# learning rate, may change between reruns.
RESUME_FIELDS = ("batch_size", "seed", "model")
# model fields that change the computation but not the parameters, so a resume may change them
COMPUTE_ONLY_MODEL_FIELDS = frozenset({"dtype", "attention_backend", "remat_policy", "remat"})


def resume_conflicts(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key old -> new`` for each of ``RESUME_FIELDS`` that differs between two configs (JSON
    dicts). Fields only one of them has (options added or removed since) are not compared."""
    before = flatten({field: old[field] for field in RESUME_FIELDS if field in old})
    after = flatten({field: new[field] for field in RESUME_FIELDS if field in new})
    compute_only = {f"model.{name}" for name in COMPUTE_ONLY_MODEL_FIELDS}
    return [
        f"{key} {before[key]!r} -> {after[key]!r}"
        for key in sorted((before.keys() & after.keys()) - compute_only)
        if before[key] != after[key]
    ]


def prepare_run(config: Any) -> Path:
    """Joins the cluster if one is described, checks that the global batch splits over the
    hosts, and creates the run directory with the run's ``config.json``.

    When the run directory already has checkpoints, a config that differs from its
    ``config.json`` in ``RESUME_FIELDS`` is refused (and ``config.json`` kept): resuming
    would silently continue another run's parameters or data position."""
    maybe_initialize_distributed()
    if config.batch_size % jax.process_count():
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {jax.process_count()} hosts")
    run_dir = Path(config.run_dir)
    saved = run_dir / "config.json"
    if saved.exists() and saved_steps(run_dir):
        conflicts = resume_conflicts(json.loads(saved.read_text()), json.loads(config.to_json()))
        if conflicts:
            raise ValueError(
                f"{run_dir} has checkpoints of a run with a different config ({', '.join(conflicts)}); "
                f"resuming would mix the two runs. Use a new --config.run_dir, or delete "
                f"{run_dir / 'checkpoints'} to start this run over there."
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (run_dir / "config.json").write_text(config.to_json(indent=2))
    return run_dir


def settings_for(config: Any, desc: str, items_name: str, items_per_example: int = 1) -> LoopSettings:
    """The loop's settings from the run config's ``total_steps``, ``log_every`` and ``eval_every``."""
    return LoopSettings(
        total_steps=config.total_steps,
        log_every=config.log_every,
        eval_every=config.eval_every,
        desc=desc,
        items_per_example=items_per_example,
        items_name=items_name,
    )


def checkpointer_for(config: Any, run_dir: Path) -> Checkpointer:
    """The run's checkpointer from ``keep_checkpoints``, ``save_every`` and ``async_checkpoints``."""
    return Checkpointer(
        run_dir,
        keep=config.keep_checkpoints,
        save_every=config.save_every,
        async_save=config.async_checkpoints,
    )


def logger_for(config: Any, run_dir: Path) -> MetricsLogger:
    """The run's metrics logger (W&B when ``wandb_project`` is set), with the config recorded."""
    return MetricsLogger(run_dir, wandb_project=config.wandb_project or None, config=config.to_dict())


def resume(checkpointer: Checkpointer, state: TrainState, data: BatchStream) -> tuple[TrainState, int]:
    """Restores the newest checkpoint of the run that restores (state and data position), if any;
    a damaged newer one is reported and moved aside (``Checkpointer.restore``)."""
    restored = checkpointer.restore(abstract_state(state))
    if restored is None:
        return state, 0
    state, data_state = restored
    data.restore(data_state)
    step = int(jax.device_get(state["step"]))
    print(
        f"resumed from {checkpointer.directory}/{step} (data epoch {data.epoch}, batch {data.index})",
        flush=True,
    )
    return state, step


def run(
    settings: LoopSettings,
    step_fn: Callable[[TrainState, dict], tuple[TrainState, dict]],
    state: TrainState,
    data: BatchStream,
    mesh: Mesh,
    checkpointer: Checkpointer,
    logger: MetricsLogger,
    eval_fn: Callable[[TrainState, int], dict[str, float]] | None = None,
    start_step: int = 0,
) -> tuple[TrainState, dict[str, float]]:
    """Runs ``step_fn`` from ``start_step`` to ``settings.total_steps``; returns state and last metrics.

    At the end the last metrics go to ``<run_dir>/summary.json`` and the checkpointer, the
    logger and the data stream are closed."""
    last: dict[str, float] = {}
    window_start, window_steps = time.perf_counter(), 0
    began = time.perf_counter()
    bar = tqdm(
        total=settings.total_steps,
        initial=start_step,
        desc=settings.desc,
        unit="step",
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
    )
    for step in range(start_step, settings.total_steps):
        batch = global_batch(next(data), mesh)
        state, metrics = step_fn(state, batch)
        done = step + 1
        window_steps += 1
        if done % settings.log_every == 0 or done == settings.total_steps:
            metrics = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
            elapsed = time.perf_counter() - window_start
            per_step = elapsed / window_steps
            examples = next(iter(batch.values())).shape[0]
            metrics["step_time_s"] = per_step
            metrics[f"{settings.items_name}_per_s"] = examples * settings.items_per_example / per_step
            logger.log(done, metrics)
            bar.set_postfix(
                loss=f"{metrics.get('loss', float('nan')):.4f}",
                **{f"{settings.items_name}/s": f"{metrics[f'{settings.items_name}_per_s']:.0f}"},
            )
            last = metrics
            window_start, window_steps = time.perf_counter(), 0
        if (
            eval_fn is not None
            and settings.eval_every
            and done % settings.eval_every == 0
            and done < settings.total_steps
        ):
            logger.log(done, eval_fn(state, done), prefix="eval")
        checkpointer.maybe_save(done, state, data.state())
        checkpointer.check()  # a failed background write stops the run here, not at the next save
        bar.update(1)
    bar.close()
    checkpointer.maybe_save(settings.total_steps, state, data.state(), force=True)
    checkpointer.wait()
    if eval_fn is not None:
        final_eval = eval_fn(state, settings.total_steps)
        logger.log(settings.total_steps, final_eval, prefix="eval")
        last = {**last, **{f"eval_{k}": v for k, v in final_eval.items()}}
    took = time.perf_counter() - began
    if jax.process_index() == 0:
        (logger.run_dir / "summary.json").write_text(json.dumps(last, indent=2))
    checkpointer.close()
    logger.close()
    data.close()
    print(
        f"{settings.desc}: {settings.total_steps - start_step} steps in {took:.1f}s; "
        + ", ".join(f"{k} {v:.4g}" for k, v in last.items()),
        flush=True,
    )
    return state, last
