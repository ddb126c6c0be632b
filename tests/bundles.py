"""Policy bundles of a random debug VLA and the recorded LWM VQGAN fixture, for the policy, inference,
server and evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import numpy as np
from conftest import LAPA_VLA_FIXTURE, LWM_VQGAN_FIXTURE
from flax import nnx
from helpers import debug_config

from latent_pretraining.actions.bins import ActionBins
from latent_pretraining.lapa_checkpoint import encode_array, iter_records
from latent_pretraining.model import VLAModel
from latent_pretraining.policy.bundle import Bundle, write_bundle
from latent_pretraining.vqgan.model import get_vqgan_config

VQGAN_FILE = LWM_VQGAN_FIXTURE / "vqgan"  # 64x64 images -> 8x8 codes of 64
BINS_PER_DIM = (4, 7, 12, 32, 5, 9, 2)  # ragged, so that the constraint differs per dimension


def vqgan_config():
    """The config the VQGAN fixture was recorded with."""
    recorded = json.loads((LWM_VQGAN_FIXTURE / "config.json").read_text())["config"]
    cfg = get_vqgan_config("lwm")
    for key in ("resolution", "hidden_channels", "num_res_blocks", "z_channels", "num_embeddings"):
        cfg[key] = recorded[key]
    cfg.quantized_embed_dim = recorded["quantized_embed_dim"]
    cfg.channel_mult = tuple(recorded["channel_mult"])
    return cfg


def model_config():
    return debug_config(vision_vocab_size=8448, action_vocab_size=64)  # room for the frame markers


def write_bins(directory: Path) -> ActionBins:
    """``bins.csv`` with BINS_PER_DIM bins and its ``bins.json`` statistics in ``directory``."""
    edges = [np.linspace(-0.1 * (d + 1), 0.1 * (d + 1), n + 1) for d, n in enumerate(BINS_PER_DIM[:-1])]
    bins = ActionBins([*edges, np.array([-0.5, 0.5, 1.5])])
    bins.to_csv(directory / "bins.csv")
    (directory / "bins.json").write_text(json.dumps({"gripper": {"convention": "01", "threshold": 0.5}}))
    return bins


def write_action_bundle(directory: Path, tokenizer: Path, seed: int = 3) -> tuple[Bundle, VLAModel]:
    """An action bundle of a random debug model at ``directory/policy``, and that model."""
    model = VLAModel(model_config(), rngs=nnx.Rngs(seed))
    write_bins(directory)
    bundle = write_bundle(
        directory / "policy",
        model_config=model_config(),
        params=model,
        tokenizer=tokenizer,
        vqgan=VQGAN_FILE,
        vqgan_config=vqgan_config(),
        image_mode="center_crop",
        tokens_per_frame=64,
        bins_csv=directory / "bins.csv",
        statistics=directory / "bins.json",
        provenance={"run_dir": "runs/x", "step": 7, "metrics": {"eval_action_mae": 0.5}, "dataset": "d"},
    )
    return bundle, model


def write_widened_lapa_fixture(tmp_path: Path) -> None:
    """LAPA's fixture model with its vision table and head grown to 8448 ids (the fixture's 96 leave no
    room for the frame markers 8192/8193); the fixture's own rows come first."""
    rng = np.random.default_rng(0)
    packer = msgpack.Packer(use_bin_type=True)
    with open(tmp_path / "params", "wb") as f:
        for key, array in iter_records(LAPA_VLA_FIXTURE / "params"):
            if key == ("transformer", "vte", "embedding"):
                array = np.concatenate([array, rng.normal(0, 0.02, (8448 - 96, 64)).astype(array.dtype)])
            elif key == ("vision_head", "kernel"):
                array = np.concatenate(
                    [array, rng.normal(0, 0.02, (64, 8448 - 96)).astype(array.dtype)], axis=1
                )
            f.write(packer.pack((list(key), encode_array(array))))
    config = json.loads((LAPA_VLA_FIXTURE / "config.json").read_text())
    config["full_config_to_dict"]["vision_vocab_size"] = 8448
    (tmp_path / "config.json").write_text(json.dumps(config))
