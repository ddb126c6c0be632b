"""Data-parallel inference over this host's devices: one compiled program, fixed-size batches."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.core.state import batch_sharding


class LocalBatchApply:
    """``fn(model, inputs)`` on batches of ``batch_size`` rows (rounded up to a multiple of the
    local device count) split over the local devices; a shorter batch is padded, and only its
    rows come back. Each host runs its own rows (multi-host jobs shard the inputs)."""

    def __init__(self, model: nnx.Module, fn: Callable[[nnx.Module, jax.Array], jax.Array], batch_size: int):
        devices = jax.local_devices()
        self.mesh = make_mesh(f"{len(devices)},1,1,1", devices=devices)
        self.batch_size = -(-batch_size // len(devices)) * len(devices)
        graphdef, self.state = nnx.split(model)
        self._apply = jax.jit(lambda state, x: fn(nnx.merge(graphdef, state), x))

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        n = len(inputs)
        if n > self.batch_size:
            raise ValueError(f"{n} rows do not fit a batch of {self.batch_size}")
        padded = np.zeros((self.batch_size, *inputs.shape[1:]), np.float32)
        padded[:n] = inputs
        with jax.set_mesh(self.mesh):
            x = jax.device_put(padded, batch_sharding(self.mesh, padded.ndim, padded.shape))
            return np.asarray(jax.device_get(self._apply(self.state, x)))[:n]
