"""The tabletop environment: reset with a seed, step with a 7-D action, observe an RGB image."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from sim.render import make_background, render
from sim.tasks import TASK_KINDS, Task, sample_scene, sample_task
from sim.world import WorldState, step


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """World settings. Distractors are off by default."""

    image_size: int = 64
    min_objects: int = 3
    max_objects: int = 5
    max_steps: int = 100
    lighting_noise: float = 0.02  # per-frame brightness jitter (fraction)
    moving_distractor: bool = False  # a pale blob wandering over the table
    camera_jitter: float = 0.0  # per-frame camera shift, in pixels (std)

    def __post_init__(self):
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        if not 2 <= self.min_objects <= self.max_objects <= 18:
            raise ValueError(
                f"need 2 <= min_objects <= max_objects <= 18, got {self.min_objects}, {self.max_objects}"
            )


class TabletopEnv:
    """``reset(seed, task_kind)`` then ``step(action)``; everything is determined by the seed."""

    def __init__(self, config: EnvConfig | None = None):
        self.config = config or EnvConfig()
        self.state: WorldState | None = None
        self.task: Task | None = None
        self.instruction = ""
        self.steps = 0

    def reset(self, seed: int, task_kind: str | None = None) -> np.ndarray:
        cfg = self.config
        self._rng = np.random.default_rng(seed)
        kind = task_kind or TASK_KINDS[int(self._rng.integers(len(TASK_KINDS)))]
        objects = sample_scene(self._rng, int(self._rng.integers(cfg.min_objects, cfg.max_objects + 1)))
        gripper = np.array(
            [
                *self._rng.uniform(0.15, 0.85, size=2),
                self._rng.uniform(0.15, 0.3),
                self._rng.uniform(-0.5, 0.5),
            ]
        )
        self.state = WorldState(gripper=gripper, closed=False, held=None, objects=objects)
        self.task = sample_task(self._rng, objects, kind)
        self.instruction = self.task.instruction(objects)
        self._background = make_background(cfg.image_size, self._rng)
        self._distractor_phase = self._rng.uniform(0, 2 * math.pi, size=2)
        self.steps = 0
        return self.render()

    def render(self) -> np.ndarray:
        if self.state is None:
            raise RuntimeError("call reset() before render()")
        cfg = self.config
        brightness = 1.0 + cfg.lighting_noise * float(self._rng.standard_normal())
        offset = (0.0, 0.0)
        if cfg.camera_jitter > 0:
            offset = tuple(float(v) for v in self._rng.normal(0.0, cfg.camera_jitter, size=2))
        distractor = None
        if cfg.moving_distractor:
            t = 0.15 * self.steps
            phase = self._distractor_phase
            distractor = (0.5 + 0.35 * math.sin(t + phase[0]), 0.5 + 0.35 * math.sin(0.7 * t + phase[1]))
        return render(self.state, self._background, offset, brightness, distractor)

    def success(self) -> bool:
        return bool(self.task.success(self.state))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict]:
        """Returns ``(image, reward, done, info)``; reward 1 on success; done on success or time-out."""
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        self.state = step(self.state, action)
        self.steps += 1
        success = self.success()
        done = success or self.steps >= self.config.max_steps
        return self.render(), float(success), done, {"success": success, "steps": self.steps}
