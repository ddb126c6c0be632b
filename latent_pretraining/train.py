"""Trains the VLA (latent pretraining or action finetuning) on the shared training infrastructure.

    python -m latent_pretraining.train --config=latent_pretraining/configs/lapa.py:latent_pretrain \\
        --config.data.train=data/latent.jsonl --config.data.tokenizer=tokenizer.model \\
        --config.init=params::lapa_checkpoints/params --config.run_dir=runs/lapa

Next-token cross entropy in float32 per modality, weighted by ``config.loss``; a target
counts for the head of its own vocabulary only (LAPA trained its text head on latent
positions). Rerunning a command resumes its run directory from the newest checkpoint.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from latent_pretraining.actions.bins import ActionBins
from latent_pretraining.config import check_vision_grid, vision_grid
from latent_pretraining.core import loop
from latent_pretraining.core.checkpointing import Checkpointer
from latent_pretraining.core.optim import build_optimizer
from latent_pretraining.core.sharding import make_mesh, uses_config_axis_rules
from latent_pretraining.core.state import (
    TrainState,
    abstract_state,
    compile_step,
    create_train_state,
    global_batch,
)
from latent_pretraining.core.step import make_train_step
from latent_pretraining.lapa_checkpoint import load_lapa_params, save_lapa_params
from latent_pretraining.model import VOCABS, Modality, VLAModel
from latent_pretraining.policy.bundle import bundle_from_run, check_export
from latent_pretraining.sampler import median_ids
from latent_pretraining.sequences import END_OF_FRAME, SequenceBuilder, SequenceConfig, TextTokenizer
from latent_pretraining.vla_data import (
    ImageTokens,
    LoadedData,
    augmenting_refresh,
    batch_stream,
    eval_batches,
    load_examples,
)
from latent_pretraining.vqgan.encode import load_row_encoder
from latent_pretraining.vqgan.images import check_mode, eval_mode


def token_losses(model: VLAModel, batch: dict[str, jax.Array], weights: dict[str, float]):
    """Per-head mean cross entropy and accuracy over the targets of that head's vocabulary; also the
    argmax predictions and the logits of each head."""
    heads = tuple(h for h in VOCABS if weights[h] > 0)
    logits = model(batch["inputs"], batch["modality"], batch["positions"], batch["segment_ids"], heads=heads)
    total, metrics, predictions = 0.0, {}, {}
    for head in heads:
        mask = (batch["target_modality"] == Modality[head.upper()]) & (batch["segment_ids"] > 0)
        w = batch["target_weight"] * mask
        targets = jnp.where(mask, batch["targets"], 0)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits[head].astype(jnp.float32), targets)
        count = jnp.maximum(jnp.sum(w), 1.0)
        predicted = jnp.argmax(logits[head], axis=-1)
        metrics[f"loss_{head}"] = jnp.sum(ce * w) / count
        metrics[f"accuracy_{head}"] = jnp.sum((predicted == targets) * w) / count
        metrics[f"tokens_{head}"] = jnp.sum(w)
        total = total + weights[head] * metrics[f"loss_{head}"]
        predictions[head] = predicted
    return total, metrics, predictions, logits


def loss_for(config: ml_collections.ConfigDict):
    """The weighted next-token loss of ``config.loss``, as ``make_train_step`` takes it."""
    weights = {h: float(config.loss[h]) for h in VOCABS}

    def loss_fn(model: VLAModel, batch: dict[str, jax.Array], rng: jax.Array):
        total, metrics, _, _ = token_losses(model, batch, weights)
        return total, metrics, None

    return loss_fn


def action_median_ids(logits: jax.Array, batch: dict[str, jax.Array], valid: jax.Array) -> jax.Array:
    """[B, T] median ids of one row per batch element: the k-th action target of a row is
    dimension k, its median taken over that dimension's bins (``valid`` [D, V])."""
    is_action = (batch["target_modality"] == Modality.ACTION) & (batch["segment_ids"] > 0)
    dim = jnp.clip(jnp.cumsum(is_action, axis=1) - 1, 0, valid.shape[0] - 1)
    return median_ids(logits, valid[dim])


