"""LAPA's latent action model (LAQ) in Flax NNX.

Frames ``x_t`` and ``x_{t+H}`` ([B, 2, H, W, 3], values in [0, 1]) are cut into patches and
embedded (LayerNorm, Linear, LayerNorm, shared by both frames). A spatial transformer (with
a continuous 2-D position bias) and a temporal transformer encode them. The quantizer head
projects each frame's features to ``quant_dim``, reduces the patch grid to ``code_seq_len``
vectors with a small conv net, and quantizes the difference (future minus current). The
decoder is a spatial transformer over the *current* frame's patch embeddings (not encoded)
that cross-attends to the projected action vectors and predicts the future frame's pixels.

Options beyond LAPA (``get_lam_config``; all off in the ``lapa`` preset and in converted checkpoints):
``predict_residual`` (predict ``x_{t+H} - x_t``), ``match_brightness`` (undo a global gain
between the frames), ``motion_kernel`` (the decoder moves ``x_t``'s pixels with per-patch
kernels, :class:`MotionKernels`), ``code_head="max"`` (the codes from the grid's extremes of the
feature change, :class:`MaxPoolCodeHead`) and ``difference_embedding`` (the encoder also embeds
``x_{t+H} - x_t``). The ``small`` preset has all but the last; ``tiny`` the first two.

Presets (``get_lam_config``): ``lapa`` (LAPA's released ``laq_openx``: 256x256, patch 32,
dim 1024, 8+8 layers), ``small`` (64x64, patch 8, dim 128, 2+2 layers: CPU-sized, the shape of
``tests/fixtures/laq_torch_tiny``) and ``tiny`` (tests).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lam.layers import ContinuousPositionBias, LayerNorm, Linear, Transformer, torch_default_init
from lam.quantizers import make_quantizer

# LAPA's NSVQ conv head per code_seq_len: (kernel, stride, padding) of each conv, ReLU between
CODE_HEADS: dict[int, tuple[tuple[tuple[int, int], int, int], ...]] = {
    1: (((3, 3), 2, 1), ((4, 4), 1, 0)),
    2: (((3, 3), 2, 1), ((3, 4), 1, 0)),
    4: (((3, 3), 2, 1), ((3, 3), 1, 0)),
    16: (((3, 3), 2, 1), ((3, 3), 2, 1)),
    64: (((3, 3), 2, 1),),
    256: (((3, 3), 2, 1),),
}


def quantizer_options(kind: str) -> ml_collections.ConfigDict:
    q = ml_collections.ConfigDict()
    q.init_scale = 1.0  # codebook init std (LAPA: N(0, 1))
    q.dead_threshold = 0.03  # dead: share of assignments below dead_threshold / codebook_size
    if kind == "nsvq":
        q.schedule = "lapa"  # lapa | periodic
        q.replace_every = 100  # periodic schedule
        q.replace_until = 0  # periodic: last step that may replace (0 = no limit)
        q.replace_from = "batch"  # batch (the batch's vectors) | codes (LAPA's: copies of used codes)
        q.replace_noise = 0.01  # relative to the codebook's RMS
    elif kind == "vq_ema":
        q.ema_decay = 0.99
        q.commitment_cost = 0.25
        q.restart_every = 50
        q.dead_threshold = 0.25  # restart codes chosen less than a quarter as often as uniform
    elif kind == "fsq":
        q.levels = (8,)  # levels of 2 are lopsided in FSQ (even-level offset): prefer >= 3
    else:
        raise ValueError(f"unknown quantizer {kind!r}; choose nsvq, vq_ema or fsq")
    return q


def get_lam_config(preset: str = "small", quantizer: str = "nsvq") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.image_size, c.patch_size, c.channels = 64, 8, 3
    c.dim, c.quant_dim = 128, 16
    c.spatial_depth, c.temporal_depth = 2, 2
    c.heads, c.dim_head = 4, 32
    c.codebook_size, c.code_seq_len = 8, 4
    c.dtype, c.param_dtype = "float32", "float32"
    c.remat = False
    # LAPA's NSVQ hands the decoder its (B*L, D) vectors reshaped to (B, D, L) and transposed,
    # which shuffles features across the action tokens; released checkpoints depend on it
    c.lapa_token_layout = False
    # predict x_{t+H} - x_t instead of x_{t+H}: copying x_t is free from the first step, so the
    # codes only have to explain the change (LAPA predicts the frame itself)
    c.predict_residual = True
    # rescale x_{t+H} so its per-channel brightness matches x_t's before encoding and as the
    # target: flicker and auto-exposure change every pixel, yet the per-patch input LayerNorm
    # hides a global gain from the encoder, so the codes could never explain it (LAPA does not)
    c.match_brightness = True
    # the options below go beyond LAPA (their measurements: BENCHMARKS.md, latent action model)
    # k > 0: the decoder also predicts a k x k softmax kernel per patch that moves x_t's pixels,
    # plus the pixel head's residual (needs predict_residual); 0: LAPA's decoder
    c.motion_kernel = 0
    # experimental, off everywhere: add an embedding of x_{t+H} - x_t to the future frame's
    # patch tokens before the encoder; False: LAPA's encoder
    c.difference_embedding = False
    # "max": the action vectors are a linear map of each feature's largest rise plus largest fall
    # over the patch grid (future minus current features); "lapa": LAPA's conv head per frame
    c.code_head = "lapa"
    if preset == "lapa":
        c.lapa_token_layout = True
        c.predict_residual = c.match_brightness = False
        c.image_size, c.patch_size = 256, 32
        c.dim, c.quant_dim = 1024, 32
        c.spatial_depth = c.temporal_depth = 8
        c.heads, c.dim_head = 16, 64
    elif preset == "small":  # both options on (compared with LAPA's heads: BENCHMARKS.md)
        c.motion_kernel, c.code_head = 7, "max"
    elif preset == "tiny":  # tests: LAPA's heads (the small preset's are tested with them on)
        c.dim, c.quant_dim = 64, 8
        c.spatial_depth = c.temporal_depth = 1
        c.heads, c.dim_head = 2, 32
    else:
        raise ValueError(f"unknown LAM preset {preset!r}; choose lapa, small or tiny")
    c.quantizer = quantizer
    c.quantizer_options = quantizer_options(quantizer)
    return c


def code_grid(code_seq_len: int) -> tuple[int, int]:
    """LAPA arranges the action tokens as a square grid (or 2x1 for two tokens)."""
    side = math.isqrt(code_seq_len)
    if side * side == code_seq_len:
        return side, side
    if code_seq_len == 2:
        return 2, 1
    raise ValueError(f"code_seq_len {code_seq_len} must be a square number or 2")


def match_brightness(frames: jax.Array, dark: float = 0.05) -> jax.Array:
    """[B, T, H, W, C] in [0, 1] with every frame's channels rescaled to the first frame's brightness.

    The gain per frame and channel is the median over pixels (not dark in either frame) of
    first / frame: robust to the few pixels that actually move. The first frame is unchanged."""
    frames = frames.astype(jnp.float32)
    first = frames[:, :1]
    lit = (frames > dark) & (first > dark)
    ratio = jnp.where(lit, first / jnp.maximum(frames, dark), jnp.nan)
    gain = jnp.nanmedian(ratio, axis=(2, 3), keepdims=True)
    gain = jnp.where(jnp.isnan(gain), 1.0, gain)  # no lit pixels: leave the frame as it is
    return jnp.clip(frames * gain, 0.0, 1.0)


def patchify(frames: jax.Array, p: int) -> jax.Array:
    """[B, T, H, W, C] -> [B, T, H/p, W/p, C*p*p], features in LAPA's ``(c p1 p2)`` order."""
    b, t, hh, ww, c = frames.shape
    x = frames.reshape(b, t, hh // p, p, ww // p, p, c)
    return jnp.transpose(x, (0, 1, 2, 4, 6, 3, 5)).reshape(b, t, hh // p, ww // p, c * p * p)


def unpatchify(x: jax.Array, p: int, c: int) -> jax.Array:
    """Inverse of :func:`patchify`."""
    b, t, h, w, _ = x.shape
    x = x.reshape(b, t, h, w, c, p, p)
    return jnp.transpose(x, (0, 1, 2, 5, 3, 6, 4)).reshape(b, t, h * p, w * p, c)


class Conv2d(nnx.Module):
    """A plain 2-D convolution (NHWC, HWIO kernel, explicit symmetric padding)."""

    def __init__(
        self, ch: int, kernel: tuple[int, int], stride: int, padding: int, rngs: nnx.Rngs, param_dtype
    ):
        self.stride, self.padding = stride, padding
        self.kernel = nnx.Param(
            torch_default_init(rngs.params(), (*kernel, ch, ch), param_dtype), logical_axes=(None,) * 4
        )
        self.bias = nnx.Param(jnp.zeros((ch,), param_dtype), logical_axes=(None,))

    def __call__(self, x: jax.Array) -> jax.Array:
        pad = ((self.padding, self.padding), (self.padding, self.padding))
        y = jax.lax.conv_general_dilated(
            x,
            self.kernel[...].astype(x.dtype),
            (self.stride, self.stride),
            pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + self.bias[...].astype(x.dtype)


class CodeHead(nnx.Module):
    """LAPA's: each frame's features [B, h, w, dim] -> ``code_seq_len`` vectors [B, L, quant_dim]
    by a small conv net over the patch grid; the action vectors are future minus current."""

    def __init__(self, cfg: ml_collections.ConfigDict, grid: tuple[int, int], rngs: nnx.Rngs, param_dtype):
        if cfg.code_seq_len not in CODE_HEADS:
            raise ValueError(f"code_seq_len {cfg.code_seq_len} is not one of LAPA's {sorted(CODE_HEADS)}")
        self.project_in = Linear(cfg.dim, cfg.quant_dim, rngs, param_dtype=param_dtype)
        self.convs = nnx.List(
            [Conv2d(cfg.quant_dim, k, s, p, rngs, param_dtype) for k, s, p in CODE_HEADS[cfg.code_seq_len]]
        )
        h, w = grid
        for (kh, kw), s, p in CODE_HEADS[cfg.code_seq_len]:
            h, w = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
        if h * w != cfg.code_seq_len:
            raise ValueError(
                f"a {grid[0]}x{grid[1]} patch grid gives {h}x{w} codes, not code_seq_len={cfg.code_seq_len}; "
                "LAPA's code heads expect an 8x8 grid for 1, 2 and 4 codes (e.g. 256px/32 or 64px/8)"
            )

    def __call__(self, first: jax.Array, last: jax.Array) -> jax.Array:
        """The two frames' features [B, h, w, dim] -> action vectors [B, L, quant_dim]."""
        return self.frame_vectors(last) - self.frame_vectors(first)

    def frame_vectors(self, x: jax.Array) -> jax.Array:
        y = self.project_in(x).astype(jnp.float32)
        for i, conv in enumerate(self.convs):
            y = conv(y)
            if i < len(self.convs) - 1:
                y = jax.nn.relu(y)
        return y.reshape(y.shape[0], -1, y.shape[-1])


class MaxPoolCodeHead(nnx.Module):
    """The action vectors as a linear map (no bias) of each feature's largest rise plus its
    largest fall over the patch grid, from the current to the future frame's features: a motion
    anywhere in the frame reaches every code, no change gives the zero vector and, with a motion
    and its reverse equally common, every code position is centred on zero, so the positions
    share LAPA's one codebook instead of splitting it between them."""

    def __init__(self, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs, param_dtype):
        self.shape = (cfg.code_seq_len, cfg.quant_dim)
        out = cfg.code_seq_len * cfg.quant_dim
        self.project = Linear(cfg.dim, out, rngs, bias=False, axes=("embed", None), param_dtype=param_dtype)

    def __call__(self, first: jax.Array, last: jax.Array) -> jax.Array:
        """The two frames' features [B, h, w, dim] -> action vectors [B, L, quant_dim]."""
        change = (last - first).astype(jnp.float32)
        extremes = change.max(axis=(1, 2)) + change.min(axis=(1, 2))
        return self.project(extremes).reshape(len(extremes), *self.shape)


def make_code_head(cfg: ml_collections.ConfigDict, grid: tuple[int, int], rngs: nnx.Rngs, param_dtype):
    if cfg.code_head == "lapa":
        return CodeHead(cfg, grid, rngs, param_dtype)
    if cfg.code_head == "max":
        return MaxPoolCodeHead(cfg, rngs, param_dtype)
    raise ValueError(f"unknown code_head {cfg.code_head!r}; choose lapa or max")


class MotionKernels(nnx.Module):
    """Moves the current frame: per patch token a ``size x size`` softmax kernel over each pixel's
    neighbourhood, with the logits interpolated bilinearly between patch centres. It starts close
    to the identity (the centre logit is ``CENTRE_LOGIT``, the others 0), so the decoder starts
    near the copy baseline; every offset gets a gradient, unlike a warp by a flow field."""

    CENTRE_LOGIT = 6.0

    def __init__(self, dim: int, size: int, patch_size: int, rngs: nnx.Rngs, param_dtype):
        if size < 3 or size % 2 == 0:
            raise ValueError(f"motion_kernel must be an odd size >= 3 (or 0 for none), got {size}")
        self.size, self.patch_size = size, patch_size
        self.to_logits = Linear(dim, size * size, rngs, axes=("embed", None), param_dtype=param_dtype)
        self.to_logits.kernel[...] = jnp.zeros_like(self.to_logits.kernel[...])
        centre = jnp.zeros((size * size,), param_dtype).at[size * size // 2].set(self.CENTRE_LOGIT)
        self.to_logits.bias[...] = centre

    def __call__(self, tokens: jax.Array, frame: jax.Array) -> jax.Array:
        """Decoder tokens [B, h, w, dim] and the frame [B, H, W, C] -> the moved frame [B, H, W, C]."""
        b, h, w, _ = tokens.shape
        k, r = self.size, self.size // 2
        logits = self.to_logits(tokens.astype(jnp.float32))
        logits = jax.image.resize(logits, (b, h * self.patch_size, w * self.patch_size, k * k), "bilinear")
        weights = jax.nn.softmax(logits, axis=-1)
        frame = frame.astype(jnp.float32)
        height, width = frame.shape[1:3]
        padded = jnp.pad(frame, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
        # offset (i - r, j - r) of each output pixel, in the kernel's row-major order
        shifted = jnp.stack(
            [padded[:, i : i + height, j : j + width] for i in range(k) for j in range(k)], axis=3
        )
        return jnp.einsum("bhwk,bhwkc->bhwc", weights, shifted)


class LatentActionModel(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        dtype, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.grid = (cfg.image_size // cfg.patch_size,) * 2
        self.action_grid = code_grid(cfg.code_seq_len)
        patch_dim = cfg.channels * cfg.patch_size**2
        self.patch_norm_in = LayerNorm(patch_dim, param_dtype=pdt)
        self.patch_proj = Linear(patch_dim, cfg.dim, rngs, axes=(None, "embed"), param_dtype=pdt)
        self.patch_norm_out = LayerNorm(cfg.dim, param_dtype=pdt)
        self.difference_proj = (
            Linear(patch_dim, cfg.dim, rngs, axes=(None, "embed"), param_dtype=pdt)
            if cfg.difference_embedding
            else None
        )
        self.position_bias = ContinuousPositionBias(cfg.dim, cfg.heads, rngs, param_dtype=pdt)
        kw = dict(remat=cfg.remat, dtype=dtype, param_dtype=pdt)
        self.enc_spatial = Transformer(cfg.dim, cfg.spatial_depth, cfg.heads, cfg.dim_head, rngs, **kw)
        self.enc_temporal = Transformer(cfg.dim, cfg.temporal_depth, cfg.heads, cfg.dim_head, rngs, **kw)
        self.code_head = make_code_head(cfg, self.grid, rngs, pdt)
        self.quantizer = make_quantizer(cfg, rngs, pdt)
        self.project_out = Linear(cfg.quant_dim, cfg.dim, rngs, axes=(None, "embed"), param_dtype=pdt)
        self.dec_spatial = Transformer(
            cfg.dim, cfg.spatial_depth, cfg.heads, cfg.dim_head, rngs, cross=True, **kw
        )
        self.to_pixels = Linear(cfg.dim, patch_dim, rngs, axes=("embed", None), param_dtype=pdt)
        if cfg.predict_residual:  # start at the copy baseline
            self.to_pixels.kernel[...] = jnp.zeros_like(self.to_pixels.kernel[...])
        if cfg.motion_kernel and not cfg.predict_residual:
            raise ValueError("motion_kernel needs predict_residual (the pixels are added to the moved frame)")
        kernel = cfg.motion_kernel
        self.motion = MotionKernels(cfg.dim, kernel, cfg.patch_size, rngs, pdt) if kernel else None

    # -- pieces --------------------------------------------------------------------------------
    def embed_patches(self, frames: jax.Array) -> jax.Array:
        """[B, T, H, W, C] in [0, 1] -> patch tokens [B, T, h, w, dim]."""
        x = self.patch_norm_in(patchify(frames.astype(jnp.float32), self.cfg.patch_size))
        return self.patch_norm_out(self.patch_proj(x).astype(jnp.float32))

    def encoder_tokens(self, frames: jax.Array, tokens: jax.Array) -> jax.Array:
        """The patch tokens the encoder sees: with ``difference_embedding``, the later frames' tokens
        plus an embedding of their pixel difference from the first frame."""
        if self.difference_proj is None:
            return tokens
        difference = patchify(frames[:, 1:].astype(jnp.float32) - frames[:, :1], self.cfg.patch_size)
        return tokens.at[:, 1:].add(self.difference_proj(difference).astype(tokens.dtype))

    def encode(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Spatial then temporal transformer; returns the two frames' features [B, 1, h, w, dim]."""
        b, t, h, w, d = tokens.shape
        video_shape = (b, t, h, w)
        x = tokens.reshape(b * t, h * w, d).astype(jnp.dtype(self.cfg.dtype))
        x = self.enc_spatial(x, video_shape, attn_bias=self.position_bias(h, w))
        x = jnp.transpose(x.reshape(b, t, h, w, d), (0, 2, 3, 1, 4)).reshape(b * h * w, t, d)
        x = self.enc_temporal(x, video_shape)
        x = jnp.transpose(x.reshape(b, h, w, t, d), (0, 3, 1, 2, 4)).astype(jnp.float32)
        return x[:, :1], x[:, 1:]

    def action_vectors(self, first: jax.Array, last: jax.Array) -> jax.Array:
        """The vectors to quantize [B, L, quant_dim] from the two frames' features [B, 1, h, w, dim]."""
        return self.code_head(first[:, 0], last[:, 0])

    def action_tokens(self, vectors: jax.Array) -> jax.Array:
        """Quantized vectors [B, L, quant_dim] -> the decoder's context tokens [B, L, dim]."""
        if self.cfg.lapa_token_layout:
            b, n, d = vectors.shape
            vectors = jnp.transpose(vectors.reshape(b, d, n), (0, 2, 1))
        return self.project_out(vectors)

    def decode(self, first_patch_tokens: jax.Array, action_tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Current-frame patch tokens [B, 1, h, w, dim] + action tokens [B, L, dim] -> the pixel
        head's frame [B, H, W, C] and the decoder's output tokens [B, h, w, dim]."""
        b, _, h, w, d = first_patch_tokens.shape
        dtype = jnp.dtype(self.cfg.dtype)
        x = first_patch_tokens.reshape(b, h * w, d).astype(dtype)
        x = self.dec_spatial(
            x, (b, 1, h, w), attn_bias=self.position_bias(h, w), context=action_tokens.astype(dtype)
        )
        x = x.astype(jnp.float32).reshape(b, h, w, d)
        pixels = self.to_pixels(x).reshape(b, 1, h, w, -1)
        return unpatchify(pixels, self.cfg.patch_size, self.cfg.channels)[:, 0], x

    # -- whole model ---------------------------------------------------------------------------
    def prepare(self, frames: jax.Array) -> jax.Array:
        """The frames the model encodes and predicts: brightness-matched when configured."""
        return match_brightness(frames) if self.cfg.match_brightness else frames

    def __call__(self, frames: jax.Array, *, train: bool = False, rng: jax.Array | None = None) -> dict:
        """Training (NSVQ noise / straight-through) or hard-code forward.

        Returns ``recon`` [B, H, W, C], ``target`` (the future frame as prepared, what ``recon``
        should equal), ``codes`` [B, L], ``z`` (vectors before quantization) and ``aux_loss``
        (the quantizer's own loss, e.g. VQ commitment).
        """
        frames, tokens, z = self.encode_pair(frames)
        quantized, codes, aux = self.quantizer.quantize(z, train, rng)
        recon = self._future(frames[:, 0], tokens[:, :1], quantized)
        return {"recon": recon, "target": frames[:, 1], "codes": codes, "z": z, "aux_loss": aux}

    def codes(self, frames: jax.Array) -> jax.Array:
        """Hard latent action codes [B, L] of frame pairs [B, 2, H, W, C]."""
        return self.quantizer.quantize(self.encode_pair(frames)[2], False)[1]

    def reconstruct(self, frames: jax.Array, codes: jax.Array | None = None) -> jax.Array:
        """The future frame predicted from the current frame and ``codes`` (default: the pair's hard codes).

        Only the current frame ``frames[:, 0]`` is read when ``codes`` are given."""
        if codes is None:
            codes = self.codes(frames)
        return self.predict(frames, self.quantizer.lookup(codes))

    def predict(self, frames: jax.Array, vectors: jax.Array) -> jax.Array:
        """The future frame predicted from the current frame ``frames[:, 0]`` and action vectors
        [B, L, quant_dim] (quantized, or any stand-in such as the true actions lifted to that shape)."""
        return self._future(frames[:, 0], self.embed_patches(frames[:, :1]), vectors)

    def encode_pair(self, frames: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(prepared frames, their patch tokens, the action vectors to quantize) of frame pairs."""
        frames = self.prepare(frames)
        tokens = self.embed_patches(frames)
        first, last = self.encode(self.encoder_tokens(frames, tokens))
        return frames, tokens, self.action_vectors(first, last)

    def _future(self, current: jax.Array, current_tokens: jax.Array, vectors: jax.Array) -> jax.Array:
        pixels, tokens = self.decode(jax.lax.stop_gradient(current_tokens), self.action_tokens(vectors))
        if self.motion is not None:
            return pixels + self.motion(tokens, current)
        return pixels + current.astype(pixels.dtype) if self.cfg.predict_residual else pixels
