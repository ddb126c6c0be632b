"""Building blocks of LAPA's latent action model (LAQ), in Flax NNX.

They follow LAPA's ``laq_model/attention.py`` exactly, so released PyTorch checkpoints load
and reproduce their outputs (``lam.convert``):

- attention normalises q and k (l2), scales them by learned ``q_scale`` / ``k_scale`` and
  multiplies the scores by a fixed 8; self-attention takes k and v from the *un-normalised*
  input (only q sees the bias-less LayerNorm), cross-attention normalises its context;
  ``null_kv`` pairs are prepended to k and v;
- the spatial transformers add a continuous 2-D relative position bias (an MLP over
  ``sign(d) * log(|d| + 1)``);
- each layer starts with PEG, a depthwise 3x3x3 convolution over ``(t, h, w)`` with causal
  padding in time. The temporal transformer hands PEG its ``(b h w) t`` tokens reshaped to
  ``(b, t, h, w)`` without transposing; LAPA does that and its checkpoints depend on it;
- feed-forward: LayerNorm, Linear to ``2 * int(4 * 2/3 * dim)``, GEGLU ``gelu(gate) * x``, Linear.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

LN_EPS = 1e-5  # torch's LayerNorm default
L2_EPS = 1e-12  # torch's F.normalize default
SCORE_SCALE = 8.0

# torch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
torch_default_init = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array | None) -> jax.Array:
    """LayerNorm computed in float32, returned in the input's dtype."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + LN_EPS) * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def l2_normalize(x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    # x / max(|x|, eps), written so that the gradient at x = 0 is finite
    sum_sq = jnp.sum(jnp.square(xf), axis=-1, keepdims=True)
    return (xf * jax.lax.rsqrt(jnp.maximum(sum_sq, L2_EPS**2))).astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with a learned scale and optionally a learned bias (LAPA's attention norms have none)."""

    def __init__(self, dim: int, *, bias: bool = True, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), logical_axes=("norm",)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.scale[...], None if self.bias is None else self.bias[...])


