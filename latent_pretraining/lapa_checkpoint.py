"""Reader and writer for LAPA/LWM streaming ``params::<path>`` checkpoints.

The file is a stream of msgpack records ``(key_path, value_bytes)``;
``value_bytes`` is ``flax.serialization.to_bytes(array)``: a msgpack ExtType(1)
whose payload is ``[shape, dtype_name, raw C-order bytes]``. Layers are stored
stacked (``transformer/h/scan_decoder/...``) or per layer (``transformer/h/<i>/...``).
Reading streams tensor by tensor onto the target sharding.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import msgpack
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from latent_pretraining.core.sharding import make_mesh, state_shardings
from latent_pretraining.model import VOCABS, VLAModel

log = logging.getLogger(__name__)

_NDARRAY_EXT = 1  # flax.serialization's ExtType code for ndarrays

# LAPA name -> our top-level parameter name
_TOP_LEVEL = {
    ("transformer", "wte", "embedding"): "text_embed",
    ("transformer", "vte", "embedding"): "vision_embed",
    ("transformer", "dte", "embedding"): "latent_embed",
    ("transformer", "ate", "embedding"): "action_embed",
    ("lm_head", "kernel"): "text_head",
    ("vision_head", "kernel"): "vision_head",
    ("delta_head", "kernel"): "latent_head",
    ("action_head", "kernel"): "action_head",
    ("transformer", "ln_f", "kernel"): "final_norm",
}
# LAPA per-block name -> our DecoderBlock parameter name
_BLOCK = {
    ("attention", "wq", "kernel"): "wq",
    ("attention", "wk", "kernel"): "wk",
    ("attention", "wv", "kernel"): "wv",
    ("attention", "wo", "kernel"): "wo",
    ("attention_norm", "kernel"): "attn_norm",
    ("ffn_norm", "kernel"): "mlp_norm",
    ("feed_forward", "w1", "kernel"): "w_gate",
    ("feed_forward", "w2", "kernel"): "w_down",
    ("feed_forward", "w3", "kernel"): "w_up",
}
_TOP_LEVEL_INV = {v: k for k, v in _TOP_LEVEL.items()}
# vocabularies a checkpoint may lack, then initialised when asked: LWM has neither, a
# latent-pretrained LAPA model has no action table and head
INITIALISABLE_VOCABS = ("latent", "action")
# our vocabulary table/head name -> its vocabulary
_VOCAB_OF = {f"{vocab}_{part}": vocab for vocab in VOCABS for part in ("embed", "head")}
# msgpack errors (ExtraData, FormatError, StackError and UnicodeDecodeError are ValueErrors;
# TypeError: an unhashable map key)
_MSGPACK_ERRORS = (ValueError, TypeError, msgpack.UnpackException)
# record headers are a pair and a key path of a few names: a corrupt length must not allocate its claim
_MAX_HEADER_ITEMS = 1024
# msgpack's bin32 length limit: no single record can be larger
MAX_RECORD_BYTES = 2**32 - 1
_BLOCK_INV = {v: k for k, v in _BLOCK.items()}


class CheckpointFormatError(ValueError):
    """A checkpoint record that cannot be read or placed."""


def _strip(path: str | os.PathLike) -> Path:
    text = os.fspath(path)
    if text.startswith("params::"):
        text = text[len("params::") :]
    elif "::" in text:
        raise CheckpointFormatError(f"{text}: only 'params::<path>' checkpoints are supported")
    return Path(text)


def decode_array(value: bytes, where: str) -> np.ndarray:
    """Decodes ``flax.serialization.to_bytes(ndarray)`` without flax; anything else, including
    damaged bytes, is a ``CheckpointFormatError`` naming ``where``."""

    def ext_hook(code: int, data: bytes) -> Any:
        if code != _NDARRAY_EXT:
            raise CheckpointFormatError(f"{where}: unsupported msgpack ext type {code}")
        shape, dtype_name, buffer = msgpack.unpackb(data, raw=False)
        if not (
            isinstance(shape, list)
            and all(type(n) is int and n >= 0 for n in shape)
            and isinstance(dtype_name, str)
            and isinstance(buffer, bytes)
        ):
            raise CheckpointFormatError(f"{where}: not an ndarray header [shape, dtype name, bytes]")
        dtype = jnp.dtype(dtype_name)
        if not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
            raise CheckpointFormatError(f"{where}: dtype {dtype_name} is not numeric")
        return np.frombuffer(buffer, dtype=dtype).reshape(shape)

    try:
        array = msgpack.unpackb(value, ext_hook=ext_hook, raw=False)
    except CheckpointFormatError:
        raise
    except _MSGPACK_ERRORS as e:
        raise CheckpointFormatError(f"{where}: not a serialised array ({type(e).__name__}: {e})") from None
    if not isinstance(array, np.ndarray):
        raise CheckpointFormatError(f"{where}: expected an array, got {type(array).__name__}")
    return array


def encode_array(array: np.ndarray) -> bytes:
    """Encodes like ``flax.serialization.to_bytes(ndarray)``."""
    array = np.ascontiguousarray(array)
    payload = msgpack.packb((array.shape, array.dtype.name, array.tobytes("C")), use_bin_type=True)
    return msgpack.packb(msgpack.ExtType(_NDARRAY_EXT, payload), use_bin_type=True)


def iter_records(path: str | os.PathLike) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Streams ``(key_path, array)`` records from a LAPA checkpoint file."""
    file_path = _strip(path)
    size = os.path.getsize(file_path)
    key: tuple[str, ...] = ()
    with open(file_path, "rb") as f:
        unpacker = msgpack.Unpacker(
            f,
            read_size=1 << 24,
            max_buffer_size=0,
            raw=False,
            max_array_len=_MAX_HEADER_ITEMS,
            max_map_len=_MAX_HEADER_ITEMS,
        )
        for index in itertools.count():
            try:
                record = next(unpacker)
            except StopIteration:
                break
            except _MSGPACK_ERRORS as e:
                raise CheckpointFormatError(
                    f"{file_path}: record {index} is corrupt ({type(e).__name__}: {e}; "
                    f"last complete record: {'/'.join(key) or 'none'})"
                ) from None
            if not (
                isinstance(record, list | tuple)
                and len(record) == 2
                and isinstance(record[0], list | tuple)
                and all(isinstance(k, str | int) for k in record[0])
                and isinstance(record[1], bytes)
            ):
                raise CheckpointFormatError(
                    f"{file_path}: record {index} is not a (key path, array bytes) pair"
                )
            key = tuple(str(k) for k in record[0])
            yield key, decode_array(record[1], f"{file_path}: record {index} ({'/'.join(key)})")
        if unpacker.tell() != size:  # msgpack stops quietly at a cut-off record
            last = "/".join(key) or "none"
            raise CheckpointFormatError(
                f"{file_path}: truncated or corrupt after byte {unpacker.tell()} of {size} "
                f"(last complete record: {last})"
            )


