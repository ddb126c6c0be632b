"""One process of the 2-process test in test_multihost.py (not collected by pytest).

Joins the cluster described by the environment, loads the LAPA fixture onto a mesh
spanning both processes, writes its logits (gathered) and re-exports the checkpoint.
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np
from helpers import lapa_modality
from jax.experimental import multihost_utils

from latent_pretraining.config import from_lapa_config
from latent_pretraining.core.sharding import make_mesh, maybe_initialize_distributed
from latent_pretraining.lapa_checkpoint import load_lapa_params, save_lapa_params
from latent_pretraining.sampler import Sampler


def main(fixture: Path, out: Path) -> None:
    assert maybe_initialize_distributed()
    mesh = make_mesh("1,2,2,1")
    cfg = from_lapa_config(fixture / "config.json")
    cfg.dtype = "float32"
    model = load_lapa_params(fixture / "params", cfg, mesh=mesh)
    ids = np.load(fixture / "batch2_input_ids.npy")
    modality = lapa_modality(fixture, "batch2")
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    ids_g, mod_g = (
        jax.make_array_from_callback(a.shape, sharding, lambda i, a=a: a[i]) for a in (ids, modality)
    )
    with jax.set_mesh(mesh):
        logits = jax.jit(lambda m, i, mo: m(i, mo, heads=("latent", "action")))(model, ids_g, mod_g)
    latent = multihost_utils.process_allgather(logits["latent"], tiled=True)
    spans = len(model.layers.wq[...].sharding.device_set)
    gen = [np.load(fixture / f"gen_{k}.npy") for k in ("input_ids", "attention_mask")]
    tokens = Sampler(model, mesh=mesh).generate(
        gen[0], lapa_modality(fixture, "gen"), gen[1], vocab="action", num_tokens=7
    )
    save_lapa_params(model, out / "params", float_dtype=None)
    result = {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "param_devices": spans,
        "latent_logits": np.asarray(latent).tolist(),
        "tokens": tokens.tolist(),
    }
    (out / f"result_{jax.process_index()}.json").write_text(json.dumps(result))
    multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
