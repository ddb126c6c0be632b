"""Quantizers of the latent action model, behind one interface.

Every quantizer maps the action vectors ``z`` [B, L, D] (the difference of the two frames'
features) to codes [B, L] and vectors for the decoder:

- ``quantize(z, train, rng) -> (vectors, codes, aux_loss)``: the training forward when
  ``train`` (NSVQ's noise substitution, VQ's straight-through), hard codes otherwise;
- ``lookup(codes) -> vectors``: hard vectors for given codes (inference, "what does code c do");
- ``maintain(z, codes, step, rng) -> metrics``: codebook upkeep after the optimizer step
  (usage counts, EMA updates, dead-code replacement). It runs inside the jitted train step
  on the *global* batch, so every device takes the same decision and codebooks never diverge.

Quantizers:

- ``nsvq``: LAPA's noise-substitution VQ. Training vectors are
  ``z + ||z - c|| / (||r|| + eps) * r`` with ``r ~ N(0, I)`` (LAPA adds eps outside the
  division). Codes whose share of the assignments since the last replacement is below
  ``dead_threshold / K`` are replaced by action vectors of the batch (``replace_from="batch"``,
  the default: the codes move to where the data is, which matters early, when the vectors are far
  smaller than the N(0, 1) codes) or by a used code plus noise of ``replace_noise`` times the
  codebook's RMS (``"codes"``; LAPA adds 1e-12 noise: the copy ties with its source and stays dead),
  on LAPA's schedule (steps 1, 101, ..., 901, then 1001, 1501, ..., 4501) or periodically.
- ``vq_ema``: VQ with an EMA codebook (decay, Laplace smoothing), commitment loss and
  dead-code restarts from the batch's vectors every ``restart_every`` steps.
- ``fsq``: finite scalar quantization over ``levels`` (codebook size = prod(levels)),
  with learned projections in and out; no codebook to maintain.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lam.layers import Linear

NSVQ_EPS = 1e-12


class CodeCounts(nnx.Variable):
    """Assignments per code since the last replacement (a statistic, not a parameter)."""


class Restarts(nnx.Variable):
    """How many codes have been replaced since training began."""


class EMAState(nnx.Variable):
    """The EMA codebook and its statistics (updated by ``maintain``, not by gradients)."""


def nearest(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """Index of the nearest code (``|z|^2 - 2 z.C^T + |C|^2``, LAPA's form) for each vector."""
    zf, cf = z.astype(jnp.float32), codebook.astype(jnp.float32)
    d = (
        jnp.sum(zf**2, axis=-1, keepdims=True)
        - 2.0 * jnp.einsum("...d,kd->...k", zf, cf)
        + jnp.sum(cf**2, axis=-1)
    )
    return jnp.argmin(d, axis=-1).astype(jnp.int32)


def _counts(codes: jax.Array, size: int) -> jax.Array:
    return jnp.bincount(codes.reshape(-1), length=size).astype(jnp.float32)


def lapa_replace_step(step: jax.Array) -> jax.Array:
    """LAPA's NSVQ replacement schedule: every 100 steps below 1000, every 500 below 5000."""
    return (step != 0) & (((step % 100 == 1) & (step < 1000)) | ((step % 500 == 1) & (step < 5000)))


def _batch_vectors(z: jax.Array, count: int, key: jax.Array) -> jax.Array:
    """``count`` action vectors drawn from the (global) batch, as restart candidates."""
    flat = jax.lax.stop_gradient(z).reshape(-1, z.shape[-1]).astype(jnp.float32)
    return flat[jax.random.randint(key, (count,), 0, flat.shape[0])]


class _Codebook(nnx.Module):
    """What the codebook quantizers share: hard codes by nearest neighbour, and lookup."""

    codebook: nnx.Variable

    def lookup(self, codes: jax.Array) -> jax.Array:
        return jnp.take(self.codebook[...], codes, axis=0)

    def _hard(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        codes = nearest(jax.lax.stop_gradient(z), self.codebook[...])
        return codes, self.lookup(codes).astype(z.dtype)


class NSVQ(_Codebook):
    def __init__(self, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.size, self.dim = cfg.codebook_size, cfg.quant_dim
        q = cfg.quantizer_options
        self.dead_threshold, self.replace_noise = q.dead_threshold, q.replace_noise
        self.replace_from = q.replace_from
        if self.replace_from not in ("codes", "batch"):
            raise ValueError(f"replace_from must be 'codes' or 'batch', got {self.replace_from!r}")
        self.schedule, self.replace_every, self.replace_until = q.schedule, q.replace_every, q.replace_until
        self.codebook = nnx.Param(
            q.init_scale * jax.random.normal(rngs.params(), (self.size, self.dim), param_dtype),
            logical_axes=(None, None),
        )
        self.counts = CodeCounts(jnp.zeros((self.size,), jnp.float32))
        self.restarts_total = Restarts(jnp.zeros((), jnp.int32))

    def quantize(self, z: jax.Array, train: bool, rng: jax.Array | None = None):
        codes, hard = self._hard(z)
        if not train:
            return hard, codes, jnp.zeros((), jnp.float32)
        noise = jax.random.normal(rng, z.shape, z.dtype)
        residual = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(z - hard), axis=-1, keepdims=True), 1e-24))
        noise_norm = jnp.sqrt(jnp.sum(jnp.square(noise), axis=-1, keepdims=True))
        return z + residual / (noise_norm + NSVQ_EPS) * noise, codes, jnp.zeros((), jnp.float32)

    def _due(self, step: jax.Array) -> jax.Array:
        if self.schedule == "lapa":
            return lapa_replace_step(step)
        if not self.replace_every:
            return jnp.zeros((), bool)
        due = (step % self.replace_every == 0) & (step > 0)
        return due & (step <= self.replace_until) if self.replace_until else due

    def maintain(
        self, z: jax.Array, codes: jax.Array, step: jax.Array, rng: jax.Array
    ) -> dict[str, jax.Array]:
        counts = self.counts[...] + _counts(codes, self.size)
        share = counts / jnp.maximum(counts.sum(), 1.0)
        dead = share < self.dead_threshold / self.size
        due = self._due(step)
        replace = dead & due
        codebook = self.codebook[...]
        if self.replace_from == "batch":  # vectors of this (global) batch: codes where the data is
            fresh = _batch_vectors(z, self.size, rng)
        else:  # LAPA: copies of used codes (plus noise: an exact copy ties with its source forever)
            pick, noise = jax.random.split(rng)
            used = (~dead).astype(jnp.float32)
            sources = jax.random.choice(pick, self.size, (self.size,), p=used / jnp.maximum(used.sum(), 1.0))
            rms = jnp.sqrt(
                jnp.sum(used[:, None] * jnp.square(codebook)) / jnp.maximum(used.sum() * self.dim, 1.0)
            )
            fresh = codebook[sources] + self.replace_noise * rms * jax.random.normal(noise, codebook.shape)
        self.codebook[...] = jnp.where(replace[:, None], fresh.astype(codebook.dtype), codebook)
        self.counts[...] = jnp.where(due, jnp.zeros_like(counts), counts)
        self.restarts_total[...] += jnp.sum(replace).astype(jnp.int32)
        return {"dead_codes": jnp.sum(dead), "restarts": jnp.sum(replace)}


