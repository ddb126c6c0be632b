"""VQGAN tokenizer training: ``--config=latent_pretraining/configs/vqgan.py:<preset>``.

Presets: ``small`` (64x64 images -> 8x8 codes of 512, e.g. the tabletop world),
``lwm`` (LWM's 256x256 -> 16x16 codes of 8192) and ``tiny`` (tests). Override any
field, e.g. ``--config.data.source=folder --config.data.path=/data/frames``.
"""

import ml_collections

from latent_pretraining.core.run_config import run_config
from latent_pretraining.vqgan.model import get_vqgan_config


def get_config(preset: str = "small") -> ml_collections.ConfigDict:
    c = run_config(
        run_dir="runs/vqgan",
        batch_size=32,
        total_steps=2000,
        log_every=20,
        eval_every=500,
        save_every=500,
        optimizer=dict(learning_rate=2e-4, b1=0.5, b2=0.9, clip_gradient=0.0),
    )
    c.preset = preset
    c.model = get_vqgan_config(preset)
    c.data = ml_collections.ConfigDict()
    c.data.source = "tabletop"  # tabletop | folder | video | jsonl | rlds (latent_pretraining.episodes)
    c.data.path = ""  # tabletop: the folder `python -m data.make_tabletop --out DIR` wrote
    c.data.limit = 4096  # images to use, the first in episode order (0 = all)
    c.data.holdout = 64  # images kept out of training for evaluation
    c.data.augment = False  # LAPA's training augmentation (random 90% crop, colour jitter)
    c.commitment_cost = 0.25
    c.restart_every = 50  # dead-code restart period (steps); 0 disables
    c.restart_threshold = 0.03  # a code is dead when its usage falls below threshold / num_codes
    c.usage_decay = 0.99
    if preset == "lwm":
        c.data.source = "folder"
        c.batch_size = 16
        c.optimizer.learning_rate = 1e-4
    elif preset == "tiny":
        c.data.limit = 96
        c.data.holdout = 16
        c.batch_size = 8
        c.total_steps = 40
        c.optimizer.warmup_steps = 5
        c.restart_every = 10
        c.log_every = 5
        c.eval_every = 20
        c.save_every = 20
        c.optimizer.learning_rate = 1e-3
    elif preset != "small":
        raise ValueError(f"unknown preset {preset!r}; choose small, lwm or tiny")
    return c
