"""A top-down numpy renderer for the tabletop world (no GPU, no display).

Every primitive is rasterised inside its own bounding box, so a 64x64 frame costs
a few hundred microseconds. Height is visible: things higher up are drawn larger
and their shadows fall further away; the gripper shows its yaw (finger axis) and
whether it is open (finger gap). A two-link arm (a SCARA robot seen from above) joins
the gripper to a base beyond the table's bottom edge, so any move of the gripper moves
many pixels: the arm is what a video model sees of the motion.
"""

from __future__ import annotations

import math

import numpy as np

from sim.world import COLOURS, OBJECT_HEIGHT, WorldState

SHADOW_SHIFT = (0.35, 0.25)  # shadow offset per unit of height (x, y)
SHADOW_DARKEN = 0.55
GRIPPER_COLOUR = np.array([70, 70, 80], np.float32)
FINGER_COLOUR = np.array([200, 200, 210], np.float32)
HUB_COLOUR = np.array([20, 20, 25], np.float32)
ARM_COLOUR = np.array([95, 95, 110], np.float32)
ARM_BASE = (0.5, 1.15)  # the shoulder, below the table's bottom edge (table coordinates)
ARM_LINK = 0.62  # length of each link; reach 1.24 covers all but the far corners (1.25 away)
ARM_WIDTH = 0.025  # half-width of the forearm; the upper arm is 1.2 times as wide


