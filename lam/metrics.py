"""Evaluation metrics for the latent action model (pure functions, no model imports).

Three groups:

* reconstruction: :func:`psnr`, :func:`per_image_mse`, :func:`copy_baseline_gain` (does the model beat
  copying ``x_t``?) and :func:`action_sensitivity` (do the codes matter? compare against the codes of
  another pair);
* codebook health: :func:`codebook_stats` (per-position and joint usage / perplexity);
* action probes: how well the codes predict the true action on held-out episodes —
  :func:`linear_probe_r2`, :func:`mlp_probe_r2`, :func:`mutual_information`, gathered by
  :func:`probe_report`.

Frames are float arrays in [0, 1] shaped ``[B, H, W, C]``; codes are ints shaped ``[N, L]`` with values
in ``[0, codebook_size)``. Every function returns plain Python floats / ints / lists (JSON-able).

Undefined cases raise ``ValueError``: empty inputs, mismatched lengths, codes out of range, and R^2 of a
held-out target that is constant (its SST is zero). A constant action in :func:`mutual_information` is
defined instead: MI 0 and normalised MI 0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from latent_pretraining.actions.spec import ACTION_NAMES  # names probe dims by default

MSE_FLOOR = 1e-10


# ----------------------------------------------------------------------------------------------------
# Reconstruction


def psnr(mse: Any, peak: float = 1.0) -> Any:
    """Elementwise PSNR in dB, ``10 log10(peak^2 / max(mse, 1e-10))``; numpy in, numpy out, jax in, jax out.

    The clamp keeps identical images finite (``10 log10(peak^2) + 100`` dB).
    """
    xp = jnp if isinstance(mse, jax.Array) else np
    return 10.0 * xp.log10(peak**2 / xp.maximum(mse, MSE_FLOOR))


def per_image_mse(a: Any, b: Any) -> np.ndarray:
    """Mean squared error per image of two ``[B, ...]`` arrays -> ``[B]`` (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim < 1 or a.shape[0] == 0:
        raise ValueError(f"need a non-empty batch, got shape {a.shape}")
    return np.mean((a - b) ** 2, axis=tuple(range(1, a.ndim)))


def copy_baseline_gain(recon: Any, first: Any, target: Any, peak: float = 1.0) -> dict[str, float]:
    """PSNR of the reconstruction against the "copy ``x_t``" baseline.

    Returns ``psnr_recon`` (mean PSNR(recon, target)), ``psnr_copy`` (mean PSNR(first, target)) and
    ``psnr_gain``, the mean over images of the per-image difference (= ``psnr_recon - psnr_copy``).
    Positive gain: the model predicts the change better than assuming nothing moves.
    """
    own = psnr(per_image_mse(recon, target), peak)
    copy = psnr(per_image_mse(first, target), peak)
    return {
        "psnr_recon": float(np.mean(own)),
        "psnr_copy": float(np.mean(copy)),
        "psnr_gain": float(np.mean(own - copy)),
    }


def action_sensitivity(psnr_own: Any, psnr_swapped: Any) -> float:
    """Mean of ``psnr_own - psnr_swapped`` over images.

    ``psnr_swapped`` is the PSNR of the reconstruction decoded with the codes of another pair.
    Near 0: the decoder ignores the codes; large: the codes carry the change.
    """
    own, swapped = np.asarray(psnr_own, np.float64), np.asarray(psnr_swapped, np.float64)
    if own.shape != swapped.shape:
        raise ValueError(f"shapes differ: {own.shape} vs {swapped.shape}")
    if own.size == 0:
        raise ValueError("action_sensitivity of an empty batch")
    return float(np.mean(own - swapped))


# ----------------------------------------------------------------------------------------------------
# Codebook


def _check_codes(codes: Any, codebook_size: int) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes[:, None]
    if codes.ndim != 2:
        raise ValueError(f"codes must be [N, L], got shape {codes.shape}")
    if codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(f"codes are empty: shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integers, got {codes.dtype}")
    if codebook_size < 1:
        raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
    if codes.min() < 0 or codes.max() >= codebook_size:
        raise ValueError(f"codes must lie in [0, {codebook_size}), got [{codes.min()}, {codes.max()}]")
    return codes.astype(np.int64)


def _entropy(counts: np.ndarray, base: float = math.e) -> float:
    """Plug-in entropy of a histogram (zero counts ignored)."""
    counts = np.asarray(counts, np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log(p)) / math.log(base))


