"""LWM's convolutional VQGAN image tokenizer in Flax NNX.

Encoder (conv, residual blocks, stride-2 downsampling, no attention) -> 1x1
``quant_conv`` -> nearest code in an L2 codebook -> 1x1 ``post_quant_conv`` ->
decoder (residual blocks, nearest-neighbour upsampling) -> clip to [-1, 1].
Images are NHWC in [-1, 1]. LWM's released tokenizer (preset ``lwm``) maps
256x256 images to 16x16 codes from a codebook of 8192 x 64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx


def get_vqgan_config(preset: str = "lwm") -> ml_collections.ConfigDict:
    """``lwm`` (LWM/LAPA's released tokenizer), ``small`` (64x64 -> 8x8 codes) or ``tiny`` (tests)."""
    c = ml_collections.ConfigDict()
    c.resolution = 256
    c.hidden_channels = 128
    c.channel_mult = (1, 2, 2, 4, 6)
    c.num_res_blocks = 2
    c.z_channels = 64
    c.num_embeddings = 8192
    c.quantized_embed_dim = 64
    c.dtype = "float32"  # compute dtype; parameters are float32
    if preset == "small":
        c.resolution = 64
        c.hidden_channels = 64
        c.channel_mult = (1, 1, 2, 2)
        c.num_res_blocks = 1
        c.z_channels = 32
        c.num_embeddings = 512
        c.quantized_embed_dim = 32
    elif preset == "tiny":
        c.resolution = 32
        c.hidden_channels = 32
        c.channel_mult = (1, 1, 2)
        c.num_res_blocks = 1
        c.z_channels = 16
        c.num_embeddings = 64
        c.quantized_embed_dim = 16
    elif preset != "lwm":
        raise ValueError(f"unknown VQGAN preset {preset!r}; choose lwm, small or tiny")
    return c


def tokens_per_side(cfg: ml_collections.ConfigDict) -> int:
    return cfg.resolution // 2 ** (len(cfg.channel_mult) - 1)


def _norm(channels: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    if channels % 32:
        raise ValueError(f"GroupNorm uses 32 groups: {channels} channels are not divisible by 32")
    return nnx.GroupNorm(channels, num_groups=32, epsilon=1e-6, rngs=rngs)


def _conv(cin: int, cout: int, size: int, rngs: nnx.Rngs, **kwargs) -> nnx.Conv:
    return nnx.Conv(cin, cout, (size, size), rngs=rngs, **kwargs)


class ResnetBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, rngs: nnx.Rngs):
        self.norm1 = _norm(cin, rngs)
        self.conv1 = _conv(cin, cout, 3, rngs)
        self.norm2 = _norm(cout, rngs)
        self.conv2 = _conv(cout, cout, 3, rngs)
        self.shortcut = _conv(cin, cout, 1, rngs) if cin != cout else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return (x if self.shortcut is None else self.shortcut(x)) + h


class MidBlock(nnx.Module):
    def __init__(self, channels: int, rngs: nnx.Rngs):
        self.block1 = ResnetBlock(channels, channels, rngs)
        self.block2 = ResnetBlock(channels, channels, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.block2(self.block1(x))


class DownBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, num_blocks: int, downsample: bool, rngs: nnx.Rngs):
        self.blocks = nnx.List([ResnetBlock(cin if i == 0 else cout, cout, rngs) for i in range(num_blocks)])
        self.downsample = _conv(cout, cout, 3, rngs, strides=(2, 2), padding="VALID") if downsample else None

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))  # pad bottom/right, as LWM
        return x


class UpBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, num_blocks: int, upsample: bool, rngs: nnx.Rngs):
        self.blocks = nnx.List([ResnetBlock(cin if i == 0 else cout, cout, rngs) for i in range(num_blocks)])
        self.upsample = _conv(cout, cout, 3, rngs) if upsample else None

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)
        if self.upsample is not None:
            b, h, w, c = x.shape
            x = self.upsample(jax.image.resize(x, (b, 2 * h, 2 * w, c), method="nearest"))
        return x


