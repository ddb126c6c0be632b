"""Reads LWM/LAPA ``vqgan`` checkpoints: a pickle of the Flax params dict of LWM's VQGAN."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from latent_pretraining.vqgan.model import VQGAN

# our attribute name -> LWM's flax auto-name; an index that follows a list name is appended
LWM_NAMES = {
    "conv_in": "Conv_0",
    "conv_out": "Conv_1",
    "norm_out": "GroupNorm_0",
    "mid": "MidBlock_0",
    "down": "DownsamplingBlock",
    "up": "UpsamplingBlock",
    "blocks": "ResnetBlock",
    "downsample": "Downsample_0/Conv_0",
    "upsample": "Upsample_0/Conv_0",
    "block1": "ResnetBlock_0",
    "block2": "ResnetBlock_1",
    "norm1": "GroupNorm_0",
    "conv1": "Conv_0",
    "norm2": "GroupNorm_1",
    "conv2": "Conv_1",
    "shortcut": "Conv_2",
    "codebook": "quantize/embeddings",
}


class VQGANCheckpointError(ValueError):
    """A ``vqgan`` file that does not match the model."""


def lwm_path(path: tuple[Any, ...]) -> str:
    """Our parameter path -> LWM's 'a/b/c' key."""
    parts: list[str] = []
    for item in path:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}_{item}"
        else:
            parts.append(LWM_NAMES.get(item, item))
    return "/".join(parts)


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = np.asarray(value)
    return flat


def load_lwm_vqgan(path: str | os.PathLike, cfg: ml_collections.ConfigDict) -> VQGAN:
    """Builds a VQGAN from an LWM ``vqgan`` pickle (its inner params dict, or ``{'params': ...}``)."""
    with open(path, "rb") as f:
        tree = pickle.load(f)
    if not isinstance(tree, Mapping):
        raise VQGANCheckpointError(f"{path}: expected a pickled params dict, got {type(tree).__name__}")
    if set(tree) == {"params"}:
        tree = tree["params"]
    stored = _flatten(tree)
    abstract = nnx.eval_shape(lambda: VQGAN(cfg, rngs=nnx.Rngs(0)))
    graphdef, state, rest = nnx.split(abstract, nnx.Param, ...)
    values = []
    expected = set()
    for our_path, var in nnx.to_flat_state(state):
        key = lwm_path(our_path)
        expected.add(key)
        if key not in stored:
            raise VQGANCheckpointError(
                f"{path}: missing parameter {key} (for {'/'.join(map(str, our_path))})"
            )
        array = stored[key]
        target = var.get_value()
        if array.shape != target.shape:
            raise VQGANCheckpointError(
                f"{path}: {key} has shape {array.shape}, the config expects {target.shape}"
            )
        values.append((our_path, var.replace(jnp.asarray(array, target.dtype))))
    unknown = sorted(set(stored) - expected)
    if unknown:
        raise VQGANCheckpointError(
            f"{path}: parameters the config does not have: {', '.join(unknown[:5])}"
            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        )
    rest = jax.tree.map(
        lambda x: jnp.full(x.shape, 1.0 / cfg.num_embeddings, x.dtype), rest
    )  # fresh statistics
    return nnx.merge(graphdef, nnx.from_flat_state(values), rest)


def params_as_lwm_dict(model: VQGAN) -> dict[str, Any]:
    """The model's parameters as LWM's nested params dict (what ``vqgan`` pickles hold)."""
    tree: dict[str, Any] = {}
    for our_path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        node = tree
        *parents, leaf = lwm_path(our_path).split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = np.asarray(jax.device_get(var.get_value()))
    return tree


def save_lwm_vqgan(model: VQGAN, path: str | os.PathLike) -> None:
    """Writes a ``vqgan`` pickle that LWM/LAPA's loader reads; atomic."""
    tmp = f"{os.fspath(path)}.tmp"
    try:
        with open(tmp, "wb") as f:
            pickle.dump(params_as_lwm_dict(model), f, protocol=4)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
