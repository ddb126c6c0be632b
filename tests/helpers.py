"""Small builders shared by the tests."""

from __future__ import annotations

import numpy as np
from flax import nnx

from latent_pretraining.config import get_model_config
from latent_pretraining.model import Modality, VLAModel


def debug_config(**overrides):
    cfg = get_model_config("debug")
    cfg.vision_vocab_size = 96  # keep the debug heads small on CPU
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def debug_model(seed: int = 0, **overrides) -> VLAModel:
    return VLAModel(debug_config(**overrides), rngs=nnx.Rngs(seed))


def mixed_batch(
    batch: int, seed: int = 0, text: int = 6, vision: int = 8, latent: int = 4, action: int = 7, cfg=None
):
    """Rows laid out as [BOS text vision text latent action EOS] with in-range ids per modality."""
    cfg = cfg or debug_config()
    rng = np.random.default_rng(seed)
    spans = [
        (Modality.TEXT, 1 + text, cfg.text_vocab_size),
        (Modality.VISION, vision, cfg.vision_vocab_size),
        (Modality.TEXT, 2, cfg.text_vocab_size),
        (Modality.LATENT, latent, cfg.latent_vocab_size),
        (Modality.ACTION, action, cfg.action_vocab_size),
        (Modality.TEXT, 1, cfg.text_vocab_size),
    ]
    ids, modality = [], []
    for mod, n, vocab in spans:
        ids.append(rng.integers(3, vocab, size=(batch, n)))
        modality.append(np.full((batch, n), int(mod)))
    ids = np.concatenate(ids, axis=1).astype(np.int32)
    ids[:, 0] = cfg.bos_token_id
    ids[:, -1] = cfg.eos_token_id
    return ids, np.concatenate(modality, axis=1).astype(np.int32)


def lapa_modality(fixture, prefix: str) -> np.ndarray:
    """The modality array of a LAPA fixture input, from its ``<prefix>_{vision,delta,action}_masks.npy``."""
    modality = np.zeros(np.load(fixture / f"{prefix}_input_ids.npy").shape, np.int32)
    for lapa_name, mod in (
        ("vision", Modality.VISION),
        ("delta", Modality.LATENT),
        ("action", Modality.ACTION),
    ):
        path = fixture / f"{prefix}_{lapa_name}_masks.npy"
        if path.exists():
            modality = np.where(np.load(path), int(mod), modality)
    return modality
