"""Fixed-length generation from one vocabulary with a preallocated KV cache.

The prompt is prefilled once; then exactly ``num_tokens`` tokens of one
vocabulary (latent or action) are decoded inside one jitted loop. There is no
EOS test: LAPA's EOS id 2 is also latent code 2, and stopping on it corrupted
its latent actions. Prompts are left-padded to a length bucket so that a new
prompt length reuses a compiled program.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from latent_pretraining.core.sharding import logical_to_spec
from latent_pretraining.model import VOCABS, KVCache, Modality, VLAModel

# 32, 64, 128, 192, then one bucket per 64 tokens up to 1024: a LAPA prompt (256 vision tokens and an
# instruction, about 300) pads to 320, where a bucket at 384 made prefill do a quarter more work
DEFAULT_BUCKETS: tuple[int, ...] = (32, 64, 128, 192, *range(256, 1025, 64), 1536, 2048, 3072, 4096)


def bucket_length(length: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """Smallest bucket >= length (multiples of 1024 beyond the last bucket)."""
    i = bisect.bisect_left(buckets, length)
    if i < len(buckets):
        return buckets[i]
    return -(-length // 1024) * 1024


def left_pad(
    prompts: Sequence[tuple[np.ndarray, np.ndarray]], length: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-pads ``(input_ids, modality)`` prompts to one length.

    Returns ``input_ids``, ``modality`` and ``attention_mask`` (1 = token, 0 = pad).
    """
    longest = max(len(ids) for ids, _ in prompts)
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"pad length {length} is shorter than the longest prompt ({longest})")
    ids = np.zeros((len(prompts), length), np.int32)
    modality = np.zeros((len(prompts), length), np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for row, (p_ids, p_mod) in enumerate(prompts):
        if len(p_ids) != len(p_mod) or len(p_ids) == 0:
            raise ValueError(f"prompt {row}: {len(p_ids)} ids but {len(p_mod)} modality entries")
        n = len(p_ids)
        ids[row, length - n :] = p_ids
        modality[row, length - n :] = p_mod
        mask[row, length - n :] = 1
    return ids, modality, mask


def median_ids(logits: jax.Array, allowed: jax.Array | None = None) -> jax.Array:
    """int32 ids [...] from logits [..., V]: the first (allowed) id whose cumulative probability
    reaches one half. For ordered bins (action ids) it is the id of least expected absolute error."""
    if allowed is not None:
        logits = jnp.where(allowed, logits, -jnp.inf)
    cdf = jnp.cumsum(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
    return jnp.argmax(cdf >= 0.5, axis=-1).astype(jnp.int32)


def _pick(
    logits: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    allowed: jax.Array | None,
    mode: str,
    top_k: int,
) -> jax.Array:
    """Chooses one token per row from float32 logits [B, V]: ``greedy`` (argmax), ``median`` or ``sample``."""
    if allowed is not None:
        logits = jnp.where(allowed[None, :], logits, -jnp.inf)
    if mode == "greedy":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if mode == "median":
        return median_ids(logits)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _generate(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    input_ids: jax.Array,
    modality: jax.Array,
    attention_mask: jax.Array,
    rng: jax.Array,
    temperature: jax.Array,
    allowed: jax.Array | None,
    *,
    vocab: str,
    num_tokens: int,
    mode: str,
    top_k: int,
) -> jax.Array:
    model: VLAModel = nnx.merge(graphdef, state)
    b, length = input_ids.shape
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0).astype(jnp.int32)
    hidden, ks, vs = model.hidden_states(input_ids, modality, positions, attention_mask)
    logits = model.logits(hidden[:, -1:], vocab)[:, 0]

    pad = [(0, 0), (0, 0), (0, num_tokens), (0, 0), (0, 0)]
    cache = KVCache(
        k=jnp.pad(ks, pad),
        v=jnp.pad(vs, pad),
        segment=jnp.pad(attention_mask.astype(jnp.int32), [(0, 0), (0, num_tokens)]),
    )
    key, rng = jax.random.split(rng)
    first = _pick(logits, key, temperature, None if allowed is None else allowed[0], mode, top_k)
    tokens = jnp.zeros((b, num_tokens), jnp.int32).at[:, 0].set(first)
    next_position = positions[:, -1:] + 1
    token_modality = Modality[vocab.upper()]

    def step(i, carry):
        tokens, cache, rng = carry
        token = jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1)
        hidden, cache = model.decode_step(token, token_modality, next_position + i, cache, length + i)
        logits = model.logits(hidden, vocab)[:, 0]
        key, rng = jax.random.split(rng)
        step_allowed = None if allowed is None else allowed[i + 1]
        new = _pick(logits, key, temperature, step_allowed, mode, top_k)
        return tokens.at[:, i + 1].set(new), cache, rng

    tokens, _, _ = jax.lax.fori_loop(0, num_tokens - 1, step, (tokens, cache, rng))
    return tokens


