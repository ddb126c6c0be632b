"""LWM/LAPA-style multimodal LLaMA in Flax NNX.

Four vocabularies (text, vision, latent, action) each own an embedding table and
an output head. A per-position ``modality`` array (``Modality`` values) picks the
table that embeds each input token; callers name the heads they want scored.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from latent_pretraining.attention import dot_product_attention, rope
from latent_pretraining.config import validate, vision_grid
from latent_pretraining.core.sharding import with_logical_constraint


class Modality(enum.IntEnum):
    """Per-position vocabulary selector."""

    TEXT = 0
    VISION = 1
    LATENT = 2
    ACTION = 3


VOCABS: tuple[str, ...] = ("text", "vision", "latent", "action")
# LWM's vision vocabulary: image codes below END_OF_FRAME, which ends a frame inside a multi-frame
# span; END_OF_VISION ends the span
END_OF_FRAME = 8192
END_OF_VISION = 8193

BATCH_LENGTH_EMBED = ("activation_batch", "activation_length", "activation_embed")


class AttentionInputs(NamedTuple):
    """Where each query sits and what it may see (see ``attention.py``)."""

    positions: jax.Array  # [B, T] rotary positions
    q_segment: jax.Array  # [B, T] segment ids, 0 = padding
    q_slot: jax.Array  # [B, T] slot index in the key sequence
    kv_segment: jax.Array  # [B, S]
    kv_slot: jax.Array  # [S]


class KVCache(NamedTuple):
    """Preallocated keys/values of every layer plus the segment of each slot."""

    k: jax.Array  # [layers, B, S, K, D]
    v: jax.Array  # [layers, B, S, K, D]
    segment: jax.Array  # [B, S], 0 = empty or padding


def _param(
    rngs: nnx.Rngs,
    init: jax.nn.initializers.Initializer,
    shape: tuple[int, ...],
    axes: tuple[str, ...],
    dtype: jnp.dtype,
    stack: int,
) -> nnx.Param:
    """A parameter with logical axes; ``stack > 0`` adds a leading layer axis."""
    key = rngs.params()
    if stack:
        value = jax.vmap(lambda k: init(k, shape, dtype))(jax.random.split(key, stack))
        axes = ("layers", *axes)
    else:
        value = init(key, shape, dtype)
    return nnx.Param(value, logical_axes=axes)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in float32, returned in ``x``'s dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return normed.astype(x.dtype) * scale.astype(x.dtype)


def _dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jnp.einsum("...d,df->...f", x, kernel.astype(x.dtype))


class DecoderBlock(nnx.Module):
    """Pre-norm LLaMA block: attention (optional GQA) and a SwiGLU MLP, no biases."""

    def __init__(self, cfg: ml_collections.FrozenConfigDict, *, rngs: nnx.Rngs, stack: int = 0):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = d // cfg.num_heads
        self.eps = cfg.rms_norm_eps
        self.theta = cfg.rope_theta
        self.backend = cfg.attention_backend
        pdt = jnp.dtype(cfg.param_dtype)
        dense = jax.nn.initializers.normal(cfg.initializer_range)
        ones = jax.nn.initializers.ones
        kv = self.num_kv_heads * self.head_dim
        self.attn_norm = _param(rngs, ones, (d,), ("norm",), pdt, stack)
        self.wq = _param(rngs, dense, (d, d), ("embed", "q_heads"), pdt, stack)
        self.wk = _param(rngs, dense, (d, kv), ("embed", "kv_heads"), pdt, stack)
        self.wv = _param(rngs, dense, (d, kv), ("embed", "kv_heads"), pdt, stack)
        self.wo = _param(rngs, dense, (d, d), ("q_heads", "embed"), pdt, stack)
        self.mlp_norm = _param(rngs, ones, (d,), ("norm",), pdt, stack)
        self.w_gate = _param(rngs, dense, (d, f), ("embed", "mlp"), pdt, stack)
        self.w_up = _param(rngs, dense, (d, f), ("embed", "mlp"), pdt, stack)
        self.w_down = _param(rngs, dense, (f, d), ("mlp", "embed"), pdt, stack)

    def __call__(
        self,
        x: jax.Array,
        attn: AttentionInputs,
        cache: tuple[jax.Array, jax.Array] | None = None,
        layer: jax.Array | int = 0,
        cache_slot: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Returns the block output and keys/values.

        Without ``cache`` these are this call's keys and values [B, T, K, D]. With
        ``cache`` (every layer's [L, B, S, K, D] keys and values) the new ones are
        written at (``layer``, ``cache_slot``), attention runs over this layer's
        cache, and the updated caches are returned.
        """
        b, t, _ = x.shape
        h = rms_norm(x, self.attn_norm[...], self.eps)
        q = _dense(h, self.wq[...]).reshape(b, t, self.num_heads, self.head_dim)
        k = _dense(h, self.wk[...]).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = _dense(h, self.wv[...]).reshape(b, t, self.num_kv_heads, self.head_dim)
        q = rope(q, attn.positions, self.theta)
        k = rope(k, attn.positions, self.theta)
        q = checkpoint_name(q, "qkv_proj")
        k = checkpoint_name(k, "qkv_proj")
        v = checkpoint_name(v, "qkv_proj")
        heads = ("activation_batch", "activation_length", "activation_heads", None)
        kv_heads = ("activation_batch", "activation_length", "activation_kv_heads", None)
        q = with_logical_constraint(q, heads)
        k = with_logical_constraint(k, kv_heads)
        v = with_logical_constraint(v, kv_heads)
        keys, values = k, v
        if cache is not None:
            start = (layer, 0, cache_slot, 0, 0)
            k_all = jax.lax.dynamic_update_slice(cache[0], k[None].astype(cache[0].dtype), start)
            v_all = jax.lax.dynamic_update_slice(cache[1], v[None].astype(cache[1].dtype), start)
            keys = jax.lax.dynamic_index_in_dim(k_all, layer, keepdims=False)
            values = jax.lax.dynamic_index_in_dim(v_all, layer, keepdims=False)
            k, v = k_all, v_all
        out = dot_product_attention(
            q,
            keys.astype(q.dtype),
            values.astype(q.dtype),
            attn.q_segment,
            attn.kv_segment,
            attn.q_slot,
            attn.kv_slot,
            self.backend,
            self_attention=cache is None,
        )
        out = checkpoint_name(out.reshape(b, t, -1), "attn_out")
        x = x + with_logical_constraint(_dense(out, self.wo[...]), BATCH_LENGTH_EMBED)
        h = rms_norm(x, self.mlp_norm[...], self.eps)
        gate = jax.nn.silu(_dense(h, self.w_gate[...])) * _dense(h, self.w_up[...])
        gate = with_logical_constraint(gate, ("activation_batch", "activation_length", "activation_mlp"))
        mlp = checkpoint_name(_dense(gate, self.w_down[...]), "mlp_out")
        x = x + with_logical_constraint(mlp, BATCH_LENGTH_EMBED)
        return x, k, v


