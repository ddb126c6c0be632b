"""Tasks of the tabletop world: sampling, instructions (with paraphrases), success checks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from sim.world import COLOURS, SHAPES, WorldObject, WorldState

TASK_KINDS: tuple[str, ...] = ("pick_place", "push", "reach")
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "top": (0.0, -1.0),
    "bottom": (0.0, 1.0),
}
PUSH_GOAL = 0.25  # pushed past 0.25 (left/top) or 0.75 (right/bottom) of the table

TEMPLATES: dict[str, tuple[str, ...]] = {
    "pick_place": (
        "pick up the {a} and put it on the {b}",
        "put the {a} on top of the {b}",
        "place the {a} on the {b}",
        "stack the {a} on the {b}",
    ),
    "push": (
        "push the {a} to the {d}",
        "slide the {a} to the {d} of the table",
        "move the {a} towards the {d} edge",
    ),
    "reach": (
        "move the gripper to the {a}",
        "reach for the {a}",
        "go to the {a}",
    ),
}


@dataclasses.dataclass(frozen=True)
class Task:
    """One task instance: what to do, with which objects, and how it is worded."""

    kind: str
    source: int  # the object acted on
    target: int | None = None  # pick_place: the object to stack on
    direction: str | None = None  # push: left / right / top / bottom
    template: int = 0

    def instruction(self, objects: list[WorldObject]) -> str:
        words = {"a": objects[self.source].name, "d": self.direction or ""}
        if self.target is not None:
            words["b"] = objects[self.target].name
        return TEMPLATES[self.kind][self.template].format(**words)

    def success(self, state: WorldState) -> bool:
        obj = state.objects[self.source]
        if self.kind == "pick_place":
            return state.held is None and obj.on == self.target
        if self.kind == "push":
            if state.held == self.source:
                return False
            coord = obj.x if self.direction in ("left", "right") else obj.y
            return coord < PUSH_GOAL if self.direction in ("left", "top") else coord > 1.0 - PUSH_GOAL
        if self.kind == "reach":
            gx, gy, gz, _ = state.gripper
            return math.hypot(gx - obj.x, gy - obj.y) < obj.radius and gz < obj.top + 0.06
        raise ValueError(f"unknown task kind {self.kind!r}")


def sample_scene(rng: np.random.Generator, num_objects: int) -> list[WorldObject]:
    """Objects with distinct (colour, shape) names at non-overlapping spots away from the edges."""
    names = [(c, s) for c in COLOURS for s in SHAPES]
    chosen = rng.choice(len(names), size=num_objects, replace=False)
    objects: list[WorldObject] = []
    for k in chosen:
        colour, shape = names[k]
        radius = float(rng.uniform(0.05, 0.065))
        for _ in range(1000):
            x, y = rng.uniform(0.3, 0.7, size=2) if not objects else rng.uniform(0.15, 0.85, size=2)
            if all(math.hypot(x - o.x, y - o.y) > radius + o.radius + 0.04 for o in objects):
                break
        else:
            raise RuntimeError("could not place objects without overlap")
        objects.append(
            WorldObject(colour, shape, float(x), float(y), radius, yaw=float(rng.uniform(-0.6, 0.6)))
        )
    return objects


def sample_task(rng: np.random.Generator, objects: list[WorldObject], kind: str) -> Task:
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; choose from {TASK_KINDS}")
    template = int(rng.integers(len(TEMPLATES[kind])))
    if kind == "pick_place":
        source, target = (int(i) for i in rng.choice(len(objects), size=2, replace=False))
        return Task(kind, source, target=target, template=template)
    if kind == "push":
        source = 0  # the first object is placed near the centre (see sample_scene)
        direction = str(rng.choice(list(DIRECTIONS)))
        return Task(kind, source, direction=direction, template=template)
    return Task(kind, int(rng.integers(len(objects))), template=template)
