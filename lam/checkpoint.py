"""The latent action model's export format, and one loader for it and for LAPA's ``.pt``.

An export is a directory with ``lam_config.json`` (the model config), ``lam_state.msgpack``
(every variable of the model, codebook included, as flax msgpack) and ``lam_data.json`` (the data
settings it was trained with, which ``lam.label`` must reuse: its codes describe the change over
H frames), and ``lam_quality.json`` when its trainer scored it (the held-out report of
``lam.train.Evaluator`` for these very weights). It is written under a temporary name and renamed,
so a directory that exists is complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx, serialization

from lam.model import LatentActionModel, get_lam_config

CONFIG_FILE, STATE_FILE, DATA_FILE = "lam_config.json", "lam_state.msgpack", "lam_data.json"
QUALITY_FILE = "lam_quality.json"
# model options added after exports were first written: an export without one was trained
# without it, i.e. with LAPA's setting (the lapa preset has every option beyond LAPA off)
LATER_OPTIONS = ("match_brightness", "motion_kernel", "difference_embedding", "code_head")


def data_settings(config: ml_collections.ConfigDict) -> dict:
    """What of a ``lam.train`` config labelling must match: H (frames, or seconds when
    ``offset_seconds`` > 0), the source kind, its RLDS image key, and the frame resolution."""
    data = config.data
    return {
        "source": data.source,
        "offset": int(data.offset),
        "offset_seconds": float(data.offset_seconds) if data.offset_seconds else None,
        "image_key": data.image_key if data.source == "rlds" else None,
        "image_size": int(config.model.image_size),
    }


def save_lam(
    model: LatentActionModel, out: str | Path, data: dict | None = None, quality: dict | None = None
) -> Path:
    """Writes the export ``out``; ``data`` (:func:`data_settings`) goes to ``lam_data.json``,
    left out only where they are unknown (e.g. a converted LAPA ``.pt``); ``quality``, the model's
    held-out report, to ``lam_quality.json``."""
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), nnx.to_pure_dict(nnx.state(model)))
    (tmp / STATE_FILE).write_bytes(serialization.msgpack_serialize(state))
    (tmp / CONFIG_FILE).write_text(model.cfg.to_json(indent=2))
    if data is not None:
        (tmp / DATA_FILE).write_text(json.dumps(data, indent=2))
    if quality is not None:
        (tmp / QUALITY_FILE).write_text(json.dumps(quality, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def export_dir(path: str | Path) -> Path | None:
    """The export directory ``path`` names (itself, or a run directory's ``export/``), or None."""
    path = Path(path)
    for candidate in (path / "export", path):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    return None


def load_quality(path: str | Path) -> dict | None:
    """The held-out report an export (or a run directory's) carries; None where it has none."""
    export = export_dir(path)
    if export is None or not (export / QUALITY_FILE).is_file():
        return None
    return json.loads((export / QUALITY_FILE).read_text())


def load_data_settings(path: str | Path) -> dict | None:
    """The data settings an export (or a run directory's) records; None for LAPA's ``.pt`` or an
    export written before they were recorded."""
    export = export_dir(path)
    if export is None or not (export / DATA_FILE).is_file():
        return None
    return json.loads((export / DATA_FILE).read_text())


def load_config(path: str | Path) -> ml_collections.ConfigDict:
    """An export's model config, with options it predates set to off."""
    cfg = ml_collections.ConfigDict(json.loads((Path(path) / CONFIG_FILE).read_text()))
    lapa = get_lam_config("lapa")
    for key in LATER_OPTIONS:
        if key not in cfg:
            cfg[key] = lapa[key]
    return cfg


def load_lam(path: str | Path, *, image_size: int = 256, code_seq_len: int = 4) -> LatentActionModel:
    """An export directory, a training run directory (its ``export/``), or LAPA's ``.pt``
    (``image_size`` and ``code_seq_len`` apply to the ``.pt`` only)."""
    path = Path(path)
    if path.is_file():
        from lam.convert import load_lapa_laq

        return load_lapa_laq(path, image_size, code_seq_len)
    export = export_dir(path)
    if export is None:
        raise FileNotFoundError(
            f"{path}: no {CONFIG_FILE} (expected a LAM export, a run directory or a .pt file)"
        )
    path = export
    cfg = load_config(path)
    model = LatentActionModel(cfg, nnx.Rngs(0))
    try:
        restored = serialization.msgpack_restore((path / STATE_FILE).read_bytes())
    except Exception as e:
        raise ValueError(f"{path / STATE_FILE}: unreadable ({e})") from None
    state = nnx.state(model)
    expected = jax.tree.map(lambda x: x.shape, nnx.to_pure_dict(state))
    got = jax.tree.map(lambda x: np.shape(x), restored)
    if expected != got:
        raise ValueError(f"{path / STATE_FILE}: variables do not match {CONFIG_FILE}")
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model
