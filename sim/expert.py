"""Scripted experts: closed-loop controllers with privileged access to the state."""

from __future__ import annotations

import math

import numpy as np

from sim.tasks import DIRECTIONS, Task
from sim.world import (
    FINGER_RADIUS,
    MAX_ROTATION,
    MAX_TRANSLATION,
    OBJECT_HEIGHT,
    PUSH_HEIGHT,
    WorldState,
)

HOVER_Z = 0.2
CENTRE = 0.45  # the expert descends, grasps and releases within this fraction of a radius


def _towards(state: WorldState, x: float, y: float, z: float, yaw: float, closed: bool) -> np.ndarray:
    gx, gy, gz, gyaw = state.gripper
    dyaw = (yaw - gyaw + math.pi) % (2 * math.pi) - math.pi
    return np.array(
        [
            np.clip(x - gx, -MAX_TRANSLATION, MAX_TRANSLATION),
            np.clip(y - gy, -MAX_TRANSLATION, MAX_TRANSLATION),
            np.clip(z - gz, -MAX_TRANSLATION, MAX_TRANSLATION),
            0.0,
            0.0,
            np.clip(dyaw, -MAX_ROTATION, MAX_ROTATION),
            1.0 if closed else 0.0,
        ]
    )


def _go_above_then_down(
    state: WorldState, x: float, y: float, z: float, yaw: float, closed: bool, tolerance: float
) -> np.ndarray:
    """Travel at hover height and descend once within ``tolerance`` of the goal; a small
    drift on the way down is corrected at the current height, a large one from above."""
    gx, gy, gz, _ = state.gripper
    dist = math.hypot(x - gx, y - gy)
    if dist <= tolerance:
        return _towards(state, x, y, z, yaw, closed)
    if gz >= HOVER_Z - 0.02:
        return _towards(state, x, y, HOVER_Z, yaw, closed)
    if dist <= 3 * tolerance:
        return _towards(state, x, y, gz, yaw, closed)
    return _towards(state, gx, gy, HOVER_Z, yaw, closed)


class ScriptedExpert:
    """Solves every task kind from the true state; ``noise`` adds Gaussian action noise."""

    def __init__(self, task: Task, noise: float = 0.0, rng: np.random.Generator | None = None):
        self.task = task
        self.noise = noise
        self.rng = rng or np.random.default_rng(0)

    def act(self, state: WorldState) -> np.ndarray:
        kind = self.task.kind
        if kind == "reach":
            action = self._reach(state)
        elif kind == "pick_place":
            action = self._pick_place(state)
        elif kind == "push":
            action = self._push(state)
        else:
            raise ValueError(f"unknown task kind {kind!r}")
        if self.noise > 0:
            action[:3] += self.rng.normal(0.0, self.noise * MAX_TRANSLATION, size=3)
            action[5] += self.rng.normal(0.0, self.noise * MAX_ROTATION)
            action[:6] = np.clip(
                action[:6],
                [-MAX_TRANSLATION] * 3 + [-MAX_ROTATION] * 3,
                [MAX_TRANSLATION] * 3 + [MAX_ROTATION] * 3,
            )
        return action

    def _reach(self, state: WorldState) -> np.ndarray:
        obj = state.objects[self.task.source]
        return _go_above_then_down(state, obj.x, obj.y, obj.top + 0.03, obj.yaw, False, CENTRE * obj.radius)

    def _pick_place(self, state: WorldState) -> np.ndarray:
        src = state.objects[self.task.source]
        dst = state.objects[self.task.target]
        gx, gy, gz, _ = state.gripper
        near_src = math.hypot(src.x - gx, src.y - gy) <= CENTRE * src.radius
        near_dst = math.hypot(dst.x - gx, dst.y - gy) <= CENTRE * dst.radius
        if state.held != self.task.source:
            if state.held is not None or (state.closed and not near_src):
                return _towards(state, gx, gy, HOVER_Z, src.yaw, closed=False)  # drop whatever is wrong
            if state.closed:  # missed: open and retry from above
                return _towards(state, gx, gy, gz + MAX_TRANSLATION, src.yaw, closed=False)
            grasp_z = src.top + 0.005
            if near_src and gz <= grasp_z + 0.015:
                return _towards(state, src.x, src.y, grasp_z, src.yaw, closed=True)
            return _go_above_then_down(state, src.x, src.y, grasp_z, src.yaw, False, CENTRE * src.radius)
        place_z = dst.top + OBJECT_HEIGHT + 0.01  # gripper height with the held object just above dst
        if near_dst and gz <= place_z + 0.015:
            return _towards(state, gx, gy, gz, dst.yaw, closed=False)  # release
        if not near_dst and gz < HOVER_Z - 0.02:
            return _towards(state, gx, gy, HOVER_Z, dst.yaw, closed=True)  # lift before travelling
        if not near_dst:
            return _towards(state, dst.x, dst.y, HOVER_Z, dst.yaw, closed=True)
        return _towards(state, dst.x, dst.y, place_z, dst.yaw, closed=True)

    def _push(self, state: WorldState) -> np.ndarray:
        obj = state.objects[self.task.source]
        ux, uy = DIRECTIONS[self.task.direction]
        behind = obj.radius + FINGER_RADIUS + 0.015
        start_x, start_y = obj.x - ux * behind, obj.y - uy * behind
        gx, gy, gz, _ = state.gripper
        # offset of the gripper from the pushing line, and how far behind the object it is
        rel_x, rel_y = gx - obj.x, gy - obj.y
        along = rel_x * ux + rel_y * uy
        lateral = -rel_x * uy + rel_y * ux
        push_z = 0.015
        in_position = (
            gz <= PUSH_HEIGHT - 0.01 and abs(lateral) < 0.6 * obj.radius and -behind - 0.02 <= along <= 0
        )
        yaw = math.atan2(-ux, uy)  # fingers across the pushing direction
        if in_position:
            # push through the object's centre: step along the direction, correcting sideways drift
            tx = gx + ux * MAX_TRANSLATION + uy * lateral
            ty = gy + uy * MAX_TRANSLATION - ux * lateral
            return _towards(state, tx, ty, push_z, yaw, closed=True)
        return _go_above_then_down(state, start_x, start_y, push_z, yaw, True, 0.25 * obj.radius)