def make_eval(graphdef, data: LoadedData, batch_size: int, mesh, config, bins: ActionBins | None):
    """Token accuracy and loss per head over every held-out row (``eval_batches`` > 0 caps the
    batches); action MAE through the bins, of the most likely bins (``action_mae_*``) and of the
    median bins (``action_mae_median_*``, see ``sampler.median_ids``)."""
    weights = {h: float(config.loss[h]) for h in VOCABS}
    valid = None
    if bins is not None:
        valid = jnp.asarray(bins.valid_ids(config.model.action_vocab_size))  # [D, V]
        if not weights["action"]:
            weights["action"] = 1e-9  # score the action head for the MAE even when it has no loss

    @jax.jit
    def evaluate(params, rest, batch):
        _, metrics, predictions, logits = token_losses(nnx.merge(graphdef, params, rest), batch, weights)
        if valid is None or "action" not in logits:
            return metrics, None, None
        return metrics, predictions["action"], action_median_ids(logits["action"], batch, valid)

    def run(state: TrainState, step: int) -> dict[str, float]:
        sums: dict[str, float] = {}
        errors, median_errors = [], []
        batches = eval_batches(data, batch_size, config.data.max_length)
        for local, example in itertools.islice(batches, config.eval_batches or None):
            with jax.set_mesh(mesh):
                fetched = evaluate(state["params"], state["rest"], global_batch(local, mesh))
            metrics, actions, medians = jax.device_get(fetched)  # one host transfer a batch
            for head in VOCABS:
                if f"tokens_{head}" in metrics:
                    n = float(metrics[f"tokens_{head}"])
                    for k in ("loss", "accuracy"):
                        sums[f"{k}_{head}"] = sums.get(f"{k}_{head}", 0.0) + float(metrics[f"{k}_{head}"]) * n
                    sums[f"tokens_{head}"] = sums.get(f"tokens_{head}", 0.0) + n
            if actions is not None:
                actions, medians = np.asarray(actions), np.asarray(medians)
                errors.extend(_action_errors(actions, local, example, data.rows, bins))
                median_errors.extend(_action_errors(medians, local, example, data.rows, bins))
        out = {}
        for head in VOCABS:
            n = sums.get(f"tokens_{head}", 0.0)
            if n:
                out[f"loss_{head}"] = sums[f"loss_{head}"] / n
                out[f"accuracy_{head}"] = sums[f"accuracy_{head}"] / n
        if errors:
            out["action_invalid_rate"] = sum(e is None for e in errors) / len(errors)
            errors = [e for e in errors if e is not None]
        if errors:
            per_dim = np.mean(np.abs(np.stack(errors)), axis=0)
            out["action_mae"] = float(per_dim.mean())
            out.update({f"action_mae_{d}": float(v) for d, v in enumerate(per_dim)})
        if median_errors:  # valid bins by construction: every row has an action
            per_dim = np.mean(np.abs(np.stack(median_errors)), axis=0)
            out.update({f"action_mae_median_{d}": float(v) for d, v in enumerate(per_dim)})
        return out

    return run


def _action_errors(predicted, local, example, rows, bins):
    """Decoded (teacher-forced) predicted action minus the row's raw action, per row."""
    out = []
    is_action = (local["target_modality"] == Modality.ACTION) & (local["segment_ids"] > 0)
    for r in np.flatnonzero(example >= 0):  # -1: a padding row of the last batch
        ids = predicted[r][is_action[r]]
        raw = rows[int(example[r])].get("raw_actions")
        if raw is None or len(ids) != len(bins.centres):
            continue
        try:
            out.append(bins.decode(ids[None])[0] - np.asarray(raw, np.float64))
        except ValueError:  # an id outside a dimension's bins: no action can be made of it
            out.append(None)
    return out


