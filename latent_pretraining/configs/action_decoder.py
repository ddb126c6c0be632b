"""Latent-to-action decoder training: ``--config=latent_pretraining/configs/action_decoder.py``."""

import ml_collections

from latent_pretraining.core.run_config import run_config


def get_config() -> ml_collections.ConfigDict:
    c = run_config(
        run_dir="runs/action_decoder",
        batch_size=256,
        total_steps=2000,
        eval_every=500,
        optimizer=dict(
            learning_rate=1e-3, warmup_steps=50, b2=0.999, weight_decay=1e-4, decay="all", clip_gradient=0.0
        ),
    )
    c.async_checkpoints = False
    c.model = ml_collections.ConfigDict()
    c.model.num_codes = 4  # LAPA: 4 latent codes ...
    c.model.codebook_size = 8  # ... from a codebook of 8
    c.model.embed_dim = 32
    c.model.state_dim = 0  # >0: rows carry a proprioceptive "state" of this many floats
    c.model.hidden_dim = 256
    c.model.num_layers = 3
    c.data = ml_collections.ConfigDict()
    c.data.train = ""  # JSONL rows with "delta" and "raw_actions" (and "state")
    c.data.eval = ""
    return c
