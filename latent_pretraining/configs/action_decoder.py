"""Latent-to-action decoder training: ``--config=latent_pretraining/configs/action_decoder.py``."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
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
    c.batch_size = 256
    c.total_steps = 2000
    c.learning_rate = 1e-3
    c.weight_decay = 1e-4
    c.log_every = 50
    c.eval_every = 500
    c.save_every = 1000
    c.run_dir = "runs/action_decoder"
    c.mesh = "-1,1,1,1"
    c.seed = 0
    return c