def _map_key(key: tuple[str, ...], where: str) -> tuple[str, int | None]:
    """LAPA key -> (our parameter name, layer index or None for stacked/top level)."""
    if key in _TOP_LEVEL:
        return _TOP_LEVEL[key], None
    if key[:2] == ("transformer", "h") and len(key) > 3:
        layer, rest = key[2], key[3:]
        if rest in _BLOCK and (layer == "scan_decoder" or layer.isdecimal()):
            return _BLOCK[rest], (None if layer == "scan_decoder" else int(layer))
    raise CheckpointFormatError(f"{where}: unknown parameter {'/'.join(key)}")


def _lapa_key(path: tuple[Any, ...], scanned: bool) -> tuple[str, ...]:
    """Our parameter path -> LAPA's key in the model's layout."""
    name = path[-1]
    if path[0] != "layers":
        return _TOP_LEVEL_INV[name]
    layer = "scan_decoder" if scanned else str(path[1])
    return ("transformer", "h", layer, *_BLOCK_INV[name])


def _names(paths: Sequence[tuple[Any, ...]], scanned: bool) -> str:
    """Our parameter names, each with LAPA's key."""
    return ", ".join(f"{'/'.join(map(str, p))} ({'/'.join(_lapa_key(p, scanned))})" for p in paths)


def _target_path(model_name: str, layer: int | None, scanned: bool) -> tuple[Any, ...]:
    if model_name in _BLOCK_INV:
        return ("layers", model_name) if scanned else ("layers", layer, model_name)
    return (model_name,)


