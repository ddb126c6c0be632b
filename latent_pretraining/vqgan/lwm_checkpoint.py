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


# all an LWM ``vqgan`` pickle may name: dicts of numpy arrays (numpy 1 and 2 module names); anything
# else could run code while unpickling
_PICKLE_GLOBALS = frozenset(
    {
        ("builtins", "dict"),
        ("collections", "OrderedDict"),
        ("flax.core.frozen_dict", "FrozenDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        *(
            (f"{core}.multiarray", name)
            for core in ("numpy.core", "numpy._core")
            for name in ("_reconstruct", "scalar")
        ),
        *((f"{core}.numeric", "_frombuffer") for core in ("numpy.core", "numpy._core")),  # protocol 5
    }
)
# what the unpickler raises on a truncated or garbled stream
_DAMAGED = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, OverflowError)


class _ParamsUnpickler(pickle.Unpickler):
    """Unpickles only what ``_PICKLE_GLOBALS`` admits."""

    def __init__(self, file: Any, path: str | os.PathLike):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise VQGANCheckpointError(
                f"{self.path}: refused to unpickle {module}.{name} "
                "(an LWM vqgan file holds only dicts of numpy arrays)"
            )
        return super().find_class(module, name)


def _load_pickle(path: str | os.PathLike) -> Any:
    """The unpickled file, through ``_ParamsUnpickler``; a damaged file is a ``VQGANCheckpointError``."""
    with open(path, "rb") as f:
        try:
            return _ParamsUnpickler(f, path).load()
        except VQGANCheckpointError:
            raise
        except _DAMAGED as e:
            raise VQGANCheckpointError(
                f"{path}: truncated or not a pickle ({type(e).__name__}: {e})"
            ) from None
        except MemoryError:  # a corrupt length: the unpickler allocates what it claims before reading
            raise VQGANCheckpointError(
                f"{path}: truncated or not a pickle (a length in it asks for more memory than there is)"
            ) from None


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
    tree = _load_pickle(path)
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