class VQEMA(_Codebook):
    def __init__(self, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.size, self.dim = cfg.codebook_size, cfg.quant_dim
        q = cfg.quantizer_options
        self.decay, self.commitment = q.ema_decay, q.commitment_cost
        self.dead_threshold, self.restart_every = q.dead_threshold, q.restart_every
        init = q.init_scale * jax.random.normal(rngs.params(), (self.size, self.dim), jnp.float32)
        self.codebook = EMAState(init)
        self.ema_count = EMAState(jnp.ones((self.size,), jnp.float32))
        self.ema_sum = EMAState(init)
        self.restarts_total = Restarts(jnp.zeros((), jnp.int32))

    def quantize(self, z: jax.Array, train: bool, rng: jax.Array | None = None):
        codes, hard = self._hard(z)
        if not train:
            return hard, codes, jnp.zeros((), jnp.float32)
        commit = jnp.mean(jnp.square(z.astype(jnp.float32) - jax.lax.stop_gradient(hard).astype(jnp.float32)))
        return z + jax.lax.stop_gradient(hard - z), codes, self.commitment * commit

    def maintain(
        self, z: jax.Array, codes: jax.Array, step: jax.Array, rng: jax.Array
    ) -> dict[str, jax.Array]:
        flat = jax.lax.stop_gradient(z).reshape(-1, self.dim).astype(jnp.float32)
        onehot = jax.nn.one_hot(codes.reshape(-1), self.size, dtype=jnp.float32)
        n = flat.shape[0]
        count = self.decay * self.ema_count[...] + (1 - self.decay) * onehot.sum(0)
        total = self.decay * self.ema_sum[...] + (1 - self.decay) * onehot.T @ flat
        smoothed = (count + 1e-5) / (count.sum() + self.size * 1e-5) * count.sum()
        codebook = total / smoothed[:, None]
        dead = count < self.dead_threshold * n / self.size
        restart = dead & (step % self.restart_every == 0) if self.restart_every else jnp.zeros_like(dead)
        fresh = _batch_vectors(z, self.size, rng)
        expected = n / self.size
        self.codebook[...] = jnp.where(restart[:, None], fresh, codebook)
        self.ema_count[...] = jnp.where(restart, expected, count)
        self.ema_sum[...] = jnp.where(restart[:, None], fresh * expected, total)
        self.restarts_total[...] += jnp.sum(restart).astype(jnp.int32)
        return {"dead_codes": jnp.sum(dead), "restarts": jnp.sum(restart)}


class FSQ(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs, param_dtype=jnp.float32):
        levels = tuple(int(v) for v in cfg.quantizer_options.levels)
        if int(np.prod(levels)) != cfg.codebook_size:
            raise ValueError(
                f"FSQ levels {levels} give {int(np.prod(levels))} codes, codebook_size is {cfg.codebook_size}"
            )
        self.levels = levels
        self.size, self.dim = cfg.codebook_size, cfg.quant_dim
        self.proj_in = Linear(cfg.quant_dim, len(levels), rngs, param_dtype=param_dtype)
        self.proj_out = Linear(len(levels), cfg.quant_dim, rngs, param_dtype=param_dtype)
        self.restarts_total = Restarts(jnp.zeros((), jnp.int32))  # FSQ has no codebook to restart

    def _bound(self, x: jax.Array) -> jax.Array:
        """Each channel squashed into (-L/2, L/2) (shifted by 1/2 for even L) before rounding."""
        levels = jnp.asarray(self.levels, jnp.float32)
        half = (levels - 1) * (1 + 1e-3) / 2
        offset = jnp.where(levels % 2 == 0, 0.5, 0.0)
        return jnp.tanh(x + jnp.arctanh(offset / half)) * half - offset

    def _steps(self) -> jax.Array:
        """Integer steps per level around 0 (L // 2): rounded values / steps lie in [-1, 1]."""
        return jnp.asarray([lv // 2 for lv in self.levels], jnp.float32)

    def _basis(self) -> jax.Array:
        return jnp.asarray(np.cumprod((1, *self.levels[:-1])), jnp.int32)

    def lookup(self, codes: jax.Array) -> jax.Array:
        digits = (codes[..., None] // self._basis()) % jnp.asarray(self.levels, jnp.int32)
        steps = self._steps()
        return self.proj_out((digits.astype(jnp.float32) - steps) / steps)

    def quantize(self, z: jax.Array, train: bool, rng: jax.Array | None = None):
        bounded = self._bound(self.proj_in(z).astype(jnp.float32))
        rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)  # straight-through
        steps = self._steps()
        digits = jnp.round(jax.lax.stop_gradient(bounded)).astype(jnp.int32) + steps.astype(jnp.int32)
        codes = jnp.sum(digits * self._basis(), axis=-1).astype(jnp.int32)
        return self.proj_out((rounded / steps).astype(z.dtype)), codes, jnp.zeros((), jnp.float32)

    def maintain(
        self, z: jax.Array, codes: jax.Array, step: jax.Array, rng: jax.Array
    ) -> dict[str, jax.Array]:
        zero = jnp.zeros((), jnp.int32)
        return {"dead_codes": zero, "restarts": zero}


QUANTIZERS = {"nsvq": NSVQ, "vq_ema": VQEMA, "fsq": FSQ}


def make_quantizer(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs, param_dtype=jnp.float32):
    if cfg.quantizer not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {cfg.quantizer!r}; choose one of {sorted(QUANTIZERS)}")
    return QUANTIZERS[cfg.quantizer](cfg, rngs, param_dtype)
