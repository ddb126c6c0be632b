"""The policy bundle: one directory holding everything a trained VLA needs to act.

    policy.json              format version, model config, sequence layout (tokens per frame, latent
                             and action token counts, markers, fields, LAPA's prompt template), image
                             preprocessing (resolution, deploy mode), action spec, provenance
    params                   the parameters in LAPA's ``params::`` streaming format
    tokenizer.model          the SentencePiece text tokenizer
    vqgan/vqgan              the LWM VQGAN pickle, with vqgan/vqgan_config.json
    bins.csv, bins.json      LAPA's bins CSV and the statistics ``data.finetune_preprocess`` wrote
                             (models that predict actions)
    decoder/                 the latent-to-action decoder (``actions.decoder.save_decoder``; optional)

``write_bundle`` writes all of it or nothing and checks it first; ``read_bundle`` refuses a bundle whose
pieces disagree (vocabularies, codebook, grid, bins) with a ``BundleError`` naming the file.
``bundle_from_run`` and ``bundle_from_lapa`` assemble one from a training run or LAPA's released files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from latent_pretraining.actions.bins import GRIPPER_CONVENTIONS, ActionBins
from latent_pretraining.actions.spec import ACTION_DIMS, ACTION_NAMES, ACTION_UNITS
from latent_pretraining.config import check_vision_grid, from_lapa_config, validate
from latent_pretraining.core.checkpointing import Checkpointer, saved_steps
from latent_pretraining.core.files import write_together
from latent_pretraining.core.sharding import make_mesh, state_shardings
from latent_pretraining.lapa_checkpoint import save_lapa_params
from latent_pretraining.model import VLAModel
from latent_pretraining.prompts import ACTION_FIELDS, LATENT_FIELDS, lapa_instruction
from latent_pretraining.sequences import END_OF_FRAME, END_OF_VISION, MARKERS, SequenceConfig, TextTokenizer
from latent_pretraining.vqgan.encode import resolve_config
from latent_pretraining.vqgan.images import check_mode, eval_mode
from latent_pretraining.vqgan.model import tokens_per_side

FORMAT, VERSION = "lapa-policy-bundle", 1
POLICY_JSON, PARAMS, TOKENIZER = "policy.json", "params", "tokenizer.model"
VQGAN_PICKLE, VQGAN_CONFIG = "vqgan/vqgan", "vqgan/vqgan_config.json"
BINS, STATISTICS, DECODER = "bins.csv", "bins.json", "decoder"
LAPA_TEMPLATE = lapa_instruction("{task}")  # what LAPA's rows wrap a task description in


class BundleError(ValueError):
    """A bundle that is incomplete or whose pieces disagree; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A read and checked bundle: its settings, and the paths of the files inference loads."""

    directory: Path
    spec: dict[str, Any]  # policy.json as written
    model: ml_collections.ConfigDict
    vqgan: ml_collections.ConfigDict
    sequence: SequenceConfig
    tokenizer_size: int
    bins: ActionBins | None  # None: the model predicts latent codes only
    statistics: dict[str, Any] | None  # None: the bins came without data.finetune_preprocess's JSON

    def path(self, name: str) -> Path:
        return self.directory / name

    def describe(self) -> str:
        """One line: where the bundle is and what it does."""
        image = self.spec["image"]
        return (
            f"{self.directory}: predicts {self.predicts}"
            + (" (with a latent-to-action decoder)" if self.has_decoder else "")
            + f"; {image['resolution']}px images ({self.image_mode}), "
            f"{self.sequence.tokens_per_frame} tokens per frame"
        )

    @property
    def predicts(self) -> str:
        """``action`` (the action head, through the bins) or ``latent`` (latent codes)."""
        return self.spec["action"]["predicts"]

    @property
    def has_decoder(self) -> bool:
        return self.path(DECODER).is_dir()

    @property
    def image_mode(self) -> str:
        return self.spec["image"]["mode"]

    @property
    def prompt_template(self) -> str:
        return self.spec["sequence"]["prompt_template"]

    @property
    def fields(self) -> dict[str, str]:
        return self.spec["sequence"]["fields"]


def write_bundle(
    out_dir: str | os.PathLike,
    *,
    model_config: ml_collections.ConfigDict,
    params: VLAModel | str | os.PathLike,
    tokenizer: str | os.PathLike,
    vqgan: str | os.PathLike,
    vqgan_config: ml_collections.ConfigDict,
    image_mode: str,
    tokens_per_frame: int,
    bins_csv: str | os.PathLike | None = None,
    statistics: str | os.PathLike | None = None,
    decoder: str | os.PathLike | None = None,
    prompt_template: str = LAPA_TEMPLATE,
    action_units: Sequence[str] = ACTION_UNITS,
    provenance: dict[str, Any] | None = None,
    float_dtype: str | None = None,
    link: bool = False,
) -> Bundle:
    """Writes a bundle to ``out_dir`` all together or not at all: into a temporary directory beside it,
    checked with ``read_bundle``, then renamed over it. ``params``: a model (saved in ``float_dtype``,
    None keeps its dtype) or a ``params::`` file (copied). With ``bins_csv`` the bundle predicts actions;
    without, latent codes (``decoder``: a ``save_decoder`` directory mapping them to actions).
    ``link``: the given files are linked (absolute symlinks), not copied, for a bundle to load at once."""
    out_dir = Path(out_dir)
    _check_target(out_dir)
    check_mode(image_mode)
    stats = _read_json(Path(statistics), "the statistics JSON") if statistics else None
    convention = (stats or {}).get("gripper", {}).get("convention", "01")
    spec = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_config.to_dict(),
        "sequence": {
            "tokens_per_frame": int(tokens_per_frame),
            "tokens_per_latent": SequenceConfig.tokens_per_latent,
            "tokens_per_action": SequenceConfig.tokens_per_action,
            "markers": list(MARKERS),
            "end_of_frame": END_OF_FRAME,
            "end_of_vision": END_OF_VISION,
            "fields": {"latent": LATENT_FIELDS, "action": ACTION_FIELDS},
            "prompt_template": prompt_template,
        },
        "image": {"resolution": int(vqgan_config.resolution), "mode": image_mode},
        "action": {
            "predicts": "action" if bins_csv else "latent",
            "names": list(ACTION_NAMES),
            "units": list(action_units),
            "gripper_convention": convention,
        },
        "provenance": provenance or {},
    }

    def put(source: str | os.PathLike, target: Path) -> None:
        source = Path(source)
        if link:
            target.symlink_to(source.resolve())
        elif source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)

    def write(tmp: Path) -> None:
        (tmp / "vqgan").mkdir(parents=True)
        if isinstance(params, VLAModel):
            save_lapa_params(params, tmp / PARAMS, float_dtype)
        else:
            put(os.fspath(params).removeprefix("params::"), tmp / PARAMS)
        put(tokenizer, tmp / TOKENIZER)
        put(vqgan, tmp / VQGAN_PICKLE)
        (tmp / VQGAN_CONFIG).write_text(vqgan_config.to_json(indent=2))
        if bins_csv:
            put(bins_csv, tmp / BINS)
        if statistics:
            put(statistics, tmp / STATISTICS)
        if decoder:
            put(decoder, tmp / DECODER)
        (tmp / POLICY_JSON).write_text(json.dumps(spec, indent=2))
        read_bundle(tmp)  # a bundle whose pieces disagree is never put in place

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    write_together([(out_dir, write)])
    return read_bundle(out_dir)


def check_export(config: ml_collections.ConfigDict, out_dir: str | os.PathLike) -> None:
    """Before a run: a ``BundleError`` if its final model could not be written as a bundle to
    ``out_dir`` (no VQGAN to put in it, or a target that is not a bundle)."""
    if not config.data.vqgan_checkpoint:
        raise BundleError(
            f"--config.export_policy={out_dir}: the run has no data.vqgan_checkpoint to put in the bundle "
            "(its rows are pre-tokenised); export afterwards with python -m latent_pretraining.policy "
            "export --run <run_dir> --vqgan <checkpoint>"
        )
    _check_target(Path(out_dir))


def _check_target(out_dir: Path) -> None:
    """Only a missing or empty directory, or a previous bundle, may be replaced (never, say, a run)."""
    if out_dir.exists() and not (
        (out_dir / POLICY_JSON).is_file() or (out_dir.is_dir() and not any(out_dir.iterdir()))
    ):
        raise BundleError(f"{out_dir} exists and is not a policy bundle; choose a new or empty directory")


def read_bundle(directory: str | os.PathLike) -> Bundle:
    """Reads ``policy.json`` and checks every piece against it; a ``BundleError`` names the file that
    is missing or disagrees. Parameters are not read here (``Policy.from_pretrained`` loads them)."""
    directory = Path(directory)
    spec = _read_json(directory / POLICY_JSON, "a policy bundle's policy.json")
    where = directory / POLICY_JSON
    if spec.get("format") != FORMAT or spec.get("version") != VERSION:
        raise BundleError(
            f"{where}: format {spec.get('format')!r} version {spec.get('version')!r}; "
            f"this code reads {FORMAT!r} version {VERSION}"
        )
    for name in ("model", "sequence", "image", "action", "provenance"):
        if not isinstance(spec.get(name), dict):
            raise BundleError(f"{where}: missing section {name!r}")
    for name in (PARAMS, TOKENIZER, VQGAN_PICKLE, VQGAN_CONFIG):
        if not (directory / name).is_file():
            raise BundleError(f"{directory / name}: missing (every bundle has it)")
    model = _model(spec, where)
    tokenizer_size = _tokenizer_size(directory / TOKENIZER, model, where)
    vqgan = _vqgan(directory / VQGAN_CONFIG, spec, model, where)
    predicts = spec["action"].get("predicts")
    if predicts not in ("action", "latent"):
        raise BundleError(f"{where}: action.predicts is {predicts!r}, not 'action' or 'latent'")
    bins = _bins(directory, spec, model, where) if predicts == "action" else None
    statistics = None  # LAPA's released bins come without data.finetune_preprocess's statistics
    if bins is not None and (directory / STATISTICS).exists():
        statistics = _read_json(directory / STATISTICS, "the statistics JSON")
    if (directory / DECODER).is_dir():
        _check_decoder(directory / DECODER / "config.json", model, spec["sequence"])
    sequence = SequenceConfig(
        tokens_per_frame=spec["sequence"]["tokens_per_frame"],
        vocab_sizes=(
            model.text_vocab_size,
            model.vision_vocab_size,
            model.latent_vocab_size,
            model.action_vocab_size,
        ),
        vision_codes=int(vqgan.num_embeddings),
        action_bins=tuple(bins.num_bins) if bins is not None else (),
    )
    return Bundle(directory, spec, model, vqgan, sequence, tokenizer_size, bins, statistics)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"{path}: missing ({what})")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(value, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _model(spec: dict[str, Any], where: Path) -> ml_collections.ConfigDict:
    """The model config, with room in the vision vocabulary for the frame markers, and the layout the
    sequence builder uses."""
    model = ml_collections.ConfigDict(spec["model"])
    try:
        validate(model)
    except (ValueError, KeyError, AttributeError) as e:
        raise BundleError(f"{where}: model: {e}") from None
    if model.vision_vocab_size <= END_OF_VISION:
        raise BundleError(
            f"{where}: model.vision_vocab_size {model.vision_vocab_size} has no end-of-vision id "
            f"{END_OF_VISION}: this model cannot read images"
        )
    sequence = spec["sequence"]
    expected = {
        "markers": list(MARKERS),
        "end_of_frame": END_OF_FRAME,
        "end_of_vision": END_OF_VISION,
        "tokens_per_latent": SequenceConfig.tokens_per_latent,
        "tokens_per_action": SequenceConfig.tokens_per_action,
    }
    for key, value in expected.items():
        if sequence.get(key) != value:
            raise BundleError(f"{where}: sequence.{key} is {sequence.get(key)!r}; this code uses {value!r}")
    for key in ("tokens_per_frame", "prompt_template", "fields"):
        if key not in sequence:
            raise BundleError(f"{where}: missing sequence.{key}")
    if "{task}" not in sequence["prompt_template"]:
        raise BundleError(f"{where}: sequence.prompt_template has no '{{task}}' placeholder")
    try:
        check_vision_grid(model, sequence["tokens_per_frame"])
    except ValueError as e:
        raise BundleError(f"{where}: {e}") from None
    return model


def _tokenizer_size(path: Path, model: ml_collections.ConfigDict, where: Path) -> int:
    """The tokenizer's size; it must fit the text table and share the model's BOS/EOS ids."""
    tokenizer = TextTokenizer(path)
    if tokenizer.vocab_size > model.text_vocab_size:
        raise BundleError(
            f"{path}: {tokenizer.vocab_size} tokens, but {where} has model.text_vocab_size "
            f"{model.text_vocab_size}"
        )
    if (tokenizer.bos_id, tokenizer.eos_id) != (model.bos_token_id, model.eos_token_id):
        raise BundleError(
            f"{path}: BOS/EOS ids {tokenizer.bos_id}/{tokenizer.eos_id}, but {where} has "
            f"{model.bos_token_id}/{model.eos_token_id}"
        )
    return tokenizer.vocab_size


def _vqgan(path: Path, spec: dict[str, Any], model: ml_collections.ConfigDict, where: Path):
    """The VQGAN config: its codebook below the frame markers, its grid ``tokens_per_frame`` and its
    resolution the bundle's image size."""
    cfg = ml_collections.ConfigDict(_read_json(path, "the VQGAN's config"))
    for key in ("resolution", "channel_mult", "num_embeddings"):
        if key not in cfg:
            raise BundleError(f"{path}: missing field {key!r}")
    if cfg.num_embeddings > END_OF_FRAME:
        raise BundleError(
            f"{path}: a codebook of {cfg.num_embeddings} codes; vision ids from {END_OF_FRAME} on "
            f"are frame markers (model.vision_vocab_size {model.vision_vocab_size} in {where})"
        )
    grid = tokens_per_side(cfg) ** 2
    if grid != spec["sequence"]["tokens_per_frame"]:
        raise BundleError(
            f"{path}: a {tokens_per_side(cfg)}x{tokens_per_side(cfg)} grid is {grid} tokens per image, "
            f"but {where} has sequence.tokens_per_frame {spec['sequence']['tokens_per_frame']}"
        )
    if cfg.resolution != spec["image"].get("resolution"):
        raise BundleError(
            f"{path}: resolution {cfg.resolution}, but {where} has image.resolution "
            f"{spec['image'].get('resolution')}"
        )
    try:
        check_mode(spec["image"].get("mode", ""))
    except ValueError as e:
        raise BundleError(f"{where}: image.mode: {e}") from None
    return cfg


