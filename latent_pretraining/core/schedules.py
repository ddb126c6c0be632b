"""Learning-rate schedules shared by the trainers."""

from __future__ import annotations

import optax


def warmup_schedule(
    kind: str, peak: float, warmup_steps: int, total_steps: int, end: float = 0.0
) -> optax.Schedule:
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then ``cosine`` decay to ``end``
    at ``total_steps`` or ``constant``."""
    total_steps = max(total_steps, warmup_steps + 1)
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, total_steps, end)
    if kind == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup_steps), optax.constant_schedule(peak)], [warmup_steps]
        )
    raise ValueError(f"schedule {kind!r} is not 'cosine' or 'constant'")
