"""State and physics of the synthetic tabletop world.

Coordinates: the table is the unit square seen from above; ``x`` grows to the
right, ``y`` grows downwards (image rows), so "top" is small ``y``. ``z`` is the
height above the table. Units are table widths per step for translations and
radians for rotations.

Action (the project's 7-D end-effector delta): ``dx, dy, dz, droll, dpitch, dyaw,
gripper`` with gripper 0 = open, 1 = closed (thresholded at 0.5). Roll and pitch
have no effect; they exist for format compatibility. Translations are clipped to
``MAX_TRANSLATION`` per step and yaw to ``MAX_ROTATION``.

Rules: a closing gripper low over the centre of an object with nothing on top
grasps it; the held object follows the gripper; opening releases it onto the
object below it (stacking) or onto the table, where objects never overlap. A
closed, empty gripper at table height pushes objects out of its way.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

ACTION_DIM = 7
MAX_TRANSLATION = 0.05  # per step, each of dx, dy, dz
MAX_ROTATION = 0.25  # radians per step, dyaw
GRIPPER_THRESHOLD = 0.5  # action[6] >= threshold means "closed"

Z_MAX = 0.4
OBJECT_HEIGHT = 0.05
FINGER_RADIUS = 0.03  # footprint of the closed gripper when it pushes
PUSH_HEIGHT = 0.06  # a closed gripper below this height pushes
GRASP_REACH = 0.03  # the gripper grasps when at most this far above an object's top
GRASP_CENTRING = 0.8  # ... and within this fraction of the object's radius of its centre
WORKSPACE = (0.03, 0.97)  # gripper x/y limits

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES: tuple[str, ...] = ("cube", "ball", "triangle")


@dataclasses.dataclass
class WorldObject:
    colour: str
    shape: str
    x: float
    y: float
    radius: float
    yaw: float = 0.0
    z: float = 0.0  # height of the object's bottom
    on: int | None = None  # index of the object it rests on

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def top(self) -> float:
        return self.z + OBJECT_HEIGHT


@dataclasses.dataclass
class WorldState:
    gripper: np.ndarray  # [x, y, z, yaw]
    closed: bool
    held: int | None
    objects: list[WorldObject]

    def copy(self) -> WorldState:
        return WorldState(
            self.gripper.copy(), self.closed, self.held, [dataclasses.replace(o) for o in self.objects]
        )

    def vector(self) -> np.ndarray:
        """Proprioceptive state: gripper x, y, z, yaw and closed (0/1)."""
        return np.array([*self.gripper, float(self.closed)], np.float32)


def clip_action(action: np.ndarray) -> np.ndarray:
    """Clips an action to the documented limits (gripper kept as given)."""
    action = np.asarray(action, np.float64).reshape(-1)
    if action.shape != (ACTION_DIM,):
        raise ValueError(
            f"action must have {ACTION_DIM} values (dx, dy, dz, droll, dpitch, dyaw, gripper), "
            f"got shape {action.shape}"
        )
    if not np.isfinite(action).all():
        raise ValueError(f"action has non-finite values: {action.tolist()}")
    out = action.copy()
    out[:3] = np.clip(out[:3], -MAX_TRANSLATION, MAX_TRANSLATION)
    out[3:6] = np.clip(out[3:6], -MAX_ROTATION, MAX_ROTATION)
    return out


def _move_with_stack(state: WorldState, index: int, dx: float, dy: float) -> None:
    """Moves an object and everything stacked on it."""
    obj = state.objects[index]
    obj.x += dx
    obj.y += dy
    for i, other in enumerate(state.objects):
        if other.on == index and i != state.held:
            _move_with_stack(state, i, dx, dy)


def _keep_on_table(state: WorldState, index: int) -> None:
    obj = state.objects[index]
    x = min(max(obj.x, obj.radius), 1.0 - obj.radius)
    y = min(max(obj.y, obj.radius), 1.0 - obj.radius)
    _move_with_stack(state, index, x - obj.x, y - obj.y)


def _separate(state: WorldState, moved: int, iterations: int = 6) -> None:
    """Pushes table-level objects apart so that none overlap, starting from ``moved``."""
    for _ in range(iterations):
        clean = True
        for i, a in enumerate(state.objects):
            if a.z > 0 or i == state.held:
                continue
            for j, b in enumerate(state.objects):
                if j <= i or b.z > 0 or j == state.held:
                    continue
                dx, dy = b.x - a.x, b.y - a.y
                dist = math.hypot(dx, dy)
                gap = a.radius + b.radius - dist
                if gap <= 1e-9:
                    continue
                clean = False
                ux, uy = (dx / dist, dy / dist) if dist > 1e-9 else (1.0, 0.0)
                # the object that was just moved stays put; the other one yields
                if j == moved:
                    _move_with_stack(state, i, -ux * gap, -uy * gap)
                    _keep_on_table(state, i)
                else:
                    _move_with_stack(state, j, ux * gap, uy * gap)
                    _keep_on_table(state, j)
        if clean:
            return


def _support_under(state: WorldState, index: int) -> int | None:
    """The highest other object under ``index``'s centre, if any."""
    obj = state.objects[index]
    best, best_top = None, -1.0
    for j, other in enumerate(state.objects):
        if j == index:
            continue
        if math.hypot(obj.x - other.x, obj.y - other.y) < other.radius and other.top > best_top:
            best, best_top = j, other.top
    return best