def _tuple_ids(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's index among the distinct rows, and the count of each distinct row."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def codebook_stats(codes: Any, codebook_size: int) -> dict[str, Any]:
    """Usage and perplexity of the codes, per position and over whole code tuples.

    Keys: ``position_usage`` / ``position_perplexity`` (lists over the L positions; usage = fraction of
    the codebook used at least once, perplexity = exp of the entropy of that position's histogram),
    ``mean_usage``, ``mean_perplexity``, ``min_position_usage``, ``joint_distinct`` (distinct code
    tuples), ``joint_usage`` (``joint_distinct / min(N, K**L)``), ``joint_perplexity`` (exp entropy over
    tuples), ``num_samples``.
    """
    codes = _check_codes(codes, codebook_size)
    n, length = codes.shape
    usage, perplexity = [], []
    for pos in range(length):
        counts = np.bincount(codes[:, pos], minlength=codebook_size)
        usage.append(float(np.mean(counts > 0)))
        perplexity.append(float(np.exp(_entropy(counts))))
    _, tuple_counts = _tuple_ids(codes)
    distinct = len(tuple_counts)
    return {
        "position_usage": usage,
        "position_perplexity": perplexity,
        "mean_usage": float(np.mean(usage)),
        "mean_perplexity": float(np.mean(perplexity)),
        "min_position_usage": float(min(usage)),
        "joint_distinct": int(distinct),
        "joint_usage": float(distinct / min(n, int(codebook_size) ** length)),
        "joint_perplexity": float(np.exp(_entropy(tuple_counts))),
        "num_samples": int(n),
    }


# ----------------------------------------------------------------------------------------------------
# Action probes


def one_hot_codes(codes: Any, codebook_size: int) -> np.ndarray:
    """One-hot of each code position, concatenated: ``[N, L] -> [N, L * K]`` float64."""
    codes = _check_codes(codes, codebook_size)
    n, length = codes.shape
    out = np.zeros((n, length * codebook_size), np.float64)
    out[np.arange(n)[:, None], codes + codebook_size * np.arange(length)] = 1.0
    return out


def _names(count: int, names: Sequence[str] | None) -> list[str]:
    if names is None:
        return [f"dim{j}" for j in range(count)]
    if len(names) != count:
        raise ValueError(f"{len(names)} names for {count} target dims")
    return [str(x) for x in names]


def _targets(y: Any, n: int, what: str) -> np.ndarray:
    y = np.asarray(y, np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"{what} must be [{n}, A] (one row per code row), got shape {y.shape}")
    if y.shape[1] == 0:
        raise ValueError(f"{what} has no target dims")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{what} contains non-finite values")
    return y


def _probe_inputs(codes_train, y_train, codes_test, y_test, codebook_size, extra_train, extra_test):
    codes_train = _check_codes(codes_train, codebook_size)
    codes_test = _check_codes(codes_test, codebook_size)
    if codes_train.shape[1] != codes_test.shape[1]:
        raise ValueError(f"code lengths differ: {codes_train.shape[1]} vs {codes_test.shape[1]}")
    y_train = _targets(y_train, len(codes_train), "y_train")
    y_test = _targets(y_test, len(codes_test), "y_test")
    if y_train.shape[1] != y_test.shape[1]:
        raise ValueError(f"target dims differ: {y_train.shape[1]} vs {y_test.shape[1]}")
    if (extra_train is None) != (extra_test is None):
        raise ValueError("give extra features for both train and test, or for neither")
    if extra_train is not None:
        extra_train = _targets(extra_train, len(codes_train), "extra_train")
        extra_test = _targets(extra_test, len(codes_test), "extra_test")
        if extra_train.shape[1] != extra_test.shape[1]:
            raise ValueError(f"extra feature dims differ: {extra_train.shape[1]} vs {extra_test.shape[1]}")
        mean, std = extra_train.mean(0), extra_train.std(0)
        std = np.where(std > 0, std, 1.0)
        extra_train, extra_test = (extra_train - mean) / std, (extra_test - mean) / std
    return codes_train, y_train, codes_test, y_test, extra_train, extra_test


def standardiser(y_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train mean and std per dim (std 1 for a constant train dim)."""
    std = y_train.std(0)
    return y_train.mean(0), np.where(std > 0, std, 1.0)


def r2_scores(y_true: Any, y_pred: Any, names: Sequence[str] | None = None) -> list[float]:
    """R^2 = 1 - SSE / SST per column, SST around the mean of ``y_true`` (the held-out mean).

    Raises ``ValueError`` naming the dim when ``y_true`` is constant in it (R^2 undefined).
    """
    y_true = _targets(y_true, len(np.asarray(y_true)), "y_true")
    y_pred = np.asarray(y_pred, np.float64).reshape(y_true.shape)
    labels = _names(y_true.shape[1], names)
    scores = []
    for j, name in enumerate(labels):
        column = y_true[:, j]
        if np.ptp(column) == 0:
            raise ValueError(
                f"R^2 is undefined for target dim {j} ({name!r}): it is constant on the held-out split"
            )
        sse = np.sum((column - y_pred[:, j]) ** 2)
        sst = np.sum((column - column.mean()) ** 2)
        scores.append(float(1.0 - sse / sst))
    return scores


def _r2_result(y_test, pred, names, n_train) -> dict[str, Any]:
    labels = _names(y_test.shape[1], names)
    scores = r2_scores(y_test, pred, labels)
    return {
        "r2": scores,
        "r2_mean": float(np.mean(scores)),
        "names": labels,
        "n_train": int(n_train),
        "n_test": len(y_test),
    }


def linear_probe_r2(
    codes_train: Any,
    y_train: Any,
    codes_test: Any,
    y_test: Any,
    codebook_size: int,
    ridge: float = 1e-3,
    *,
    extra_train: Any = None,
    extra_test: Any = None,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Held-out R^2 of a ridge regression from one-hot codes (plus optional extra features) to targets.

    Closed form on centred features and train-standardised targets, with an unpenalised intercept.
    Returns ``r2`` (list per target dim), ``r2_mean``, ``names``, ``n_train``, ``n_test``.
    """
    codes_train, y_train, codes_test, y_test, extra_train, extra_test = _probe_inputs(
        codes_train, y_train, codes_test, y_test, codebook_size, extra_train, extra_test
    )
    x_train, x_test = one_hot_codes(codes_train, codebook_size), one_hot_codes(codes_test, codebook_size)
    if extra_train is not None:
        x_train = np.concatenate([x_train, extra_train], axis=1)
        x_test = np.concatenate([x_test, extra_test], axis=1)
    y_mean, y_std = standardiser(y_train)
    x_mean = x_train.mean(0)
    xc = x_train - x_mean
    gram = xc.T @ xc + ridge * np.eye(xc.shape[1])
    weights = np.linalg.solve(gram, xc.T @ ((y_train - y_mean) / y_std))
    pred = ((x_test - x_mean) @ weights) * y_std + y_mean
    return _r2_result(y_test, pred, names, len(y_train))


def _init_mlp(key, length, codebook_size, extra_dim, hidden, outputs) -> dict[str, jax.Array]:
    k_embed, k_extra, k_out = jax.random.split(key, 3)
    fan_in = length + extra_dim  # one active one-hot per position plus the extra features
    return {
        "embed": jax.random.normal(k_embed, (length, codebook_size, hidden)) / math.sqrt(fan_in),
        "extra": jax.random.normal(k_extra, (extra_dim, hidden)) / math.sqrt(fan_in),
        "b1": jnp.zeros((hidden,)),
        "w2": jax.random.normal(k_out, (hidden, outputs)) / math.sqrt(hidden),
        "b2": jnp.zeros((outputs,)),
    }


@jax.jit
def _mlp_apply(params: dict[str, jax.Array], codes: jax.Array, extra: jax.Array) -> jax.Array:
    # Per-position embeddings summed into the hidden layer (= a dense layer on the one-hot codes).
    positions = jnp.arange(codes.shape[1])
    h = params["embed"][positions, codes].sum(axis=1) + extra @ params["extra"] + params["b1"]
    return jax.nn.relu(h) @ params["w2"] + params["b2"]


@functools.partial(jax.jit, static_argnums=(4,))
def _fit_mlp(params, codes, extra, y, steps: int, learning_rate: float, weight_decay: float):
    optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)

    def loss_fn(p):
        return jnp.mean((_mlp_apply(p, codes, extra) - y) ** 2)

    def body(_, carry):
        p, opt_state = carry
        grads = jax.grad(loss_fn)(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    params, _ = jax.lax.fori_loop(0, steps, body, (params, optimizer.init(params)))
    return params


def mlp_probe_r2(
    codes_train: Any,
    y_train: Any,
    codes_test: Any,
    y_test: Any,
    codebook_size: int,
    *,
    hidden: int = 128,
    steps: int = 800,
    learning_rate: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
    extra_train: Any = None,
    extra_test: Any = None,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Held-out R^2 of a one-hidden-layer ReLU MLP from the codes to the targets.

    Codes are embedded per position (summed into the ``hidden`` units), optional extra features are
    standardised and added through a dense layer; trained full-batch with AdamW in one jitted loop on
    train-standardised targets, from a fixed seed. Same return dict as :func:`linear_probe_r2`.
    """
    codes_train, y_train, codes_test, y_test, extra_train, extra_test = _probe_inputs(
        codes_train, y_train, codes_test, y_test, codebook_size, extra_train, extra_test
    )
    if extra_train is None:
        extra_train = np.zeros((len(codes_train), 0))
        extra_test = np.zeros((len(codes_test), 0))
    y_mean, y_std = standardiser(y_train)
    params = _init_mlp(
        jax.random.PRNGKey(seed),
        codes_train.shape[1],
        codebook_size,
        extra_train.shape[1],
        hidden,
        y_train.shape[1],
    )
    params = _fit_mlp(
        params,
        jnp.asarray(codes_train, jnp.int32),
        jnp.asarray(extra_train, jnp.float32),
        jnp.asarray((y_train - y_mean) / y_std, jnp.float32),
        int(steps),
        learning_rate,
        weight_decay,
    )
    out = _mlp_apply(params, jnp.asarray(codes_test, jnp.int32), jnp.asarray(extra_test, jnp.float32))
    pred = np.asarray(out, np.float64) * y_std + y_mean
    return _r2_result(y_test, pred, names, len(y_train))


def bin_actions(values: Any, bins: int = 8) -> np.ndarray:
    """Bin one action dim into at most ``bins`` quantile bins -> ints ``0..b-1``.

    A dim with at most ``bins`` unique values keeps its unique values as the bins; ties at quantile
    edges can merge bins, so the result may have fewer than ``bins`` bins.
    """
    values = np.asarray(values, np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("cannot bin an empty action dim")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    uniques, inverse = np.unique(values, return_inverse=True)
    if len(uniques) <= bins:
        return inverse.reshape(-1)
    edges = np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    raw = np.searchsorted(edges, values, side="right")
    return np.unique(raw, return_inverse=True)[1].reshape(-1)


def _mi_bits(labels: np.ndarray, binned: np.ndarray) -> float:
    """Plug-in I(X; Y) = H(X) + H(Y) - H(X, Y) in bits for two integer label arrays."""
    joint = labels.astype(np.int64) * (int(binned.max()) + 1) + binned
    h = _entropy(np.bincount(labels), 2) + _entropy(np.bincount(binned), 2)
    return max(0.0, h - _entropy(np.unique(joint, return_counts=True)[1], 2))


def mutual_information(
    codes: Any, actions: Any, bins: int = 8, shuffle_seed: int | None = 0
) -> dict[str, Any]:
    """Plug-in mutual information (bits) between the code tuple and each binned action dim.

    The whole code tuple is one categorical variable; each action dim is binned by :func:`bin_actions`.
    Keys (lists over action dims unless noted): ``mi_bits``, ``action_entropy_bits`` (H of the binned
    action), ``normalized_mi`` (``mi / H``; 0 for a constant action), ``mi_shuffled_bits`` (MI against
    the actions shuffled with ``shuffle_seed``; omitted when it is None), ``num_bins``,
    ``code_entropy_bits`` (float), ``num_tuples``, ``n``.

    The plug-in estimator is biased upward for small N: roughly ``(T - 1)(b - 1) / (2 N ln 2)`` bits
    for T occupied tuples and b bins, large when T is comparable to N. ``mi_shuffled_bits`` measures
    that bias on this data; compare against it rather than against 0.
    """
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes[:, None]
    if codes.ndim != 2 or codes.size == 0:
        raise ValueError(f"codes must be a non-empty [N, L] array, got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integers, got {codes.dtype}")
    actions = _targets(actions, len(codes), "actions")
    labels, tuple_counts = _tuple_ids(codes)
    rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
    result: dict[str, Any] = {"mi_bits": [], "action_entropy_bits": [], "normalized_mi": [], "num_bins": []}
    if rng is not None:
        result["mi_shuffled_bits"] = []
    for j in range(actions.shape[1]):
        binned = bin_actions(actions[:, j], bins)
        h_action = _entropy(np.bincount(binned), 2)
        mi = min(_mi_bits(labels, binned), h_action)
        result["mi_bits"].append(mi)
        result["action_entropy_bits"].append(h_action)
        result["normalized_mi"].append(mi / h_action if h_action > 0 else 0.0)
        result["num_bins"].append(int(binned.max()) + 1)
        if rng is not None:
            result["mi_shuffled_bits"].append(_mi_bits(labels, rng.permutation(binned)))
    result["code_entropy_bits"] = _entropy(tuple_counts, 2)
    result["num_tuples"] = len(tuple_counts)
    result["n"] = len(codes)
    return result


def split_indices(train: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out row indices from a boolean mask ``[n]`` or an integer array of train rows."""
    train = np.asarray(train)
    if train.dtype == bool:
        if train.shape != (n,):
            raise ValueError(f"train mask must have shape ({n},), got {train.shape}")
        mask = train
    else:
        if train.size and not np.issubdtype(train.dtype, np.integer):
            raise ValueError(f"train indices must be integers or a boolean mask, got {train.dtype}")
        idx = train.reshape(-1).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"train indices must lie in [0, {n})")
        mask = np.zeros(n, bool)
        mask[idx] = True
    train_idx, test_idx = np.flatnonzero(mask), np.flatnonzero(~mask)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ValueError(f"empty split: {len(train_idx)} train rows, {len(test_idx)} held-out rows")
    return train_idx, test_idx


def probe_report(
    codes: Any,
    actions: Any,
    train_mask: Any,
    codebook_size: int,
    dims: Sequence[int] = (0, 1),
    names: Sequence[str] | None = None,
    *,
    bins: int = 8,
    mlp_steps: int = 800,
    seed: int = 0,
) -> dict[str, Any]:
    """Linear probe, MLP probe and MI of the codes against the selected action dims (default dx, dy).

    ``train_mask`` is a boolean mask over rows or integer train-row indices (split by episode);
    the probes score the held-out rows, MI uses all rows. ``names`` default to LAPA's action names
    (``dx, dy, dz, droll, dpitch, dyaw, gripper``) for dims < 7, else ``dim<j>``.

    Keys: ``dims``, ``names``, ``n_train``, ``n_test``, ``linear_r2`` / ``mlp_r2`` / ``mi_bits`` /
    ``normalized_mi`` / ``action_entropy_bits`` / ``mi_shuffled_bits`` (dicts name -> float),
    ``linear_r2_mean``, ``mlp_r2_mean``, ``code_entropy_bits``, ``num_tuples``.
    Raises ``ValueError`` (naming the dim) when a selected dim is constant on the held-out rows.
    """
    codes = _check_codes(codes, codebook_size)
    actions = _targets(actions, len(codes), "actions")
    dims = [int(d) for d in dims]
    if not dims:
        raise ValueError("no action dims selected")
    for d in dims:
        if not 0 <= d < actions.shape[1]:
            raise ValueError(f"action dim {d} out of range for {actions.shape[1]} dims")
    if names is None:
        names = [ACTION_NAMES[d] if d < len(ACTION_NAMES) else f"dim{d}" for d in dims]
    names = _names(len(dims), names)
    y = actions[:, dims]
    train_idx, test_idx = split_indices(train_mask, len(codes))
    args = (codes[train_idx], y[train_idx], codes[test_idx], y[test_idx], codebook_size)
    linear = linear_probe_r2(*args, names=names)
    mlp = mlp_probe_r2(*args, steps=mlp_steps, seed=seed, names=names)
    mi = mutual_information(codes, y, bins=bins, shuffle_seed=seed)

    def by_name(values: list[float]) -> dict[str, float]:
        return dict(zip(names, (float(v) for v in values), strict=True))

    return {
        "dims": dims,
        "names": names,
        "n_train": len(train_idx),
        "n_test": len(test_idx),
        "linear_r2": by_name(linear["r2"]),
        "linear_r2_mean": linear["r2_mean"],
        "mlp_r2": by_name(mlp["r2"]),
        "mlp_r2_mean": mlp["r2_mean"],
        "mi_bits": by_name(mi["mi_bits"]),
        "normalized_mi": by_name(mi["normalized_mi"]),
        "action_entropy_bits": by_name(mi["action_entropy_bits"]),
        "mi_shuffled_bits": by_name(mi["mi_shuffled_bits"]),
        "code_entropy_bits": mi["code_entropy_bits"],
        "num_tuples": mi["num_tuples"],
    }