class Encoder(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
        hidden, mult = cfg.hidden_channels, tuple(cfg.channel_mult)
        self.conv_in = _conv(3, hidden, 3, rngs)
        ins = (1, *mult)
        self.down = nnx.List(
            [
                DownBlock(hidden * ins[i], hidden * mult[i], cfg.num_res_blocks, i != len(mult) - 1, rngs)
                for i in range(len(mult))
            ]
        )
        top = hidden * mult[-1]
        self.mid = MidBlock(top, rngs)
        self.norm_out = _norm(top, rngs)
        self.conv_out = _conv(top, cfg.z_channels, 3, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for block in self.down:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.norm_out(self.mid(x))))


class Decoder(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
        hidden, mult = cfg.hidden_channels, tuple(cfg.channel_mult)
        channels = hidden * mult[-1]
        self.conv_in = _conv(cfg.z_channels, channels, 3, rngs)
        self.mid = MidBlock(channels, rngs)
        up = []
        for level in reversed(range(len(mult))):  # LWM names these in creation order
            out = hidden * mult[level]
            up.append(UpBlock(channels, out, cfg.num_res_blocks + 1, level != 0, rngs))
            channels = out
        self.up = nnx.List(up)
        self.norm_out = _norm(channels, rngs)
        self.conv_out = _conv(channels, 3, 3, rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.mid(self.conv_in(z))
        for block in self.up:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.norm_out(x)))


class CodeUsage(nnx.Variable):
    """Running average of how often each code is chosen (training statistic, not a parameter)."""


class VQGAN(nnx.Module):
    """``encode`` images to codes, ``decode_codes`` back; ``__call__`` is the training forward."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        self.config = ml_collections.FrozenConfigDict(cfg)
        self.encoder = Encoder(cfg, rngs)
        self.quant_conv = _conv(cfg.z_channels, cfg.quantized_embed_dim, 1, rngs)
        n = cfg.num_embeddings
        init = jax.nn.initializers.uniform(2.0 / n)
        self.codebook = nnx.Param(init(rngs.params(), (n, cfg.quantized_embed_dim)) - 1.0 / n)
        self.code_usage = CodeUsage(jnp.full((n,), 1.0 / n, jnp.float32))
        self.post_quant_conv = _conv(cfg.quantized_embed_dim, cfg.z_channels, 1, rngs)
        self.decoder = Decoder(cfg, rngs)

    def pre_quant(self, images: jax.Array) -> jax.Array:
        """The vectors that get quantized: ``quant_conv(encoder(x))`` [B, h, w, D]."""
        return self.quant_conv(self.encoder(images.astype(jnp.dtype(self.config.dtype))))

    def nearest_codes(self, z: jax.Array) -> jax.Array:
        """argmin_k |z - e_k|^2, computed as LWM does: |z|^2 + |e|^2 - 2 z.e (float32)."""
        z = z.astype(jnp.float32)
        e = self.codebook[...].astype(jnp.float32)
        d = jnp.sum(z * z, -1, keepdims=True) + jnp.sum(e * e, -1) - 2.0 * jnp.einsum("...d,kd->...k", z, e)
        return jnp.argmin(d, axis=-1).astype(jnp.int32)

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Images [B, H, W, 3] (or videos [B, T, H, W, 3]) in [-1, 1] -> (quantized vectors, int32 codes)."""
        lead = images.shape[:-3]
        z = self.pre_quant(images.reshape(-1, *images.shape[-3:]))
        codes = self.nearest_codes(z)
        quantized = jnp.take(self.codebook[...], codes, axis=0)
        return quantized.reshape(*lead, *quantized.shape[1:]), codes.reshape(*lead, *codes.shape[1:])

    def decode(self, quantized: jax.Array) -> jax.Array:
        """Quantized vectors [B, h, w, D] -> images in [-1, 1]."""
        x = self.decoder(self.post_quant_conv(quantized.astype(jnp.dtype(self.config.dtype))))
        return jnp.clip(x.astype(jnp.float32), -1.0, 1.0)

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """int codes [B, h, w] (or [B, T, h, w]) -> images in [-1, 1]."""
        lead = codes.shape[:-2]
        flat = codes.reshape(-1, *codes.shape[-2:])
        images = self.decode(jnp.take(self.codebook[...], flat, axis=0))
        return images.reshape(*lead, *images.shape[1:])