def _bins(directory: Path, spec: dict[str, Any], model: ml_collections.ConfigDict, where: Path) -> ActionBins:
    """The bins of an action model: one row per action dimension, each within the action vocabulary."""
    path = directory / BINS
    if not path.is_file():
        raise BundleError(f"{path}: missing ({where} says the model predicts actions)")
    try:
        bins = ActionBins.from_csv(path)
    except ValueError as e:
        raise BundleError(f"{path}: {e}") from None
    if len(bins.num_bins) != ACTION_DIMS:
        raise BundleError(f"{path}: {len(bins.num_bins)} rows of bin edges, but actions have {ACTION_DIMS}")
    widest = max(bins.num_bins)
    if widest > model.action_vocab_size:
        raise BundleError(
            f"{path}: a dimension has {widest} bins, but {where} has model.action_vocab_size "
            f"{model.action_vocab_size}"
        )
    if spec["action"].get("gripper_convention") not in GRIPPER_CONVENTIONS:
        raise BundleError(f"{where}: action.gripper_convention is not one of {sorted(GRIPPER_CONVENTIONS)}")
    return bins


def _check_decoder(path: Path, model: ml_collections.ConfigDict, sequence: dict[str, Any]) -> None:
    """The decoder reads the model's latent codes: as many, from a codebook of the same size."""
    cfg = _read_json(path, "the latent-to-action decoder's config")
    codes = (cfg.get("num_codes"), cfg.get("codebook_size"))
    if codes != (sequence["tokens_per_latent"], model.latent_vocab_size):
        raise BundleError(
            f"{path}: decodes {codes[0]} codes of {codes[1]}, but the model predicts "
            f"{sequence['tokens_per_latent']} of {model.latent_vocab_size}"
        )
    if cfg.get("state_dim"):
        raise BundleError(f"{path}: the decoder reads a robot state (state_dim); the policy has none")


