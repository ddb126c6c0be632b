"""lam.metrics and lam.visualize: expected values are worked out by hand or by an independent formula."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from lam import metrics
from lam.visualize import save_reconstruction_grid, save_same_code_grid, to_uint8

# ------------------------------------------------------------------------------------------------------
# Reconstruction metrics


def test_psnr_known_values_numpy_and_jax():
    np.testing.assert_allclose(metrics.psnr(np.array([0.01, 0.1, 1.0])), [20.0, 10.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(metrics.psnr(0.04, peak=2.0), 20.0, atol=1e-9)  # 10 log10(4 / 0.04)
    np.testing.assert_allclose(metrics.psnr(0.0), 100.0)  # clamp at 1e-10 keeps it finite
    out = jax.jit(metrics.psnr)(jnp.array([0.01, 0.0]))
    assert isinstance(out, jax.Array)
    np.testing.assert_allclose(np.asarray(out), [20.0, 100.0], rtol=1e-5)


def test_per_image_mse_by_hand():
    a = np.zeros((2, 2, 2, 3))
    b = np.zeros((2, 2, 2, 3))
    b[0, 0, 0, 0] = 1.0  # one of 12 values off by 1 -> 1/12
    b[1] = 0.5  # all off by 0.5 -> 0.25
    np.testing.assert_allclose(metrics.per_image_mse(a, b), [1 / 12, 0.25])
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.per_image_mse(a, b[:1])


def test_copy_baseline_gain_sign_and_values():
    rng = np.random.default_rng(0)
    target = rng.uniform(0.2, 0.8, (3, 4, 4, 3))
    first = target + 0.1  # copying x_t: mse 0.01 -> 20 dB for every image
    exact = metrics.copy_baseline_gain(target, first, target)
    assert exact["psnr_copy"] == pytest.approx(20.0)
    assert exact["psnr_recon"] == pytest.approx(100.0)  # identical images hit the clamp, finite
    assert exact["psnr_gain"] == pytest.approx(80.0)
    worse = metrics.copy_baseline_gain(target + 0.2, first, target)  # recon mse 0.04 -> 10 log10(25)
    assert worse["psnr_recon"] == pytest.approx(10 * math.log10(25))
    assert worse["psnr_gain"] < 0
    assert json.loads(json.dumps(exact)) == exact


def test_copy_baseline_gain_is_mean_of_per_image_differences():
    target = np.zeros((2, 1, 1, 1))
    recon = target + np.array([0.1, 0.01]).reshape(2, 1, 1, 1)  # 20 dB, 40 dB
    first = target + np.array([1.0, 0.1]).reshape(2, 1, 1, 1)  # 0 dB, 20 dB
    out = metrics.copy_baseline_gain(recon, first, target)
    assert out["psnr_recon"] == pytest.approx(30.0)
    assert out["psnr_copy"] == pytest.approx(10.0)
    assert out["psnr_gain"] == pytest.approx(20.0)


def test_action_sensitivity():
    assert metrics.action_sensitivity([30.0, 20.0, 25.0], [20.0, 20.0, 16.0]) == pytest.approx(19.0 / 3)
    with pytest.raises(ValueError):
        metrics.action_sensitivity([], [])
    with pytest.raises(ValueError):
        metrics.action_sensitivity([1.0, 2.0], [1.0])


# ------------------------------------------------------------------------------------------------------
# Codebook statistics


def test_codebook_stats_single_code():
    stats = metrics.codebook_stats(np.full((10, 4), 3), codebook_size=8)
    assert stats["position_usage"] == [1 / 8] * 4
    assert stats["position_perplexity"] == pytest.approx([1.0] * 4)
    assert stats["min_position_usage"] == pytest.approx(1 / 8)
    assert stats["joint_distinct"] == 1
    assert stats["joint_usage"] == pytest.approx(1 / 10)  # min(N = 10, 8**4)
    assert stats["joint_perplexity"] == pytest.approx(1.0)


def test_codebook_stats_uniform():
    k = 4
    # every (c0, c1) pair exactly once: each position uniform, all 16 tuples used once
    codes = np.array([(i, j) for i in range(k) for j in range(k)])
    stats = metrics.codebook_stats(codes, k)
    assert stats["position_usage"] == [1.0, 1.0]
    assert stats["position_perplexity"] == pytest.approx([k, k])
    assert stats["mean_perplexity"] == pytest.approx(k)
    assert stats["joint_distinct"] == k * k
    assert stats["joint_usage"] == pytest.approx(1.0)
    assert stats["joint_perplexity"] == pytest.approx(k * k)


def test_codebook_stats_hand_counts():
    codes = np.array([[0, 0], [0, 0], [1, 2], [3, 3]])
    stats = metrics.codebook_stats(codes, codebook_size=4)
    # each position and the tuples have histogram (1/2, 1/4, 1/4): entropy 1.5 bits -> perplexity 2**1.5
    assert stats["position_usage"] == [0.75, 0.75]
    assert stats["position_perplexity"] == pytest.approx([2**1.5, 2**1.5])
    assert stats["joint_distinct"] == 3
    assert stats["joint_usage"] == pytest.approx(3 / 4)  # min(N = 4, 4**2 = 16)
    assert stats["joint_perplexity"] == pytest.approx(2**1.5)
    assert stats["num_samples"] == 4
    assert json.loads(json.dumps(stats)) == stats


def test_codebook_stats_rejects_bad_codes():
    with pytest.raises(ValueError, match="empty"):
        metrics.codebook_stats(np.zeros((0, 4), int), 8)
    with pytest.raises(ValueError, match="lie in"):
        metrics.codebook_stats(np.array([[0, 8]]), 8)
    with pytest.raises(ValueError, match="integers"):
        metrics.codebook_stats(np.array([[0.5, 1.0]]), 8)


# ------------------------------------------------------------------------------------------------------
# Probes


def test_one_hot_codes_layout():
    x = metrics.one_hot_codes(np.array([[1, 0], [2, 2]]), 3)
    np.testing.assert_array_equal(x, [[0, 1, 0, 1, 0, 0], [0, 0, 1, 0, 0, 1]])


def _split(n_train: int, n_test: int, length: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, k, (n_train + n_test, length))
    return rng, codes, codes[:n_train], codes[n_train:]


def test_linear_probe_fits_additive_actions_and_not_independent_ones():
    k, length = 8, 4
    rng, codes, train, test = _split(1000, 300, length, k, seed=0)
    table = rng.normal(size=(length, k, 2))  # action = sum over positions of a per-code vector
    y = table[np.arange(length), codes].sum(axis=1) + 1e-3 * rng.normal(size=(len(codes), 2))
    fit = metrics.linear_probe_r2(train, y[:1000], test, y[1000:], k)
    assert min(fit["r2"]) > 0.999
    assert fit["r2_mean"] == pytest.approx(np.mean(fit["r2"]))
    assert fit["n_train"] == 1000 and fit["n_test"] == 300

    noise = rng.normal(size=(len(codes), 2))
    unrelated = metrics.linear_probe_r2(train, noise[:1000], test, noise[1000:], k)
    assert max(unrelated["r2"]) < 0.1
    assert min(unrelated["r2"]) > -0.2


def test_linear_probe_r2_uses_held_out_mean_for_sst():
    # Codes carry nothing, so the probe predicts the train mean; R^2 follows from the formula.
    rng = np.random.default_rng(1)
    y_train, y_test = rng.normal(0.0, 1.0, 50), rng.normal(0.5, 1.0, 40)
    fit = metrics.linear_probe_r2(np.zeros((50, 2), int), y_train, np.zeros((40, 2), int), y_test, 4)
    expected = 1 - np.sum((y_test - y_train.mean()) ** 2) / np.sum((y_test - y_test.mean()) ** 2)
    assert fit["r2"] == [pytest.approx(expected, abs=1e-9)]
    assert fit["r2"][0] < 0  # the shift of the held-out mean is penalised


def test_linear_probe_extra_features():
    rng, _, train, test = _split(200, 100, 2, 4, seed=2)
    extra = rng.normal(size=(300, 1))
    y = 3.0 * extra[:, 0] - 1.0
    without = metrics.linear_probe_r2(train, y[:200], test, y[200:], 4)
    with_extra = metrics.linear_probe_r2(
        train, y[:200], test, y[200:], 4, extra_train=extra[:200], extra_test=extra[200:]
    )
    assert without["r2"][0] < 0.2
    assert with_extra["r2"][0] > 0.999


def test_probe_errors_are_clear():
    codes = np.zeros((10, 2), int)
    y = np.arange(10.0)
    with pytest.raises(ValueError, match=r"dim 0 \('dx'\).*constant"):
        metrics.linear_probe_r2(codes, y, codes[:3], np.ones(3), 4, names=["dx"])
    with pytest.raises(ValueError, match="empty"):
        metrics.linear_probe_r2(codes[:0], y[:0], codes, y, 4)
    with pytest.raises(ValueError, match="one row per code row"):
        metrics.linear_probe_r2(codes, y[:5], codes, y, 4)
    with pytest.raises(ValueError, match="lie in"):
        metrics.linear_probe_r2(codes + 4, y, codes, y, 4)


def test_mlp_probe_fits_a_product_the_linear_probe_cannot():
    k = 8
    _, codes, train, test = _split(2000, 500, 4, k, seed=3)
    # interaction only: the additive (one-hot linear) part of a centred product is zero
    y = (codes[:, 0] - 3.5) * (codes[:, 1] - 3.5)
    linear = metrics.linear_probe_r2(train, y[:2000], test, y[2000:], k)
    mlp = metrics.mlp_probe_r2(train, y[:2000], test, y[2000:], k, steps=500)
    assert mlp["r2"][0] > 0.9
    assert linear["r2"][0] < 0.1
    assert linear["r2"][0] < mlp["r2"][0]
    assert set(mlp) == set(linear)


def _entropy_bits(labels: np.ndarray) -> float:
    p = np.unique(labels, return_counts=True)[1] / len(labels)
    return float(-(p * np.log2(p)).sum())


def test_mutual_information_of_a_function_of_the_codes():
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 4, (3000, 2))
    action = ((codes[:, 0] + 4 * codes[:, 1]) % 5).astype(float)  # 5 values <= 8 bins: kept as is
    mi = metrics.mutual_information(codes, action, bins=8)
    expected = _entropy_bits(action)  # H(A | codes) = 0, so I = H(A)
    assert mi["num_bins"] == [5]
    assert mi["action_entropy_bits"] == [pytest.approx(expected)]
    assert mi["mi_bits"] == [pytest.approx(expected)]
    assert mi["normalized_mi"] == [pytest.approx(1.0)]
    assert mi["code_entropy_bits"] == pytest.approx(_entropy_bits(codes[:, 0] * 4 + codes[:, 1]))
    assert mi["mi_shuffled_bits"][0] < 0.05


def test_mutual_information_near_zero_for_independent_actions():
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 4, (20000, 2))  # 16 tuples
    actions = rng.normal(size=(20000, 2))
    mi = metrics.mutual_information(codes, actions, bins=8)
    assert mi["num_bins"] == [8, 8]
    assert mi["action_entropy_bits"] == pytest.approx([3.0, 3.0], abs=1e-3)  # 8 equal quantile bins
    # plug-in bias ~ (16 - 1)(8 - 1) / (2 N ln 2) ~ 0.004 bits
    assert max(mi["mi_bits"]) < 0.02
    assert max(mi["normalized_mi"]) < 0.01


def test_mutual_information_constant_action_is_zero():
    codes = np.array([[0], [1], [2], [3]])
    mi = metrics.mutual_information(codes, np.ones(4))
    assert mi["mi_bits"] == [0.0]
    assert mi["normalized_mi"] == [0.0]
    assert mi["action_entropy_bits"] == [0.0]


def test_bin_actions_quantiles():
    values = np.arange(100.0)
    binned = metrics.bin_actions(values, bins=4)
    np.testing.assert_array_equal(np.bincount(binned), [25, 25, 25, 25])
    assert np.all(np.diff(binned) >= 0)  # monotone in the value
    np.testing.assert_array_equal(metrics.bin_actions([2.0, -1.0, 2.0], bins=8), [1, 0, 1])


def test_probe_report_split_forms_agree_and_is_json():
    rng = np.random.default_rng(6)
    i = rng.permutation(400)
    codes = np.stack([i % 4, (i // 4) % 4], axis=1)  # each code exactly 100 times per position
    actions = np.stack([codes[:, 0] - 1.5, codes[:, 1] * 0.5, rng.normal(size=400)], axis=1)
    mask = np.arange(400) < 300
    by_mask = metrics.probe_report(codes, actions, mask, 4, mlp_steps=200)
    by_index = metrics.probe_report(codes, actions, np.arange(300), 4, mlp_steps=200)
    assert by_mask == by_index
    assert by_mask["names"] == ["dx", "dy"]
    assert by_mask["n_train"] == 300 and by_mask["n_test"] == 100
    assert min(by_mask["linear_r2"].values()) > 0.99
    assert min(by_mask["mlp_r2"].values()) > 0.9
    # dx, dy take 4 balanced values (<= 8 bins, kept as bins) fixed by the codes: I = H = 2 bits
    assert by_mask["action_entropy_bits"] == pytest.approx({"dx": 2.0, "dy": 2.0})
    assert by_mask["mi_bits"] == pytest.approx({"dx": 2.0, "dy": 2.0})
    assert by_mask["normalized_mi"] == pytest.approx({"dx": 1.0, "dy": 1.0})
    assert json.loads(json.dumps(by_mask)) == by_mask

    named = metrics.probe_report(codes, actions, mask, 4, dims=(2,), names=["noise"], mlp_steps=50)
    assert list(named["linear_r2"]) == ["noise"]
    assert named["linear_r2"]["noise"] < 0.1
    with pytest.raises(ValueError, match="empty split"):
        metrics.probe_report(codes, actions, np.ones(400, bool), 4)
    with pytest.raises(ValueError, match="out of range"):
        metrics.probe_report(codes, actions, mask, 4, dims=(7,))


# ------------------------------------------------------------------------------------------------------
# Grids


def test_to_uint8():
    np.testing.assert_array_equal(to_uint8(np.array([-0.5, 0.0, 0.5, 1.0, 2.0])), [0, 0, 128, 255, 255])


def test_reconstruction_grid_layout_and_black_error(tmp_path):
    rng = np.random.default_rng(7)
    b, h, w = 3, 6, 5
    first, target = rng.uniform(size=(b, h, w, 3)), rng.uniform(size=(b, h, w, 3))
    recon = target.copy()
    recon[1] = np.clip(target[1] + 0.1, 0, 1)  # row 1 is off, rows 0 and 2 are exact
    path = save_reconstruction_grid(first, target, recon, tmp_path / "sub" / "grid.png", max_rows=8)
    image = np.asarray(Image.open(path))
    assert image.shape == (b * h + (b - 1) * 2, 4 * w + 3 * 2, 3)
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temporary file left behind

    def cell(r, c):
        return image[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w]

    np.testing.assert_array_equal(cell(0, 0), to_uint8(first[0]))
    np.testing.assert_array_equal(cell(2, 1), to_uint8(target[2]))
    np.testing.assert_array_equal(cell(2, 2), to_uint8(recon[2]))
    assert cell(0, 3).max() == 0 and cell(2, 3).max() == 0
    assert cell(1, 3).max() > 0
    assert np.all(image[h : h + 2] == 255)  # separator row

    few = np.asarray(Image.open(save_reconstruction_grid(first, target, recon, tmp_path / "g2.png", 2)))
    assert few.shape[0] == 2 * h + 2


def test_same_code_grid_layout(tmp_path):
    rng = np.random.default_rng(8)
    r, c, h, w = 2, 3, 4, 5
    firsts = rng.uniform(size=(r, h, w, 3))
    recons = rng.uniform(size=(c, r, h, w, 3))
    image = np.asarray(Image.open(save_same_code_grid(firsts, recons, tmp_path / "codes.png")))
    assert image.shape == (r * h + (r - 1) * 2, (c + 1) * w + c * 2, 3)
    np.testing.assert_array_equal(image[h + 2 :, :w], to_uint8(firsts[1]))
    col = 1 + 2  # code tuple 2
    np.testing.assert_array_equal(image[:h, col * (w + 2) : col * (w + 2) + w], to_uint8(recons[2, 0]))
    with pytest.raises(ValueError):
        save_same_code_grid(firsts, recons[:, :1], tmp_path / "bad.png")
