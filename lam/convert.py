"""LAPA's PyTorch LAQ state_dict (``laq_openx.pt``) -> our latent action model.

    python -m lam.convert --checkpoint laq_openx.pt --out lam_export/ [--image_size 256 --code_seq_len 4]

The file is read without torch (``lam.torch_checkpoint``). Shapes give every size except
the image size and the number of codes, which default to LAPA's (256, 4). The result is
an export directory that ``lam.label`` and ``lam.checkpoint.load_lam`` read. Every tensor is
accounted for: unknown or missing names and wrong shapes are errors that name them.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lam.model import LatentActionModel, get_lam_config
from lam.torch_checkpoint import load_state_dict
from latent_pretraining.core.cli import exit_on

_TRANSFORMERS = {
    "enc_spatial_transformer": "enc_spatial",
    "enc_temporal_transformer": "enc_temporal",
    "dec_spatial_transformer": "dec_spatial",
}
_LAYER_PARTS = {"0": "peg", "1": "attn", "2": "cross_attn", "3": "ff"}
_FF = {
    "0.weight": "norm.scale",
    "0.bias": "norm.bias",
    "1.weight": "proj_in.kernel",
    "4.weight": "proj_out.kernel",
}
_TOP = {
    "to_patch_emb_first_frame.1.weight": "patch_norm_in.scale",
    "to_patch_emb_first_frame.1.bias": "patch_norm_in.bias",
    "to_patch_emb_first_frame.2.weight": "patch_proj.kernel",
    "to_patch_emb_first_frame.2.bias": "patch_proj.bias",
    "to_patch_emb_first_frame.3.weight": "patch_norm_out.scale",
    "to_patch_emb_first_frame.3.bias": "patch_norm_out.bias",
    "vq.codebooks": "quantizer.codebook",
    "vq.project_in.weight": "code_head.project_in.kernel",
    "vq.project_in.bias": "code_head.project_in.bias",
    "vq.project_out.weight": "project_out.kernel",
    "vq.project_out.bias": "project_out.bias",
    "to_pixels_first_frame.0.weight": "to_pixels.kernel",
    "to_pixels_first_frame.0.bias": "to_pixels.bias",
}


def _our_name(key: str) -> str | None:
    """Our dotted parameter path for a LAPA key; None for the zero ``beta`` buffers of bias-less norms."""
    if key in _TOP:
        return _TOP[key]
    if m := re.fullmatch(r"spatial_rel_pos_bias\.net\.(\d)\.(?:0\.)?(weight|bias)", key):
        return f"position_bias.net.{m[1]}.{'kernel' if m[2] == 'weight' else 'bias'}"
    if m := re.fullmatch(r"vq\.cnn_encoder\.(\d)\.(weight|bias)", key):
        return f"code_head.convs.{int(m[1]) // 2}.{'kernel' if m[2] == 'weight' else 'bias'}"
    if m := re.fullmatch(r"(\w+_transformer)\.norm_out\.(gamma|beta)", key):
        return None if m[2] == "beta" else f"{_TRANSFORMERS[m[1]]}.norm_out.scale"
    if m := re.fullmatch(r"(\w+_transformer)\.layers\.(\d+)\.(\d)\.(.+)", key):
        if m[1] not in _TRANSFORMERS:
            return "?"
        prefix = f"{_TRANSFORMERS[m[1]]}.layers.{m[2]}.{_LAYER_PARTS.get(m[3], '?')}"
        rest = m[4]
        if m[3] == "0":
            return {"dsconv.weight": f"{prefix}.kernel", "dsconv.bias": f"{prefix}.bias"}.get(rest, "?")
        if m[3] == "3":
            return f"{prefix}.{_FF[rest]}" if rest in _FF else "?"
        if rest.endswith(".beta"):
            return None
        if rest.endswith(".gamma"):
            return f"{prefix}.{rest[: -len('.gamma')]}.scale"
        if rest.endswith(".weight"):
            return f"{prefix}.{rest[: -len('.weight')]}.kernel"
        return f"{prefix}.{rest}"
    return "?"


def _to_ours(name: str, value: np.ndarray) -> np.ndarray:
    if name.endswith("peg.kernel"):  # [dim, 1, t, h, w] -> [t, h, w, 1, dim]
        return np.transpose(value, (2, 3, 4, 1, 0))
    if ".convs." in name and name.endswith(".kernel"):  # [out, in, h, w] -> [h, w, in, out]
        return np.transpose(value, (2, 3, 1, 0))
    if name.endswith(".kernel"):  # Linear [out, in] -> [in, out]
        return value.T
    return value


def _depth(state_dict: Mapping[str, np.ndarray], prefix: str) -> int:
    return 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith(prefix + ".layers."))


def infer_config(
    state_dict: Mapping[str, np.ndarray], image_size: int = 256, code_seq_len: int = 4
) -> ml_collections.ConfigDict:
    """Our model config for a LAPA state_dict (sizes from its shapes)."""
    try:
        cfg = get_lam_config("lapa", "nsvq")
        patch_dim = state_dict["to_patch_emb_first_frame.1.weight"].shape[0]
        cfg.dim = int(state_dict["to_patch_emb_first_frame.2.weight"].shape[0])
        cfg.codebook_size, cfg.quant_dim = (int(v) for v in state_dict["vq.codebooks"].shape)
        cfg.heads = int(state_dict["spatial_rel_pos_bias.net.2.weight"].shape[0])
        cfg.dim_head = int(state_dict["enc_spatial_transformer.layers.0.1.q_scale"].shape[0])
        cfg.spatial_depth = _depth(state_dict, "enc_spatial_transformer")
        cfg.temporal_depth = _depth(state_dict, "enc_temporal_transformer")
    except (KeyError, ValueError) as e:
        raise ValueError(f"not a LAPA LAQ state_dict (missing {e})") from None
    patch = round((patch_dim / cfg.channels) ** 0.5)
    if cfg.channels * patch * patch != patch_dim:
        raise ValueError(f"patch embedding of {patch_dim} features is not {cfg.channels} x p x p")
    cfg.patch_size, cfg.image_size, cfg.code_seq_len = patch, image_size, code_seq_len
    cfg.lapa_token_layout, cfg.predict_residual = True, False  # LAPA's architecture
    return cfg


def lapa_params(state_dict: Mapping[str, np.ndarray], model: LatentActionModel) -> nnx.State:
    """The model's parameter state with every LAPA tensor put in its place."""
    state = nnx.state(model, nnx.Param)
    flat = {".".join(str(p) for p in path): var for path, var in nnx.to_flat_state(state)}
    filled, unknown = set(), []
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        name = _our_name(key)
        if name is None:
            if np.any(np.asarray(value) != 0):
                raise ValueError(f"{key}: LAPA registers this norm bias as a zero buffer, but it is not zero")
            continue
        if key.endswith("null_kv") and value.size == 0:
            continue  # self-attention has no null kv
        if name not in flat:
            unknown.append(key)
            continue
        array = _to_ours(name, np.asarray(value, np.float32))
        target = flat[name]
        if array.shape != target.shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)} does not fit {name} {tuple(target.shape)}")
        target.set_value(jnp.asarray(array, target.get_value().dtype))
        filled.add(name)
    if unknown:
        raise ValueError(
            f"tensors this model has no place for: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}"
        )
    missing = sorted(set(flat) - filled)
    if missing:
        raise ValueError(f"the checkpoint lacks {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    return state


def load_lapa_laq(path: str | Path, image_size: int = 256, code_seq_len: int = 4) -> LatentActionModel:
    """Builds our model from LAPA's ``.pt`` state_dict (NSVQ quantizer, LAPA's architecture)."""
    state_dict = {k.removeprefix("module."): v for k, v in load_state_dict(path).items()}
    cfg = infer_config(state_dict, image_size, code_seq_len)
    model = LatentActionModel(cfg, nnx.Rngs(0))
    try:
        nnx.update(model, lapa_params(state_dict, model))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return model


def main(argv: list[str] | None = None) -> None:
    from lam.checkpoint import save_lam

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="LAPA's laq .pt state_dict")
    parser.add_argument("--out", required=True, help="export directory to write")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--code_seq_len", type=int, default=4)
    args = parser.parse_args(argv)
    with exit_on():
        model = load_lapa_laq(args.checkpoint, args.image_size, args.code_seq_len)
        save_lam(model, args.out)
    print(f"converted {args.checkpoint} -> {args.out}")


if __name__ == "__main__":
    main()
