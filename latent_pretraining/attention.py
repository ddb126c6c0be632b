"""Attention kernels and rotary embeddings.

Masks are described by slot indices and segment ids rather than a dense mask:
a query at slot ``i`` in segment ``s`` sees keys at slots ``j <= i`` in the same
segment. Segment 0 marks padding; a padding query sees only padding keys, so no
row is ever fully masked (no NaN in any backend), and real tokens never see
padding or another packed example.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding in LLaMA/EasyLM's interleaved-pair form.

    Pairs ``(x[2i], x[2i+1])`` are rotated by ``positions * theta**(-2i/d)``;
    the rotation is computed in float32. ``x``: [B, T, N, D]; ``positions``: [B, T].
    """
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    angle = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    cos = jnp.cos(angle)[:, :, None, :]
    sin = jnp.sin(angle)[:, :, None, :]
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], head_dim // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = jnp.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


def attention_mask(
    q_segment: jax.Array, kv_segment: jax.Array, q_slot: jax.Array, kv_slot: jax.Array
) -> jax.Array:
    """Boolean mask [B, 1, T, S]: causal by slot index and same segment."""
    causal = kv_slot[None, None, :] <= q_slot[:, :, None]
    same = q_segment[:, :, None] == kv_segment[:, None, :]
    return (causal & same)[:, None]


# query block of the XLA self-attention path; each block attends only to the keys up to its end
CAUSAL_BLOCK = 128


def _causal_blocks(
    q: jax.Array, k: jax.Array, v: jax.Array, q_segment: jax.Array, kv_segment: jax.Array
) -> jax.Array:
    """Self-attention one query block at a time against the keys at or before the block's end.

    The keys after it are masked for every query of the block, so leaving them out gives the
    same softmax with a third less score and gradient work at T = 384, near half for long T.
    """
    t = q.shape[1]
    slots = jnp.arange(t, dtype=jnp.int32)
    outs = []
    for start in range(0, t, CAUSAL_BLOCK):
        end = min(start + CAUSAL_BLOCK, t)
        mask = attention_mask(
            q_segment[:, start:end],
            kv_segment[:, :end],
            jnp.broadcast_to(slots[start:end], (q.shape[0], end - start)),
            slots[:end],
        )
        outs.append(
            jax.nn.dot_product_attention(
                q[:, start:end], k[:, :end], v[:, :end], mask=mask, implementation="xla"
            )
        )
    return jnp.concatenate(outs, axis=1)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_segment: jax.Array,
    kv_segment: jax.Array,
    q_slot: jax.Array,
    kv_slot: jax.Array,
    backend: str = "xla",
    self_attention: bool = False,
) -> jax.Array:
    """Multi-head (or grouped-query) causal attention.

    q: [B, T, N, D]; k, v: [B, S, K, D] with N a multiple of K. Segments: [B, T]
    and [B, S]; slots: [B, T] and [S]. Returns [B, T, N, D]. ``self_attention``:
    the queries and keys are the same T tokens at slots 0..T-1 (training, prefill),
    which lets the XLA path skip the key blocks the causal mask hides.
    """
    if backend == "xla" and self_attention and q.shape[1] > CAUSAL_BLOCK:
        return _causal_blocks(q, k, v, q_segment, kv_segment)
    mask = attention_mask(q_segment, kv_segment, q_slot, kv_slot)
    if backend == "cudnn":
        if jax.default_backend() != "gpu":
            raise ValueError(
                "attention_backend='cudnn' needs an NVIDIA GPU; this process runs on "
                f"{jax.default_backend()!r}. Use attention_backend='xla'."
            )
        if q.dtype not in (jnp.bfloat16, jnp.float16):
            raise ValueError(f"attention_backend='cudnn' needs bf16/fp16 compute, got {q.dtype}")
        if q.shape[1] == k.shape[1]:
            # cuDNN flash attention: causal skipping plus the padding/segment
            # mask, which cuDNN applies as an additive bias.
            return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="cudnn")
        # single-token decode against a KV cache: memory-bound, XLA is as good
    elif backend != "xla":
        raise ValueError(f"unknown attention backend {backend!r}; use 'xla' or 'cudnn'")
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