def make_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Table texture: a base colour, low-frequency blotches, grain and a light gradient."""
    base = np.array([150, 120, 90], np.float32) + rng.uniform(-15, 15, size=3)
    coarse = rng.normal(0.0, 1.0, size=(6, 6)).astype(np.float32)
    idx = np.linspace(0, 5, size)
    i0 = np.floor(idx).astype(int).clip(0, 4)
    frac = (idx - i0).astype(np.float32)
    rows = coarse[i0] * (1 - frac)[:, None] + coarse[i0 + 1] * frac[:, None]
    blotch = rows[:, i0] * (1 - frac)[None, :] + rows[:, i0 + 1] * frac[None, :]
    grain = rng.normal(0.0, 1.0, size=(size, size)).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    light = 1.0 + 0.08 * (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None])
    image = (base[None, None, :] + 6.0 * blotch[..., None] + 3.0 * grain[..., None]) * light[..., None]
    return image.clip(0, 255).astype(np.float32)


class Canvas:
    """A float32 RGB image with primitives drawn in table coordinates."""

    def __init__(self, background: np.ndarray, offset: tuple[float, float] = (0.0, 0.0)):
        self.image = background.copy()
        self.size = background.shape[0]
        self.offset = offset  # camera jitter in pixels
        self._centres = np.arange(self.size, dtype=np.float32) + 0.5  # pixel centres

    def _box(self, cx: float, cy: float, extent: float):
        s = self.size
        px, py = cx * s + self.offset[0], cy * s + self.offset[1]
        r = extent * s + 1.0
        x0, x1 = max(int(px - r), 0), min(int(px + r) + 1, s)
        y0, y1 = max(int(py - r), 0), min(int(py + r) + 1, s)
        if x0 >= x1 or y0 >= y1:
            return None
        xs = (self._centres[x0:x1] - px) / s
        ys = (self._centres[y0:y1] - py) / s
        return (slice(y0, y1), slice(x0, x1)), xs[None, :], ys[:, None]

    def shape(
        self,
        kind: str,
        cx: float,
        cy: float,
        radius: float,
        yaw: float,
        colour,
        alpha: float = 1.0,
        darken: float | None = None,
    ) -> None:
        """Draws a filled cube (square), ball (circle) or triangle; ``darken`` draws a shadow instead."""
        box = self._box(cx, cy, radius * 1.42)
        if box is None:
            return
        region, x, y = box
        c, s = math.cos(yaw), math.sin(yaw)
        u, v = c * x + s * y, -s * x + c * y
        if kind == "ball":
            mask = u * u + v * v <= radius * radius
        elif kind == "cube":
            half = radius * 0.85
            mask = (np.abs(u) <= half) & (np.abs(v) <= half)
        elif kind == "triangle":  # equilateral, circumradius = radius, pointing along the yaw
            mask = (
                (u >= -0.5 * radius)
                & (u * 0.5 + v * 0.866 <= 0.5 * radius)
                & (u * 0.5 - v * 0.866 <= 0.5 * radius)
            )
        elif kind == "bar":  # a rectangle radius long along u and radius/3 wide
            mask = (np.abs(u) <= radius) & (np.abs(v) <= radius / 3.0)
        else:
            raise ValueError(f"unknown shape {kind!r}")
        self._fill(region, mask, colour, alpha, darken)

    def rod(self, x0: float, y0: float, x1: float, y1: float, half_width: float, colour) -> None:
        """Draws a segment from (x0, y0) to (x1, y1) with round ends, ``half_width`` wide each side."""
        box = self._box((x0 + x1) / 2, (y0 + y1) / 2, math.hypot(x1 - x0, y1 - y0) / 2 + half_width)
        if box is None:
            return
        region, x, y = box  # relative to the segment's midpoint
        hx, hy = (x1 - x0) / 2, (y1 - y0) / 2
        t = np.clip((x * hx + y * hy) / max(hx * hx + hy * hy, 1e-12), -1.0, 1.0)
        mask = (x - t * hx) ** 2 + (y - t * hy) ** 2 <= half_width * half_width
        self._fill(region, mask, colour, 1.0, None)

    def _fill(self, region, mask: np.ndarray, colour, alpha: float, darken: float | None) -> None:
        pixels = self.image[region]
        where = mask[..., None]
        if darken is not None:
            np.multiply(pixels, np.float32(darken), out=pixels, where=where)
        elif alpha >= 1.0:
            np.copyto(pixels, np.asarray(colour, np.float32), where=where)
        else:
            blend = (1 - alpha) * pixels + alpha * np.asarray(colour, np.float32)
            np.copyto(pixels, blend, where=where)


def height_scale(z: float) -> float:
    """Apparent size factor: the camera is above the table, so higher is larger."""
    return 1.0 + 1.2 * z


def render(
    state: WorldState,
    background: np.ndarray,
    offset: tuple[float, float] = (0.0, 0.0),
    brightness: float = 1.0,
    distractor: tuple[float, float] | None = None,
) -> np.ndarray:
    """Renders ``state`` over ``background`` as uint8 RGB [H, W, 3]."""
    canvas = Canvas(background, offset)
    if distractor is not None:  # a pale moving blob that is not part of the task
        canvas.shape("ball", distractor[0], distractor[1], 0.09, 0.0, (230, 230, 220), alpha=0.6)
    order = sorted(range(len(state.objects)), key=lambda i: state.objects[i].z)
    for i in order:  # shadows first, so that objects cover shadows of lower things
        obj = state.objects[i]
        lift = obj.z + OBJECT_HEIGHT
        canvas.shape(
            obj.shape,
            obj.x + SHADOW_SHIFT[0] * lift,
            obj.y + SHADOW_SHIFT[1] * lift,
            obj.radius,
            obj.yaw,
            None,
            darken=SHADOW_DARKEN,
        )
    gx, gy, gz, gyaw = (float(v) for v in state.gripper)
    _arm(canvas, gx, gy)  # beneath the objects, so that it never hides them
    _gripper_parts(
        canvas, gx + SHADOW_SHIFT[0] * gz, gy + SHADOW_SHIFT[1] * gz, 0.0, gyaw, state.closed, shadow=True
    )
    for i in order:
        obj = state.objects[i]
        canvas.shape(obj.shape, obj.x, obj.y, obj.radius * height_scale(obj.z), obj.yaw, COLOURS[obj.colour])
    _gripper_parts(canvas, gx, gy, gz, gyaw, state.closed, shadow=False)
    image = canvas.image
    if brightness != 1.0:
        image = image * brightness
    return image.clip(0, 255).astype(np.uint8)


def arm_elbow(x: float, y: float) -> tuple[float, float]:
    """The elbow of the two-link arm whose hand is at (x, y): planar inverse kinematics, elbow to
    the right of the shoulder-hand line; a hand out of reach gets the arm stretched towards it."""
    bx, by = ARM_BASE
    reach = max(math.hypot(x - bx, y - by), 1e-9)
    angle = math.atan2(y - by, x - bx) + math.acos(min(1.0, reach / (2 * ARM_LINK)))
    return bx + ARM_LINK * math.cos(angle), by + ARM_LINK * math.sin(angle)


def _arm(canvas: Canvas, x: float, y: float) -> None:
    ex, ey = arm_elbow(x, y)
    canvas.rod(*ARM_BASE, ex, ey, 1.2 * ARM_WIDTH, ARM_COLOUR)
    canvas.rod(ex, ey, x, y, ARM_WIDTH, ARM_COLOUR)


def _gripper_parts(
    canvas: Canvas, x: float, y: float, z: float, yaw: float, closed: bool, shadow: bool
) -> None:
    """A palm bar across the finger axis, a dark hub at its centre, and two fingers whose gap shows
    open/closed."""
    scale = height_scale(z)
    gap = (0.018 if closed else 0.055) * scale
    c, s = math.cos(yaw), math.sin(yaw)
    darken = SHADOW_DARKEN if shadow else None
    canvas.shape("bar", x, y, gap + 0.012 * scale, yaw, GRIPPER_COLOUR, darken=darken)
    for sign in (-1.0, 1.0):
        fx, fy = x + sign * gap * c, y + sign * gap * s
        canvas.shape("cube", fx, fy, 0.024 * scale, yaw, FINGER_COLOUR, darken=darken)
    canvas.shape("ball", x, y, 0.03 * scale, 0.0, HUB_COLOUR, darken=darken)
