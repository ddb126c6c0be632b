"""VLA run configs: ``--config=latent_pretraining/configs/vla.py:<preset>``.

Presets name the model size (``debug``, ``1b``, ``7b``); any field is overridden
on the command line, e.g. ``--config.model.remat_policy=full --config.mesh=1,-1,1,1``.
"""

import ml_collections

from latent_pretraining.config import get_model_config


def get_config(preset: str = "debug") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.model = get_model_config(preset)
    c.mesh = "1,-1,1,1"  # dp,fsdp,tp,sp; one entry may be -1; LAPA's "!-1,8,1,1" works too
    c.seed = 0
    return c