def _initialise(state: TrainState, config, mesh) -> TrainState:
    """The state with ``config.init``'s parameters: a LAPA ``params::`` file, or the newest
    checkpoint of another run (its parameters only, read-only: the optimizer may differ)."""
    if not config.init:
        return state
    if config.init.startswith("params::"):
        new_vocabs = [v.strip() for v in config.init_new_vocabs.split(",") if v.strip()]
        model = load_lapa_params(
            config.init, config.model, mesh=mesh, seed=config.seed, initialise_missing=new_vocabs
        )
        return {**state, "params": nnx.state(model, nnx.Param)}
    donor = Checkpointer(config.init, read_only=True)
    try:
        restored = donor.restore_params(abstract_state(state["params"]))
    finally:
        donor.close()
    if restored is None:
        raise FileNotFoundError(f"init={config.init!r}: no checkpoint of this trainer there")
    params, step = restored
    print(f"initialised parameters from {donor.directory}/{step} (parameters only)", flush=True)
    return {**state, "params": params}


def _action_bins(config: ml_collections.ConfigDict) -> ActionBins | None:
    """The bins CSV of ``config.data.action_bins``, checked against the action layout."""
    path = config.data.action_bins
    if not path:
        return None
    bins = ActionBins.from_csv(path)
    dims = SequenceConfig.tokens_per_action
    if len(bins.num_bins) != dims:
        raise ValueError(
            f"{path}: {len(bins.num_bins)} rows of bin edges, but actions have {dims} dimensions"
        )
    widest = max(bins.num_bins)
    if widest > config.model.action_vocab_size:
        raise ValueError(
            f"{path}: a dimension has {widest} bins but model.action_vocab_size is "
            f"{config.model.action_vocab_size}"
        )
    return bins


def _check_text_setup(tokenizer: TextTokenizer, config: ml_collections.ConfigDict) -> None:
    """The tokenizer fits the model's text table and special ids, and rows fit its sequence length."""
    m, path = config.model, config.data.tokenizer
    if tokenizer.vocab_size > m.text_vocab_size:
        raise ValueError(
            f"tokenizer {path} has {tokenizer.vocab_size} tokens; model.text_vocab_size: {m.text_vocab_size}"
        )
    if (tokenizer.bos_id, tokenizer.eos_id) != (m.bos_token_id, m.eos_token_id):
        raise ValueError(
            f"tokenizer {path} has BOS/EOS ids {tokenizer.bos_id}/{tokenizer.eos_id}; the model config says "
            f"{m.bos_token_id}/{m.eos_token_id} (model.bos_token_id, model.eos_token_id)"
        )
    if config.data.max_length > m.max_sequence_length:
        raise ValueError(
            f"data.max_length {config.data.max_length} exceeds model.max_sequence_length "
            f"{m.max_sequence_length}, the longest sequence LAPA's code runs this model on"
        )