class Linear(nnx.Module):
    """``x @ kernel (+ bias)`` with the kernel stored as [in, out] and computed in ``dtype``."""

    def __init__(
        self,
        din: int,
        dout: int,
        rngs: nnx.Rngs,
        *,
        bias: bool = True,
        axes: tuple[str | None, str | None] = (None, None),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        self.dtype = dtype
        self.kernel = nnx.Param(
            torch_default_init(rngs.params(), (din, dout), param_dtype), logical_axes=axes
        )
        self.bias = nnx.Param(jnp.zeros((dout,), param_dtype), logical_axes=(axes[1],)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.matmul(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class ContinuousPositionBias(nnx.Module):
    """Attention bias [heads, h*w, h*w] from an MLP over log-scaled 2-D relative positions."""

    def __init__(self, dim: int, heads: int, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.net = nnx.List(
            [
                Linear(2, dim, rngs, param_dtype=param_dtype),
                Linear(dim, dim, rngs, param_dtype=param_dtype),
                Linear(dim, heads, rngs, param_dtype=param_dtype),
            ]
        )

    def __call__(self, h: int, w: int) -> jax.Array:
        ii, jj = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
        grid = jnp.stack([ii.reshape(-1), jj.reshape(-1)], axis=-1).astype(jnp.float32)
        rel = grid[:, None, :] - grid[None, :, :]
        x = jnp.sign(rel) * jnp.log(jnp.abs(rel) + 1.0)
        for i, layer in enumerate(self.net):
            x = layer(x)
            if i < len(self.net) - 1:
                x = jax.nn.leaky_relu(x, 0.1)
        return jnp.transpose(x, (2, 0, 1))


class PEG(nnx.Module):
    """Position generator: a depthwise 3x3x3 convolution over the (t, h, w) view of the tokens,
    causal in t (pad 2 before, none after)."""

    def __init__(self, dim: int, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.dtype = dtype
        fan_in = 27  # one input channel per group
        bound = 1.0 / fan_in**0.5
        self.kernel = nnx.Param(
            jax.random.uniform(rngs.params(), (3, 3, 3, 1, dim), param_dtype, -bound, bound),
            logical_axes=(None, None, None, None, "embed"),
        )
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), logical_axes=("embed",))

    def __call__(self, x: jax.Array, video_shape: tuple[int, int, int, int]) -> jax.Array:
        """``x`` [N, n, d] is reinterpreted (row-major reshape) as ``video_shape + (d,)``."""
        shape = x.shape
        _, t, h, w = video_shape
        v = x.reshape(*video_shape, shape[-1]).astype(self.dtype)
        v = jnp.pad(v, ((0, 0), (2, 0), (1, 1), (1, 1), (0, 0)))
        kernel = self.kernel[...].astype(self.dtype)
        # a sum of 27 shifted copies: XLA's grouped convolution is ~15x slower on CPU
        y = sum(
            v[:, a : a + t, b : b + h, c : c + w] * kernel[a, b, c, 0]
            for a in range(3)
            for b in range(3)
            for c in range(3)
        )
        return (y + self.bias[...].astype(self.dtype)).reshape(shape)


class Attention(nnx.Module):
    """LAPA's attention: l2-normalised q/k with learned scales, scores times 8, null kv."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        rngs: nnx.Rngs,
        *,
        num_null_kv: int = 0,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        inner = heads * dim_head
        self.heads, self.dim_head, self.num_null_kv = heads, dim_head, num_null_kv
        self.norm = LayerNorm(dim, bias=False, param_dtype=param_dtype)
        self.context_norm = LayerNorm(dim, bias=False, param_dtype=param_dtype)
        self.null_kv = (
            nnx.Param(
                jax.random.normal(rngs.params(), (heads, 2 * num_null_kv, dim_head), param_dtype),
                logical_axes=("q_heads", None, None),
            )
            if num_null_kv
            else None
        )
        kw = dict(bias=False, dtype=dtype, param_dtype=param_dtype)
        self.to_q = Linear(dim, inner, rngs, axes=("embed", "q_heads"), **kw)
        self.to_kv = Linear(dim, 2 * inner, rngs, axes=("embed", "q_heads"), **kw)
        self.q_scale = nnx.Param(jnp.ones((dim_head,), param_dtype), logical_axes=("norm",))
        self.k_scale = nnx.Param(jnp.ones((dim_head,), param_dtype), logical_axes=("norm",))
        self.to_out = Linear(inner, dim, rngs, axes=("q_heads", "embed"), **kw)

    def __call__(
        self, x: jax.Array, context: jax.Array | None = None, attn_bias: jax.Array | None = None
    ) -> jax.Array:
        kv_input = x if context is None else self.context_norm(context)
        q = self.to_q(self.norm(x))
        k, v = jnp.split(self.to_kv(kv_input), 2, axis=-1)
        split = lambda t: t.reshape(*t.shape[:-1], self.heads, self.dim_head)  # noqa: E731
        q, k, v = split(q), split(k), split(v)  # [b, n, h, d]
        if self.null_kv is not None:
            null = self.null_kv[...].astype(k.dtype).reshape(self.heads, self.num_null_kv, 2, self.dim_head)
            nk = jnp.broadcast_to(
                jnp.transpose(null[:, :, 0], (1, 0, 2)), (k.shape[0], self.num_null_kv, *k.shape[2:])
            )
            nv = jnp.broadcast_to(
                jnp.transpose(null[:, :, 1], (1, 0, 2)), (v.shape[0], self.num_null_kv, *v.shape[2:])
            )
            k = jnp.concatenate([nk, k], axis=1)
            v = jnp.concatenate([nv, v], axis=1)
        q = l2_normalize(q) * self.q_scale[...].astype(q.dtype)
        k = l2_normalize(k) * self.k_scale[...].astype(k.dtype)
        scores = jnp.einsum("bihd,bjhd->bhij", q, k, preferred_element_type=jnp.float32) * SCORE_SCALE
        if attn_bias is not None:
            scores = scores + jnp.pad(attn_bias, ((0, 0), (0, 0), (self.num_null_kv, 0)))[None]
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhij,bjhd->bihd", probs, v)
        return self.to_out(out.reshape(*out.shape[:2], self.heads * self.dim_head))


class FeedForward(nnx.Module):
    def __init__(self, dim: int, rngs: nnx.Rngs, mult: int = 4, dtype=jnp.float32, param_dtype=jnp.float32):
        inner = int(mult * (2 / 3) * dim)
        self.norm = LayerNorm(dim, param_dtype=param_dtype)
        kw = dict(bias=False, dtype=dtype, param_dtype=param_dtype)
        self.proj_in = Linear(dim, 2 * inner, rngs, axes=("embed", "mlp"), **kw)
        self.proj_out = Linear(inner, dim, rngs, axes=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h, gate = jnp.split(self.proj_in(self.norm(x)), 2, axis=-1)
        return self.proj_out(jax.nn.gelu(gate, approximate=False) * h)


class TransformerLayer(nnx.Module):
    def __init__(
        self, dim: int, heads: int, dim_head: int, rngs: nnx.Rngs, *, cross: bool, dtype, param_dtype
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.peg = PEG(dim, rngs, **kw)
        self.attn = Attention(dim, heads, dim_head, rngs, **kw)
        self.cross_attn = Attention(dim, heads, dim_head, rngs, num_null_kv=2, **kw) if cross else None
        self.ff = FeedForward(dim, rngs, **kw)

    def __call__(self, x, video_shape, attn_bias=None, context=None):
        x = x + self.peg(x, video_shape).astype(x.dtype)
        x = x + self.attn(x, attn_bias=attn_bias).astype(x.dtype)
        if self.cross_attn is not None and context is not None:
            x = x + self.cross_attn(x, context=context).astype(x.dtype)
        return x + self.ff(x).astype(x.dtype)


class Transformer(nnx.Module):
    """``depth`` layers (PEG, self-attention, optional cross-attention, feed-forward) and a final norm."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        rngs: nnx.Rngs,
        *,
        cross: bool = False,
        remat: bool = False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        self.layers = nnx.List(
            [
                TransformerLayer(
                    dim, heads, dim_head, rngs, cross=cross, dtype=dtype, param_dtype=param_dtype
                )
                for _ in range(depth)
            ]
        )
        self.norm_out = LayerNorm(dim, bias=False, param_dtype=param_dtype)
        self.remat = remat

    def __call__(
        self,
        x: jax.Array,
        video_shape: tuple[int, int, int, int],
        attn_bias: jax.Array | None = None,
        context: jax.Array | None = None,
    ) -> jax.Array:
        for layer in self.layers:
            if self.remat:
                x = nnx.remat(lambda lyr, x: lyr(x, video_shape, attn_bias, context))(layer, x)
            else:
                x = layer(x, video_shape, attn_bias, context)
        return self.norm_out(x)
