"""The pipeline report's figures (matplotlib, written as PNG): training curves, the LAM's code use
per position, closed-loop success per policy and task with 95% intervals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a training machine
import matplotlib.pyplot as plt

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