class Sampler:
    """Generates exactly N tokens of one vocabulary for a batch of prompts."""

    def __init__(self, model: VLAModel, mesh: Mesh | None = None, buckets: Sequence[int] = DEFAULT_BUCKETS):
        self.graphdef, self.state = nnx.split(model)
        self.config = model.config
        self.mesh = mesh
        self.buckets = tuple(sorted(buckets))
        self._traces = 0

        def traced(*args, **kwargs):
            self._traces += 1  # runs only when jax traces (and so compiles) a new variant
            return _generate(self.graphdef, *args, **kwargs)

        # tokens come back replicated, so every host can read them on a multi-host mesh
        out = None if mesh is None else NamedSharding(mesh, PartitionSpec())
        self._jitted = jax.jit(
            traced, static_argnames=("vocab", "num_tokens", "mode", "top_k"), out_shardings=out
        )

    def vocab_size(self, vocab: str) -> int:
        return int(self.config[f"{vocab}_vocab_size"])

    def compiled_variants(self) -> int:
        """Number of programs traced and compiled so far (one per bucket/batch/mode)."""
        return self._traces

    def generate(
        self,
        input_ids: np.ndarray,
        modality: np.ndarray,
        attention_mask: np.ndarray | None = None,
        *,
        vocab: str,
        num_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        rng: jax.Array | None = None,
        allowed_tokens: np.ndarray | None = None,
        median: bool = False,
    ) -> np.ndarray:
        """Returns int32 [B, num_tokens] ids of ``vocab`` for left-padded prompts.

        ``temperature == 0`` is greedy; otherwise tokens are sampled at that
        temperature from the ``top_k`` best (0 = all). ``allowed_tokens``
        ([num_tokens, V] bool) constrains each step to valid ids. ``median`` takes
        each step's median id instead of its most likely one: for action ids, which
        are ordered bins, the choice with the least expected absolute error.
        """
        if vocab not in VOCABS or vocab == "text":
            raise ValueError(f"vocab must be one of 'vision', 'latent', 'action', got {vocab!r}")
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if median and (vocab != "action" or temperature > 0):
            raise ValueError(
                "median decoding is for action ids (ordered bins) at temperature 0; "
                f"got vocab {vocab!r}, temperature {temperature}"
            )
        input_ids = np.asarray(input_ids, np.int32)
        modality = np.asarray(modality, np.int32)
        if attention_mask is None:
            attention_mask = np.ones_like(input_ids)
        attention_mask = np.asarray(attention_mask, np.int32)
        if (
            input_ids.ndim != 2
            or modality.shape != input_ids.shape
            or attention_mask.shape != input_ids.shape
        ):
            raise ValueError(
                f"input_ids, modality and attention_mask must share one [batch, length] shape; got "
                f"{input_ids.shape}, {modality.shape}, {attention_mask.shape}"
            )
        size = self.vocab_size(vocab)
        if allowed_tokens is not None:
            allowed_tokens = np.asarray(allowed_tokens, bool)
            if allowed_tokens.shape != (num_tokens, size):
                raise ValueError(f"allowed_tokens must be [{num_tokens}, {size}], got {allowed_tokens.shape}")
            if not allowed_tokens.any(axis=1).all():
                raise ValueError("allowed_tokens allows no token at some step")
        self._check_prompts(input_ids, modality, attention_mask, num_tokens)
        if temperature > 0 and rng is None:
            raise ValueError("sampling (temperature > 0) needs an explicit rng key")
        length = input_ids.shape[1]
        bucket = bucket_length(length, self.buckets)
        if bucket > length:
            extra = [(0, 0), (bucket - length, 0)]
            input_ids, modality, attention_mask = (
                np.pad(a, extra) for a in (input_ids, modality, attention_mask)
            )
        rng = jax.random.PRNGKey(0) if rng is None else rng  # unused when greedy
        args = [input_ids, modality, attention_mask]
        if self.mesh is not None:
            spec = logical_to_spec(("activation_batch", None), input_ids.shape, self.mesh)
            args = [jax.device_put(a, NamedSharding(self.mesh, spec)) for a in args]
        with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
            tokens = self._jitted(
                self.state,
                *args,
                rng,
                jnp.float32(max(temperature, 1e-6)),
                None if allowed_tokens is None else jnp.asarray(allowed_tokens),
                vocab=vocab,
                num_tokens=num_tokens,
                mode="median" if median else "greedy" if temperature == 0.0 else "sample",
                top_k=int(top_k),
            )
        return np.asarray(tokens)

    def _check_prompts(
        self, input_ids: np.ndarray, modality: np.ndarray, attention_mask: np.ndarray, num_tokens: int
    ) -> None:
        """Rejects what would otherwise produce made-up tokens: ids outside their
        vocabulary, right padding, and prompts longer than the model's context."""
        if not np.isin(attention_mask, (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        bad_rows = np.flatnonzero((np.diff(attention_mask, axis=1) < 0).any(axis=1))
        if bad_rows.size:
            raise ValueError(f"row {bad_rows[0]}: padding must be on the left (mask 0...0 1...1)")
        empty = np.flatnonzero(attention_mask.sum(axis=1) == 0)
        if empty.size:
            raise ValueError(f"row {empty[0]}: the prompt has no tokens")
        real = attention_mask == 1
        for m, name in enumerate(VOCABS):
            selected = real & (modality == m)
            bad = selected & ((input_ids < 0) | (input_ids >= self.vocab_size(name)))
            if bad.any():
                row, col = (int(i[0]) for i in np.nonzero(bad))
                raise ValueError(
                    f"row {row}, position {col}: {name} id {int(input_ids[row, col])} is outside "
                    f"[0, {self.vocab_size(name)})"
                )
        unknown = real & ((modality < 0) | (modality >= len(VOCABS)))
        if unknown.any():
            row, col = (int(i[0]) for i in np.nonzero(unknown))
            raise ValueError(f"row {row}, position {col}: modality {int(modality[row, col])} is not 0-3")
        longest = int(attention_mask.sum(axis=1).max())
        if longest + num_tokens > self.config.max_sequence_length:
            raise ValueError(
                f"prompt of {longest} tokens + {num_tokens} new tokens exceeds max_sequence_length "
                f"{self.config.max_sequence_length}"
            )

    def generate_batch(self, prompts: Sequence[tuple[np.ndarray, np.ndarray]], **kwargs) -> np.ndarray:
        """``generate`` for a list of ``(input_ids, modality)`` prompts of any lengths."""
        return self.generate(*left_pad(prompts), **kwargs)