def _place(array: np.ndarray, target: Any, sharding: Any) -> jax.Array:
    array = array.astype(target.dtype)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def load_lapa_params(
    path: str | os.PathLike,
    cfg: ml_collections.ConfigDict,
    mesh: Mesh | None = None,
    seed: int = 0,
    initialise_missing: Sequence[str] = (),
) -> VLAModel:
    """Builds a ``VLAModel`` from a LAPA/LWM ``params::`` file.

    Tensors stream one at a time onto their target sharding. The file must hold every
    parameter, except the tables and heads of the vocabularies in ``initialise_missing``
    ("latent", "action": what LWM or a latent-pretrained checkpoint lacks), which, when
    absent, get the model's own initialiser (and a warning). A missing parameter (a file
    cut short loses the tables that sort last), unknown names, shape mismatches and damaged
    records raise ``CheckpointFormatError``.
    """
    for vocab in initialise_missing:
        if vocab not in INITIALISABLE_VOCABS:
            raise ValueError(
                f"initialise_missing: {vocab!r} is not a vocabulary a checkpoint may lack "
                f"(only {', '.join(map(repr, INITIALISABLE_VOCABS))})"
            )
    file_path = _strip(path)
    mesh = make_mesh("1,-1,1,1") if mesh is None else mesh
    scanned = bool(cfg.scan_layers)
    num_layers = int(cfg.num_layers)
    abstract = nnx.eval_shape(lambda: VLAModel(cfg, rngs=nnx.Rngs(seed)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh)
    targets = {p: v.get_value() for p, v in nnx.to_flat_state(abstract_state)}
    target_shardings = {p: v.get_value() for p, v in nnx.to_flat_state(shardings)}

    loaded: dict[tuple[Any, ...], jax.Array] = {}
    partial: dict[tuple[Any, ...], tuple[np.ndarray, set[int]]] = {}  # unscanned file -> scanned model
    for key, array in iter_records(file_path):
        where = f"{file_path}: {'/'.join(key)}"
        name, layer = _map_key(key, str(file_path))
        if layer is not None and not 0 <= layer < num_layers:
            raise CheckpointFormatError(f"{where}: layer {layer} but the model has {num_layers} layers")
        if layer is None and name in _BLOCK_INV and not scanned:
            pieces = [(layer_i, array[layer_i]) for layer_i in range(array.shape[0])]
            if array.shape[0] != num_layers:
                raise CheckpointFormatError(
                    f"{where}: {array.shape[0]} stacked layers but the model has {num_layers}"
                )
        else:
            pieces = [(layer, array)]
        for layer_i, piece in pieces:
            path = _target_path(name, layer_i, scanned)
            target = targets[path]
            one_layer_of_stack = scanned and layer_i is not None
            expected = target.shape[1:] if one_layer_of_stack else target.shape
            if tuple(piece.shape) != tuple(expected):
                raise CheckpointFormatError(
                    f"{where}: shape {tuple(piece.shape)} but the model expects {tuple(expected)}"
                )
            if path in loaded:
                raise CheckpointFormatError(f"{where}: parameter appears twice")
            if one_layer_of_stack:
                buffer, seen = partial.setdefault(path, (np.empty(target.shape, target.dtype), set()))
                buffer[layer_i] = piece
                seen.add(layer_i)
                if len(seen) == num_layers:
                    loaded[path] = _place(buffer, target, target_shardings[path])
                    del partial[path]
            else:
                loaded[path] = _place(piece, target, target_shardings[path])
        del array

    if partial:
        incomplete = {
            "/".join(map(str, p)): sorted(set(range(num_layers)) - seen) for p, (_, seen) in partial.items()
        }
        raise CheckpointFormatError(f"{file_path}: layers missing for {incomplete}")
    missing = [p for p in targets if p not in loaded]
    required = [p for p in missing if _VOCAB_OF.get(p[-1]) not in INITIALISABLE_VOCABS]
    if required:
        raise CheckpointFormatError(
            f"{file_path}: missing parameters {_names(required, scanned)}; the file is incomplete "
            f"(only the {' and '.join(INITIALISABLE_VOCABS)} tables and heads may be absent)"
        )
    not_asked = [p for p in missing if _VOCAB_OF[p[-1]] not in initialise_missing]
    if not_asked:
        vocabs = tuple(v for v in INITIALISABLE_VOCABS if any(_VOCAB_OF[p[-1]] == v for p in not_asked))
        raise CheckpointFormatError(
            f"{file_path}: no {' or '.join(vocabs)} table or head ({_names(not_asked, scanned)}); "
            f"to initialise them, pass initialise_missing={vocabs!r} "
            f"(training: --config.init_new_vocabs={','.join(vocabs)})"
        )
    if missing:
        log.warning(
            "%s: not in the checkpoint, initialised with the model's initialiser: %s",
            file_path,
            ", ".join("/".join(map(str, p)) for p in missing),
        )
        loaded.update(_init_subset(cfg, seed, missing, {p: target_shardings[p] for p in missing}, mesh))
    state = nnx.from_flat_state(
        [
            (p, abstract_state_var.replace(loaded[p]))
            for p, abstract_state_var in nnx.to_flat_state(abstract_state)
        ]
    )
    return nnx.merge(graphdef, state)


def _init_subset(
    cfg: ml_collections.ConfigDict,
    seed: int,
    paths: list[tuple[Any, ...]],
    shardings: dict[tuple[Any, ...], Any],
    mesh: Mesh,
) -> dict[tuple[Any, ...], jax.Array]:
    """Initialises only ``paths`` of a fresh model (XLA drops the other initialisers)."""

    def init() -> list[jax.Array]:
        flat = dict(nnx.to_flat_state(nnx.state(VLAModel(cfg, rngs=nnx.Rngs(seed)))))
        return [flat[p].get_value() for p in paths]

    with jax.set_mesh(mesh):
        values = jax.jit(init, out_shardings=[shardings[p] for p in paths])()
    return dict(zip(paths, values, strict=False))


def _lapa_items(model: VLAModel) -> Iterator[tuple[tuple[str, ...], jax.Array]]:
    scanned = bool(model.config.scan_layers)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        yield _lapa_key(path, scanned), var.get_value()


def save_lapa_params(model: VLAModel, path: str | os.PathLike, float_dtype: str | None = "bf16") -> None:
    """Writes the model's parameters as a LAPA ``params`` stream (key order sorted,
    as flax's ``flatten_dict`` gives for LAPA's trees). ``float_dtype``: 'bf16'
    (tux's default), 'fp32', or None to keep the parameter dtype. Process 0
    writes; the file appears atomically."""
    casts = {
        None: None,
        "bf16": jnp.bfloat16,
        "bfloat16": jnp.bfloat16,
        "fp32": jnp.float32,
        "float32": jnp.float32,
    }
    if float_dtype not in casts:
        raise ValueError(f"float_dtype {float_dtype!r} is not one of {sorted(map(str, casts))}")
    cast = casts[float_dtype]
    file_path = _strip(path)
    items = sorted(_lapa_items(model), key=lambda item: item[0])
    for key, value in items:  # check before writing anything
        nbytes = value.size * jnp.dtype(cast or value.dtype).itemsize
        if nbytes > MAX_RECORD_BYTES:
            raise CheckpointFormatError(
                f"{'/'.join(key)}: {nbytes:,} bytes do not fit in one msgpack record of "
                "LAPA's format (4 GiB at most); save with float_dtype='bf16'"
            )
    is_writer = jax.process_index() == 0
    tmp = file_path.with_name(file_path.name + ".tmp")
    if is_writer:
        file_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp if is_writer else os.devnull, "wb") as f:
            packer = msgpack.Packer(use_bin_type=True)
            for key, value in items:
                if not value.is_fully_addressable:
                    value = multihost_utils.process_allgather(value, tiled=True)
                array = np.asarray(jax.device_get(value))
                if cast is not None:
                    array = array.astype(cast)
                f.write(packer.pack((list(key), encode_array(array))))
    except BaseException:
        if is_writer:
            tmp.unlink(missing_ok=True)
        raise
    if is_writer:
        os.replace(tmp, file_path)
    if jax.process_count() > 1:  # no host reads the file before it is complete
        multihost_utils.sync_global_devices(f"save_lapa_params:{file_path}")
