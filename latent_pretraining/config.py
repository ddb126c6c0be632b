"""Model configuration presets (ml_collections ConfigDicts).

``get_model_config('debug' | '1b' | '7b')`` returns a fresh ConfigDict; callers
override fields directly or through ``--config.model.<field>=<value>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections

REMAT_POLICIES = ("none", "full", "save-dots", "save-named-activations")
ATTENTION_BACKENDS = ("xla", "cudnn")


def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # vocabularies: one embedding table and one output head each
    c.text_vocab_size = 32000
    c.vision_vocab_size = 8448
    c.latent_vocab_size = 8
    c.action_vocab_size = 256
    c.bos_token_id = 1
    c.eos_token_id = 2
    # transformer
    c.hidden_size = 4096
    c.intermediate_size = 11008
    c.num_layers = 32
    c.num_heads = 32
    c.num_kv_heads = 32
    c.rms_norm_eps = 1e-6
    c.rope_theta = 50_000_000.0
    # 0: LWM's rotary positions only. N > 0: every image code also gets a fixed 2-D sin-cos embedding
    # of its row and column in an N x N grid (the frame's tokens_per_frame is N * N), so that a small
    # model trained from scratch can tell where things are; LWM and LAPA's checkpoints have none
    c.vision_grid = 0
    c.max_sequence_length = 4096
    c.initializer_range = 0.02
    # numerics and execution
    c.param_dtype = "float32"
    c.dtype = "bfloat16"
    c.scan_layers = True
    c.remat_policy = "none"
    c.attention_backend = "xla"
    return c


def get_model_config(preset: str = "debug") -> ml_collections.ConfigDict:
    """Returns the model config of a preset: ``debug``, ``1b`` or ``7b``."""
    c = _base()
    if preset == "debug":
        c.text_vocab_size = 1024
        c.hidden_size = 64
        c.intermediate_size = 128
        c.num_layers = 2
        c.num_heads = 4
        c.num_kv_heads = 2
        c.max_sequence_length = 1024
        c.dtype = "float32"
    elif preset == "1b":
        c.hidden_size = 2048
        c.intermediate_size = 5632
        c.num_layers = 22
        c.num_heads = 32
        c.num_kv_heads = 4
    elif preset == "7b":
        pass  # LAPA / LWM-7B
    else:
        raise ValueError(f"unknown model preset {preset!r}; choose debug, 1b or 7b")
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the field when a config cannot work."""
    if c.hidden_size % c.num_heads:
        raise ValueError(f"hidden_size {c.hidden_size} is not divisible by num_heads {c.num_heads}")
    if c.num_heads % c.num_kv_heads:
        raise ValueError(f"num_heads {c.num_heads} is not a multiple of num_kv_heads {c.num_kv_heads}")
    if (c.hidden_size // c.num_heads) % 2:
        raise ValueError("head_dim must be even for rotary embeddings")
    if c.remat_policy not in REMAT_POLICIES:
        raise ValueError(f"remat_policy {c.remat_policy!r} is not one of {REMAT_POLICIES}")
    if c.attention_backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend {c.attention_backend!r} is not one of {ATTENTION_BACKENDS}")
    grid = vision_grid(c)
    if grid < 0 or (grid and c.hidden_size % 4):
        raise ValueError(f"vision_grid {grid} needs to be >= 0, and > 0 needs hidden_size divisible by 4")


def vision_grid(c: ml_collections.ConfigDict) -> int:
    """The model's ``vision_grid``; 0 for configs saved before the field existed."""
    return int(c.get("vision_grid", 0))


def check_vision_grid(c: ml_collections.ConfigDict, codes: int, source: str = "tokens_per_frame") -> None:
    """A ``vision_grid`` model reads frames of exactly grid x grid codes; ``codes`` per frame come from
    ``source`` (named in the error)."""
    grid = vision_grid(c)
    if grid and grid * grid != codes:
        raise ValueError(
            f"model.vision_grid {grid} lays out {grid * grid} codes per frame; the frames have "
            f"{codes} ({source})"
        )


def from_lapa_config(cfg: dict[str, Any] | str | Path) -> ml_collections.ConfigDict:
    """Builds a model config from LAPA's ``VideoLLaMAConfig`` dict (or its JSON file)."""
    if not isinstance(cfg, dict):
        cfg = json.loads(Path(cfg).read_text())
    cfg = cfg.get("full_config_to_dict", cfg)
    if cfg.get("tie_word_embeddings") or cfg.get("tie_vision_embeddings"):
        raise ValueError("tied embeddings are not supported (LAPA's released models do not tie)")
    c = _base()
    c.text_vocab_size = int(cfg["vocab_size"])
    c.vision_vocab_size = int(cfg["vision_vocab_size"])
    c.latent_vocab_size = int(cfg.get("delta_vocab_size", c.latent_vocab_size))
    c.action_vocab_size = int(cfg.get("action_vocab_size", c.action_vocab_size))
    c.hidden_size = int(cfg["hidden_size"])
    c.intermediate_size = int(cfg["intermediate_size"])
    c.num_layers = int(cfg["num_hidden_layers"])
    c.num_heads = int(cfg["num_attention_heads"])
    c.num_kv_heads = int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    c.rms_norm_eps = float(cfg["rms_norm_eps"])
    c.rope_theta = float(cfg.get("theta", 10000.0))
    c.max_sequence_length = int(cfg["max_sequence_length"])
    c.initializer_range = float(cfg["initializer_range"])
    c.bos_token_id = int(cfg.get("bos_token_id", 1))
    c.eos_token_id = int(cfg.get("eos_token_id", 2))
    c.scan_layers = bool(cfg.get("scan_layers", True))
    return c
