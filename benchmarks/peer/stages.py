"""The stages the peer harness times and the configuration each side runs them at.

Plain Python only: ``lapa_side.py`` imports this module inside LAPA's virtualenv and
``ours_side.py`` / ``compare.py`` inside ours, so both sides read the same numbers.
"""

from __future__ import annotations

import copy
import json

# VLA model sizes, in our config's field names (lapa_side.py maps them onto VideoLLaMAConfig)
VLA_24M = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_layers": 4,
    "num_heads": 4,
    "text_vocab_size": 32000,
    "vision_vocab_size": 8448,
    "latent_vocab_size": 8,
    "action_vocab_size": 256,
    "max_sequence_length": 2048,  # LAPA's finetune jobs; sizes the RoPE table (and LAPA's causal mask)
    "rope_theta": 50_000_000.0,
    "rms_norm_eps": 1e-6,
    "initializer_range": 0.02,
    "dtype": "float32",
    "remat": False,  # True: LAPA remat_block='nothing_saveable', ours remat_policy='full'
}
VLA_67M = {**VLA_24M, "hidden_size": 512, "intermediate_size": 1376, "num_layers": 8, "num_heads": 8}
# generation at the value of LAPA's deploy.py / inference.py (update_llama_config max_sequence_length=32768);
# its samplers also build the model at input_shape (512, 8192), which needs at least 8192
VLA_24M_DEPLOY = {**VLA_24M, "max_sequence_length": 32768}

# LAPA's finetune optimizer (scripts/finetune_*.sh): AdamW, constant 2e-5, no warmup, no weight
# decay, b1 0.9, b2 0.95 and global-norm clipping at 1.0 (tux's AdamW defaults)
VLA_OPTIMIZER = {"lr": 2e-5, "b1": 0.9, "b2": 0.95, "weight_decay": 0.0, "clip_gradient": 1.0}

# LAPA's LAQ (laq/laq_model) at 64 px: LatentActionQuantization arguments, and LAQTrainer's optimizer
# (wd=0 -> torch Adam, lr 1e-4, betas 0.9/0.99, eps 1e-8, max_grad_norm 0.5)
LAQ_64 = {
    "dim": 256,
    "quant_dim": 32,
    "codebook_size": 8,
    "image_size": 64,
    "patch_size": 8,
    "spatial_depth": 4,
    "temporal_depth": 4,
    "heads": 8,
    "dim_head": 32,
    "code_seq_len": 4,
}
LAQ_OPTIMIZER = {"lr": 1e-4, "b1": 0.9, "b2": 0.99, "eps": 1e-8, "clip_gradient": 0.5}

# kind: which function of the side scripts runs it; ours: our variants (one process each), each a
# row of the table against LAPA's one measurement of the stage
STAGES: dict[str, dict] = {
    "vla_24m": {
        "kind": "vla_train",
        "config": {"model": VLA_24M, "optimizer": VLA_OPTIMIZER, "batch": 4, "seq_len": 384},
        "ours": ["finetune", "finetune_unrolled", "lapa_work"],
    },
    "vla_67m": {
        "kind": "vla_train",
        "config": {"model": VLA_67M, "optimizer": VLA_OPTIMIZER, "batch": 4, "seq_len": 384},
        "ours": ["finetune"],
    },
    "gen_latent": {
        "kind": "generate",
        "config": {
            "model": VLA_24M_DEPLOY,
            "batch": 1,
            "prompt_len": 303,
            "vocab": "latent",
            "new_tokens": 4,
        },
        "ours": ["default"],
    },
    "gen_action": {
        "kind": "generate",
        "config": {
            "model": VLA_24M_DEPLOY,
            "batch": 1,
            "prompt_len": 303,
            "vocab": "action",
            "new_tokens": 7,
        },
        "ours": ["default"],
    },
    "lam": {
        "kind": "lam_train",
        "config": {"model": LAQ_64, "optimizer": LAQ_OPTIMIZER, "batch": 8},
        "ours": ["default", "cached"],
    },
    "preprocess": {
        "kind": "preprocess",
        "config": {"rows": 100_000, "bins": 256},
        "ours": ["default"],
    },
}

# timed repetitions per process after the warm-up ones (steps, generate calls, whole preprocess runs)
TIMING = {
    "full": {"warmup": 1, "repeats": 5, "processes": 2},
    "quick": {"warmup": 1, "repeats": 2, "processes": 1},
}
QUICK_ROWS = 10_000  # preprocess rows in --quick

