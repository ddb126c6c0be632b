"""The pipeline report's figures (matplotlib, written as PNG): training curves, the LAM's code use
per position, its reconstructions beside the copy baseline, closed-loop success per policy and
task with 95% intervals, and rollouts of two policies side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: no display on a training machine
import matplotlib.pyplot as plt
from matplotlib import animation
from PIL import Image, ImageSequence

Curve = tuple[Sequence[int], Sequence[float]]  # steps, values


def training_curves(curves: Mapping[str, Curve], path: Path) -> None:
    """One panel per run: its training loss against the step."""
    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 2.8), squeeze=False)
    for ax, (name, (steps, values)) in zip(axes[0], curves.items(), strict=True):
        ax.plot(steps, values, lw=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def code_usage(usage: Sequence[float], path: Path) -> None:
    """The fraction of the codebook each latent position uses on held-out pairs (1.0: every code)."""
    fig, ax = plt.subplots(figsize=(3.5, 2.8))
    ax.bar(range(len(usage)), usage)
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xticks(range(len(usage)))
    ax.set_xlabel("latent position")
    ax.set_ylabel("codes used (fraction)")
    ax.set_ylim(0, 1.05)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def success(rates: Mapping[str, Mapping[str, tuple[float, float, float]]], path: Path) -> None:
    """Grouped bars: success rate per task (and overall) for each policy, with its 95% interval;
    ``rates[policy][task] = (rate, low, high)``."""
    tasks = list(next(iter(rates.values())))
    width = 0.8 / len(rates)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(tasks), 3.0))
    for i, (policy, by_task) in enumerate(rates.items()):
        xs = [t + (i - (len(rates) - 1) / 2) * width for t in range(len(tasks))]
        values = [by_task[task][0] for task in tasks]
        errors = [[v - by_task[t][1] for v, t in zip(values, tasks, strict=True)],
                  [by_task[t][2] - v for v, t in zip(values, tasks, strict=True)]]  # fmt: skip
        ax.bar(xs, values, width, yerr=errors, capsize=2, label=policy)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=len(rates))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) / 255.0 - b.astype(np.float64) / 255.0) ** 2))
    return 10.0 * np.log10(1.0 / max(mse, 1e-10))


def _error(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """|prediction - target| x4 as uint8: black where the prediction is exact."""
    return np.clip(np.abs(prediction.astype(np.int16) - target) * 4, 0, 255).astype(np.uint8)


def lam_reconstructions(
    current: np.ndarray, future: np.ndarray, reconstruction: np.ndarray, path: Path, max_rows: int = 6
) -> None:
    """One row per held-out pair (uint8 ``[B, H, W, 3]`` each): the current and future frames, the
    LAM's reconstruction of the future, and the errors of that reconstruction and of the copy
    baseline (predicting the current frame), each with its PSNR against the future frame."""
    columns = (
        "current x_t",
        "future x_t+H",
        "reconstruction",
        "|recon - future| x4",
        "|copy x_t - future| x4",
    )
    rows = min(len(current), max_rows)
    fig, axes = plt.subplots(
        rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows + 0.3), squeeze=False
    )
    for r in range(rows):
        recon, copy, target = reconstruction[r], current[r], future[r]
        cells = (copy, target, recon, _error(recon, target), _error(copy, target))
        notes = ("", "", "", f"{_psnr(recon, target):.1f} dB", f"{_psnr(copy, target):.1f} dB")
        for ax, cell, note, title in zip(axes[r], cells, notes, columns, strict=True):
            ax.imshow(cell, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(note, fontsize=7)
            if r == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def rollouts_side_by_side(rollouts: Mapping[str, Path], path: Path, fps: int = 10) -> None:
    """One animated GIF: the rollout GIFs of several policies on the same episode, side by side and
    titled with their names (``rollouts[title] = gif``); a rollout that ended holds its last frame."""
    clips = {}
    for title, gif in rollouts.items():
        with Image.open(gif) as image:
            clips[title] = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]
    length = max(len(frames) for frames in clips.values())
    fig, axes = plt.subplots(1, len(clips), figsize=(2.4 * len(clips), 2.7), squeeze=False)
    shown = []
    for ax, (title, frames) in zip(axes[0], clips.items(), strict=True):
        shown.append(ax.imshow(frames[0], interpolation="nearest"))
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    step = fig.suptitle("step 0", fontsize=8)
    fig.tight_layout()

    def show(t: int) -> list:
        for artist, frames in zip(shown, clips.values(), strict=True):
            artist.set_data(frames[min(t, len(frames) - 1)])
        step.set_text(f"step {t}")
        return [*shown, step]

    animation.FuncAnimation(fig, show, frames=length, blit=False).save(
        path, writer=animation.PillowWriter(fps=fps)
    )
    plt.close(fig)


def labelled_data(curve: Mapping[str, Mapping[int, tuple[float, float, float]]], path: Path) -> None:
    """Success rate against the number of labelled trajectories, one line per arm, with 95% intervals;
    ``curve[arm][trajectories] = (rate, low, high)``."""
    fig, ax = plt.subplots(figsize=(4.0, 3.0))
    for arm, points in curve.items():
        counts = sorted(points)
        rates = [points[c][0] for c in counts]
        errors = [[r - points[c][1] for r, c in zip(rates, counts, strict=True)],
                  [points[c][2] - r for r, c in zip(rates, counts, strict=True)]]  # fmt: skip
        ax.errorbar(counts, rates, yerr=errors, marker="o", capsize=3, label=arm)
    ax.set_xlabel("labelled trajectories")
    ax.set_ylabel("closed-loop success")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