@uses_config_axis_rules  # parameters, batches and activations are sharded by its rule table
def train(config: ml_collections.ConfigDict) -> dict[str, float]:
    if not config.data.train or not config.data.tokenizer:
        raise ValueError("set --config.data.train (JSONL) and --config.data.tokenizer (tokenizer.model)")
    config.data.pp_eval = config.data.pp_eval or eval_mode(config.data.pp_train)  # recorded in config.json
    check_mode(config.data.pp_eval)
    if config.export_policy:
        if jax.process_count() > 1:
            raise ValueError(
                "--config.export_policy writes from one process; export a multi-host run afterwards with "
                "python -m latent_pretraining.policy export --run <run_dir> --out <dir>"
            )
        check_export(config, config.export_policy)  # fail now, not after the run
    check_vision_grid(config.model, config.data.tokens_per_frame)
    if vision_grid(config.model) and config.export_params:
        raise ValueError(
            "--config.export_params writes LAPA's params:: format, which has no place for "
            "model.vision_grid (LWM and LAPA have no such embedding); export a policy bundle instead"
        )
    run_dir = loop.prepare_run(config)
    mesh = make_mesh(config.mesh)
    m = config.model
    tokenizer = TextTokenizer(config.data.tokenizer)
    _check_text_setup(tokenizer, config)
    bins = _action_bins(config)
    train_images = eval_images = None
    if config.data.vqgan_checkpoint:
        encoder = load_row_encoder(
            config.data.vqgan_checkpoint, config.data.vqgan_config or None, config.data.image_root or None
        )
        check_vision_grid(
            config.model, encoder.tokens_per_image, f"one image of {config.data.vqgan_checkpoint}"
        )
        train_images = ImageTokens(encoder, config.data.pp_train, config.seed)
        eval_images = ImageTokens(encoder, config.data.pp_eval, config.seed)
    builder = SequenceBuilder(
        tokenizer,
        SequenceConfig(
            tokens_per_frame=config.data.tokens_per_frame,
            vocab_sizes=(m.text_vocab_size, m.vision_vocab_size, m.latent_vocab_size, m.action_vocab_size),
            vision_codes=train_images.encoder.codebook_size if train_images else END_OF_FRAME,
            action_bins=tuple(bins.num_bins) if bins is not None else (),
        ),
    )
    per_host = config.batch_size // jax.process_count()
    train_data = load_examples(
        config.data.train.split(","), builder, config.data.max_length, config.data.skip_invalid, train_images
    )
    eval_data = None  # read before the model is built, so that a bad held-out row fails fast
    if config.data.eval:
        eval_data = load_examples(
            config.data.eval.split(","),
            builder,
            config.data.max_length,
            config.data.skip_invalid,
            eval_images,
        )
    refresh = None
    if train_images is not None and train_images.mode == "augment":
        refresh = augmenting_refresh(train_data, builder, train_images)
    data = batch_stream(
        train_data, per_host, config.data.max_length, config.data.packing, config.seed, refresh
    )
    print(
        f"train: {len(train_data.examples)} examples ({len(train_data.skipped)} skipped), "
        f"{data.batches_per_epoch} batches/epoch/host",
        flush=True,
    )

    optimizer, schedule = build_optimizer(config)
    graphdef, state, shardings = create_train_state(
        lambda rngs: VLAModel(m, rngs=rngs), optimizer, mesh, config.seed
    )
    checkpointer = loop.checkpointer_for(config, run_dir)
    if checkpointer.latest_step() is None:
        state = _initialise(state, config, mesh)
    state, start = loop.resume(checkpointer, state, data)
    eval_fn = None
    if eval_data is not None:
        eval_fn = make_eval(graphdef, eval_data, per_host, mesh, config, bins)
    logger = loop.logger_for(config, run_dir)
    step_fn = compile_step(
        make_train_step(graphdef, loss_for(config), optimizer, schedule),
        state,
        global_batch(data.peek(), mesh),
        shardings,
        mesh,
    )
    settings = loop.settings_for(config, "lapa", "tokens", config.data.max_length)
    state, last = loop.run(settings, step_fn, state, data, mesh, checkpointer, logger, eval_fn, start)
    if config.export_params:
        save_lapa_params(nnx.merge(graphdef, state["params"], state["rest"]), config.export_params, "bf16")
        print(f"exported {config.export_params} (LAPA params::, bf16)", flush=True)
    if config.export_policy:
        final = nnx.merge(graphdef, state["params"], state["rest"])
        bundle = bundle_from_run(run_dir, config.export_policy, model=final)
        print(f"wrote the policy bundle {bundle.describe()}", flush=True)
    return last


def main() -> None:
    loop.config_main(train, "latent_pretraining/configs/lapa.py:debug_latent")


if __name__ == "__main__":
    main()