# what the table's rows are: (label, stage, our variant, field of each side's record)
ROWS = [
    ("VLA finetune step, 24M, batch 4 x 384, f32", "vla_24m", "finetune", "median_s"),
    ("  same step, our layers unrolled (LAPA's jobs scan)", "vla_24m", "finetune_unrolled", "median_s"),
    ("  same step doing LAPA's work (4 heads fwd, action-loss grad)", "vla_24m", "lapa_work", "median_s"),
    ("VLA finetune step, 67M, batch 4 x 384, f32", "vla_67m", "finetune", "median_s"),
    ("generation, batch 1, 303-token prompt + 4 latent", "gen_latent", "default", "median_s"),
    ("generation, batch 1, 303-token prompt + 7 action", "gen_action", "default", "median_s"),
    ("LAM train step, LAPA's LAQ at 64 px, batch 8", "lam", "default", "median_s"),
    ("LAM first step (LAPA eager; ours compile + step)", "lam", "default", "first_s"),
    ("  rerun: ours with the compiled step in the disk cache", "lam", "cached", "first_s"),
    ("finetune_preprocess, whole process", "preprocess", "default", "median_s"),
]


def stage_config(stage: str, quick: bool = False) -> dict:
    """A deep copy of the stage's config, with the --quick row count for preprocess."""
    config = copy.deepcopy(STAGES[stage]["config"])
    if quick and STAGES[stage]["kind"] == "preprocess":
        config["rows"] = QUICK_ROWS
    return config


def count_lines(path: str) -> int:
    with open(path) as f:
        return sum(1 for _ in f)


def record(side: str, stage: str, times: list[float], config: dict, **extra) -> str:
    """One JSON line of the shared schema (median of ``times``)."""
    ordered = sorted(times)
    n = len(ordered)
    median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2 if n else None
    return json.dumps(
        {"side": side, "stage": stage, "median_s": median, "times_s": times, "config": config, **extra}
    )


# per-position vocabulary, as our Modality enum numbers them
TEXT, VISION, LATENT, ACTION = 0, 1, 2, 3
# a training row's layout (bench_vla.py's): text, 256 vision tokens + end of frame, text, 4 latent, 7 action,
# repeated (packing-like) up to the row length
ROW_LAYOUT = [(TEXT, 16), (VISION, 257), (TEXT, 4), (LATENT, 4), (ACTION, 7)]
VOCAB_FIELDS = ("text_vocab_size", "vision_vocab_size", "latent_vocab_size", "action_vocab_size")


def train_rows(model: dict, batch: int, length: int, seed: int = 0):
    """int32 ids and modality [batch, length]: each id lies in its own modality's vocabulary; BOS first."""
    import numpy as np

    modality = np.concatenate([np.full(n, m) for m, n in ROW_LAYOUT])
    modality = np.resize(modality, length)
    vocab = np.array([model[f] for f in VOCAB_FIELDS])
    ids = (np.random.default_rng(seed).random((batch, length)) * vocab[modality][None]).astype(np.int32)
    ids[:, 0] = 1
    return ids, np.broadcast_to(modality, (batch, length)).astype(np.int32).copy()


def prompt_rows(model: dict, batch: int, prompt_len: int, seed: int = 1):
    """A generation prompt laid out as LAPA's samplers build it: text, 256 vision tokens + end of
    vision (vision vocabulary), then a few text tokens ("</vision> <action>"); no padding."""
    import numpy as np

    tail = 4
    head = prompt_len - 257 - tail
    if head < 1:
        raise ValueError(f"prompt_len must be at least {257 + tail + 1}")
    modality = np.array([TEXT] * head + [VISION] * 257 + [TEXT] * tail, np.int32)
    rng = np.random.default_rng(seed)
    ids = np.where(
        modality == VISION,
        rng.integers(0, 8192, (batch, prompt_len)),
        rng.integers(3, model["text_vocab_size"], (batch, prompt_len)),
    ).astype(np.int32)
    ids[:, head + 256] = 8193  # LAPA's end-of-vision id, looked up in the vision table
    ids[:, 0] = 1
    return ids, np.broadcast_to(modality, (batch, prompt_len)).copy()