def remat_policy(name: str):
    """Maps a named remat policy to a ``jax.checkpoint`` policy (or None for 'none')."""
    policies = jax.checkpoint_policies
    if name == "none":
        return None
    if name == "full":
        return policies.nothing_saveable
    if name == "save-dots":
        return policies.dots_with_no_batch_dims_saveable
    if name == "save-named-activations":
        return policies.save_only_these_names("qkv_proj", "attn_out", "mlp_out")
    raise ValueError(f"unknown remat policy {name!r}")


def vision_grid_embedding(
    input_ids: jax.Array, modality: jax.Array, cfg: ml_collections.ConfigDict
) -> jax.Array:
    """[B, T, D] fixed 2-D sin-cos embeddings (as in ViT-style ``posemb_sincos_2d``) of each image
    code's row and column in its ``vision_grid`` x ``vision_grid`` frame; zero at every other token.

    Codes are counted along each sequence, markers left out. Every frame holds grid x grid codes (the
    trainer checks it), so each frame of a span and of each packed example starts again at slot 0.
    Scaled by ``initializer_range``, the token embeddings' initial scale, so the codes' own
    embeddings are not drowned."""
    grid, d = vision_grid(cfg), cfg.hidden_size
    omega = 1.0 / 10_000.0 ** (jnp.arange(d // 4, dtype=jnp.float32) / (d // 4))
    slots = jnp.arange(grid * grid)
    row, col = (slots // grid)[:, None] * omega, (slots % grid)[:, None] * omega
    table = jnp.concatenate([jnp.sin(col), jnp.cos(col), jnp.sin(row), jnp.cos(row)], axis=-1)  # [grid^2, D]
    is_code = (modality == Modality.VISION) & (input_ids < END_OF_FRAME)
    slot = (jnp.cumsum(is_code, axis=1) - 1) % (grid * grid)
    return jnp.where(is_code[..., None], cfg.initializer_range * table[slot], 0.0)


class VLAModel(nnx.Module):
    """The multimodal LLaMA. See ``__call__`` for training and ``decode_step``
    (with ``hidden_states(..., collect_kv=True)`` as prefill) for generation."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        validate(cfg)
        cfg = ml_collections.FrozenConfigDict(cfg)
        self.config = cfg
        self.dtype = jnp.dtype(cfg.dtype)
        d = cfg.hidden_size
        pdt = jnp.dtype(cfg.param_dtype)
        init = jax.nn.initializers.normal(cfg.initializer_range)
        sizes = {
            "text": cfg.text_vocab_size,
            "vision": cfg.vision_vocab_size,
            "latent": cfg.latent_vocab_size,
            "action": cfg.action_vocab_size,
        }
        for name in VOCABS:
            setattr(self, f"{name}_embed", _param(rngs, init, (sizes[name], d), ("vocab", "embed"), pdt, 0))
        for name in VOCABS:
            setattr(self, f"{name}_head", _param(rngs, init, (d, sizes[name]), ("embed", "vocab"), pdt, 0))
        self.final_norm = _param(rngs, jax.nn.initializers.ones, (d,), ("norm",), pdt, 0)
        if cfg.scan_layers:
            self.layers = DecoderBlock(cfg, rngs=rngs, stack=cfg.num_layers)
        else:
            self.layers = nnx.List([DecoderBlock(cfg, rngs=rngs) for _ in range(cfg.num_layers)])

    # -- pieces -------------------------------------------------------------
    def embed(self, input_ids: jax.Array, modality: jax.Array) -> jax.Array:
        """Embeds each token with the table its modality names."""
        x = jnp.zeros((*input_ids.shape, self.config.hidden_size), self.dtype)
        for m, name in enumerate(VOCABS):
            selected = modality == m
            table = getattr(self, f"{name}_embed")[...]
            rows = jnp.take(table, jnp.where(selected, input_ids, 0), axis=0).astype(self.dtype)
            x = jnp.where(selected[..., None], rows, x)
        if vision_grid(self.config):
            x = x + vision_grid_embedding(input_ids, modality, self.config).astype(self.dtype)
        return with_logical_constraint(x, BATCH_LENGTH_EMBED)

    def logits(self, hidden: jax.Array, head: str) -> jax.Array:
        """float32 logits of one head for final hidden states [B, T, D]."""
        kernel = getattr(self, f"{head}_head")[...].astype(hidden.dtype)
        out = jnp.einsum("btd,dv->btv", hidden, kernel, preferred_element_type=jnp.float32)
        return with_logical_constraint(out, ("activation_batch", "activation_length", "activation_vocab"))

    def _run_layers(
        self, x: jax.Array, attn: AttentionInputs, cache: KVCache | None, cache_slot: jax.Array | None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Applies every block. Returns x and either the stacked new keys/values
        [layers, B, T, K, D] (no cache) or the updated caches."""
        policy_name = self.config.remat_policy

        def apply(graphdef, layer_state, x, kv, layer):
            block = nnx.merge(graphdef, layer_state)
            return block(x, attn, kv, layer, cache_slot)

        if policy_name != "none":
            apply = jax.checkpoint(apply, policy=remat_policy(policy_name), static_argnums=(0,))

        if self.config.scan_layers:
            graphdef, state = nnx.split(self.layers)
            if cache is None:

                def body(x, layer_state):
                    x, k, v = apply(graphdef, layer_state, x, None, 0)
                    return x, (k, v)

                x, (ks, vs) = jax.lax.scan(body, x, state)
                return x, ks, vs

            def cached_body(carry, xs):
                x, k_all, v_all = apply(graphdef, xs[0], carry[0], carry[1:], xs[1])
                return (x, k_all, v_all), None

            layers = jnp.arange(self.config.num_layers, dtype=jnp.int32)
            (x, k_all, v_all), _ = jax.lax.scan(cached_body, (x, cache.k, cache.v), (state, layers))
            return x, k_all, v_all
        if cache is not None:
            kv = (cache.k, cache.v)
            for i, block in enumerate(self.layers):
                graphdef, layer_state = nnx.split(block)
                x, *kv = apply(graphdef, layer_state, x, tuple(kv), i)
            return x, kv[0], kv[1]
        ks, vs = [], []
        for block in self.layers:
            graphdef, layer_state = nnx.split(block)
            x, k, v = apply(graphdef, layer_state, x, None, 0)
            ks.append(k)
            vs.append(v)
        return x, jnp.stack(ks), jnp.stack(vs)

    # -- entry points -------------------------------------------------------
    def hidden_states(
        self,
        input_ids: jax.Array,
        modality: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Final-norm hidden states [B, T, D] and every layer's keys/values.

        ``segment_ids`` [B, T]: 0 = padding, equal ids attend to each other
        (packing); default all ones. ``positions`` default ``arange(T)``.
        """
        given = [a for a in (input_ids, modality, positions, segment_ids) if a is not None]
        chex.assert_rank(input_ids, 2, custom_message="input_ids must be [batch, length]")
        chex.assert_type(given, int, custom_message="ids, modality, positions and segment ids are integers")
        chex.assert_equal_shape(given, custom_message="modality, positions, segment_ids must match input_ids")
        b, t = input_ids.shape
        slots = jnp.arange(t, dtype=jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(slots, (b, t))
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        attn = AttentionInputs(
            positions=positions,
            q_segment=segment_ids,
            q_slot=jnp.broadcast_to(slots, (b, t)),
            kv_segment=segment_ids,
            kv_slot=slots,
        )
        x, ks, vs = self._run_layers(self.embed(input_ids, modality), attn, None, None)
        return rms_norm(x, self.final_norm[...], self.config.rms_norm_eps), ks, vs

    def __call__(
        self,
        input_ids: jax.Array,
        modality: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        heads: Sequence[str] = VOCABS,
    ) -> dict[str, jax.Array]:
        """Training forward: float32 logits [B, T, V] of each requested head."""
        hidden, _, _ = self.hidden_states(input_ids, modality, positions, segment_ids)
        return {name: self.logits(hidden, name) for name in heads}

    def decode_step(
        self,
        input_ids: jax.Array,
        modality: int,
        positions: jax.Array,
        cache: KVCache,
        slot: jax.Array,
    ) -> tuple[jax.Array, KVCache]:
        """One new token per row ([B, 1] ids of one modality) at cache ``slot``.

        Returns the final hidden state [B, 1, D] and the updated cache.
        """
        if modality == Modality.VISION and vision_grid(self.config):
            raise ValueError("vision_grid > 0: a generated image code's place in its frame is unknown")
        b = input_ids.shape[0]
        segment = cache.segment.at[:, slot].set(1)
        attn = AttentionInputs(
            positions=positions,
            q_segment=jnp.ones((b, 1), jnp.int32),
            q_slot=jnp.full((b, 1), slot, jnp.int32),
            kv_segment=segment,
            kv_slot=jnp.arange(segment.shape[1], dtype=jnp.int32),
        )
        x = self.embed(input_ids, jnp.full(input_ids.shape, int(modality), jnp.int32))
        x, k_all, v_all = self._run_layers(x, attn, cache, slot)
        hidden = rms_norm(x, self.final_norm[...], self.config.rms_norm_eps)
        return hidden, KVCache(k=k_all, v=v_all, segment=segment)