def bundle_from_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    vqgan: str | os.PathLike | None = None,
    vqgan_config: str | None = None,
    decoder: str | os.PathLike | None = None,
    prompt_template: str = LAPA_TEMPLATE,
    mesh: Mesh | None = None,
    model: VLAModel | None = None,
) -> Bundle:
    """A bundle of a ``latent_pretraining.train`` run: its ``config.json`` (tokenizer, VQGAN, bins,
    preprocessing), the parameters of its newest checkpoint (else its ``export_params`` file; ``model``:
    the run's final model, in memory) and its ``summary.json``. ``vqgan``/``vqgan_config`` stand in
    for a run trained on pre-tokenised rows."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise BundleError(f"{config_path}: missing; {run_dir} is not a latent_pretraining.train run")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    data = config.data
    if not (vqgan or data.vqgan_checkpoint):
        raise BundleError(f"{config_path}: data.vqgan_checkpoint is empty; pass the run's VQGAN as vqgan=")
    checkpoint = Path(vqgan or data.vqgan_checkpoint)
    if model is not None:
        params, step = model, int(config.total_steps)
    else:
        params, step = _run_params(run_dir, config, mesh)
    bins = data.action_bins if data.action_bins and config.loss.action > 0 else None
    statistics = Path(bins).with_suffix(".json") if bins else None
    summary = run_dir / "summary.json"
    return write_bundle(
        out_dir,
        model_config=config.model,
        params=params,
        tokenizer=data.tokenizer,
        vqgan=checkpoint,
        vqgan_config=resolve_config(checkpoint, vqgan_config or data.vqgan_config or None),
        image_mode=data.pp_eval or eval_mode(data.pp_train),
        tokens_per_frame=data.tokens_per_frame,
        bins_csv=bins,
        statistics=statistics if statistics and statistics.is_file() else None,
        decoder=decoder,
        prompt_template=prompt_template,
        provenance={
            "source": "latent_pretraining.train",
            "run_dir": str(run_dir.resolve()),
            "step": step,
            "metrics": json.loads(summary.read_text()) if summary.is_file() else {},
            "dataset": data.train,
        },
    )


def _run_params(
    run_dir: Path, config: ml_collections.ConfigDict, mesh: Mesh | None
) -> tuple[VLAModel | Path, int | None]:
    """The newest checkpoint's parameters as a model and its step, else the run's exported file."""
    if saved_steps(run_dir):
        mesh = make_mesh() if mesh is None else mesh
        abstract = nnx.eval_shape(lambda: VLAModel(config.model, rngs=nnx.Rngs(0)))
        graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            params,
            state_shardings(params, mesh),
        )
        checkpointer = Checkpointer(run_dir, read_only=True)
        try:
            restored = checkpointer.restore_params(target)
        finally:
            checkpointer.close()
        if restored is not None:
            return nnx.merge(graphdef, restored[0], rest), restored[1]
    exported = Path(config.export_params.removeprefix("params::")) if config.export_params else None
    if exported is None or not exported.is_file():
        raise BundleError(f"{run_dir}: no checkpoint and no export_params file to take the parameters from")
    return exported, int(config.total_steps)


def bundle_from_lapa(
    params: str | os.PathLike,
    vqgan: str | os.PathLike,
    tokenizer: str | os.PathLike,
    bins_csv: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    model_config: str | os.PathLike | ml_collections.ConfigDict,
    *,
    vqgan_config: ml_collections.ConfigDict | None = None,
    statistics: str | os.PathLike | None = None,
    image_mode: str = "center_crop",
    link: bool = False,
) -> Bundle:
    """A bundle of LAPA's released files: ``params::``, the LWM ``vqgan`` (config: ``vqgan_config``, else
    the JSON beside it, else LWM's), ``tokenizer.model``, a bins CSV (None: a latent-pretrained model)
    and the model config (LAPA's JSON, or ours). LAPA trained with augmentation, so images are
    centre-cropped (``image_mode="resize"`` repeats LAPA's own deploy path, which skipped the crop)."""
    cfg = vqgan_config if vqgan_config is not None else resolve_config(Path(vqgan), None)
    if not isinstance(model_config, ml_collections.ConfigDict):
        model_config = from_lapa_config(model_config)
    return write_bundle(
        out_dir,
        model_config=model_config,
        params=params,
        tokenizer=tokenizer,
        vqgan=vqgan,
        vqgan_config=cfg,
        image_mode=image_mode,
        tokens_per_frame=tokens_per_side(cfg) ** 2,
        bins_csv=bins_csv,
        statistics=statistics,
        provenance={"source": "LAPA release", "params": os.fspath(params).removeprefix("params::")},
        link=link,
    )