def _graspable(state: WorldState) -> int | None:
    gx, gy, gz, _ = state.gripper
    candidates = []
    for i, obj in enumerate(state.objects):
        covered = any(other.on == i for other in state.objects)
        close = math.hypot(gx - obj.x, gy - obj.y) <= GRASP_CENTRING * obj.radius
        if close and not covered and obj.top - 0.01 <= gz <= obj.top + GRASP_REACH:
            candidates.append((obj.top, i))
    return max(candidates)[1] if candidates else None


def step(state: WorldState, action: np.ndarray) -> WorldState:
    """Applies one (clipped) action and returns the new state (the input is not modified)."""
    action = clip_action(action)
    s = state.copy()
    old = s.gripper.copy()
    lo, hi = WORKSPACE
    s.gripper[0] = np.clip(old[0] + action[0], lo, hi)
    s.gripper[1] = np.clip(old[1] + action[1], lo, hi)
    s.gripper[2] = np.clip(old[2] + action[2], 0.0, Z_MAX)
    s.gripper[3] = (old[3] + action[5] + math.pi) % (2 * math.pi) - math.pi
    want_closed = action[6] >= GRIPPER_THRESHOLD

    if s.held is not None:
        held = s.objects[s.held]
        held.x, held.y = float(s.gripper[0]), float(s.gripper[1])
        held.z = max(0.0, float(s.gripper[2]) - OBJECT_HEIGHT)
        held.yaw += float(action[5])

    if s.closed and s.held is None and s.gripper[2] < PUSH_HEIGHT:
        gx, gy = float(s.gripper[0]), float(s.gripper[1])
        for i, obj in enumerate(s.objects):
            if obj.z > 0:
                continue
            dx, dy = obj.x - gx, obj.y - gy
            dist = math.hypot(dx, dy)
            reach = obj.radius + FINGER_RADIUS
            if dist < reach:
                if dist > 1e-9:
                    ux, uy = dx / dist, dy / dist
                else:  # dead centre: push along the motion
                    motion = s.gripper[:2] - old[:2]
                    norm = float(np.hypot(*motion)) or 1.0
                    ux, uy = motion[0] / norm, motion[1] / norm
                _move_with_stack(s, i, ux * (reach - dist), uy * (reach - dist))
                _keep_on_table(s, i)
                _separate(s, i)

    if want_closed and not s.closed:
        s.closed = True
        grasped = _graspable(s)
        if grasped is not None:
            s.held = grasped
            obj = s.objects[grasped]
            obj.on = None
            obj.x, obj.y = float(s.gripper[0]), float(s.gripper[1])
            obj.z = max(0.0, float(s.gripper[2]) - OBJECT_HEIGHT)
    elif not want_closed and s.closed:
        s.closed = False
        if s.held is not None:
            released, s.held = s.held, None
            support = _support_under(s, released)
            obj = s.objects[released]
            if support is not None:
                obj.on, obj.z = support, s.objects[support].top
            else:
                obj.on, obj.z = None, 0.0
                _keep_on_table(s, released)
                _separate(s, released)
    return s
