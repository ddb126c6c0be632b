"""The tabletop world: determinism, physics rules, tasks, experts, rendering, distractors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.env import EnvConfig, TabletopEnv
from sim.expert import ScriptedExpert
from sim.render import ARM_BASE, ARM_COLOUR, ARM_LINK, arm_elbow, make_background, render
from sim.tasks import TASK_KINDS, TEMPLATES
from sim.world import (
    MAX_ROTATION,
    MAX_TRANSLATION,
    OBJECT_HEIGHT,
    WorldObject,
    WorldState,
    clip_action,
    step,
)


def _rollout(env, seed, kind, noise=0.0, policy=None):
    frames = [env.reset(seed, kind)]
    expert = ScriptedExpert(env.task, noise=noise, rng=np.random.default_rng(seed))
    done, info = False, {}
    while not done:
        action = expert.act(env.state) if policy is None else policy(env)
        image, _, done, info = env.step(action)
        frames.append(image)
    return frames, info


def _state(objects, gripper=(0.5, 0.5, 0.2, 0.0), closed=False, held=None):
    return WorldState(np.array(gripper, float), closed, held, objects)


def _act(dx=0.0, dy=0.0, dz=0.0, dyaw=0.0, gripper=0.0, droll=0.0, dpitch=0.0):
    return np.array([dx, dy, dz, droll, dpitch, dyaw, gripper])


def test_same_seed_same_episode_and_other_seeds_differ():
    env = TabletopEnv()
    a, _ = _rollout(env, 7, "pick_place")
    b, _ = _rollout(env, 7, "pick_place")
    c, _ = _rollout(env, 8, "pick_place")
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert a[0].dtype == np.uint8 and a[0].shape == (64, 64, 3)


@pytest.mark.parametrize("noise", [0.0, 0.1])
@pytest.mark.parametrize("kind", TASK_KINDS)
def test_expert_succeeds_on_more_than_95_percent(kind, noise):
    env = TabletopEnv()
    wins = sum(_rollout(env, seed, kind, noise)[1]["success"] for seed in range(40))
    assert wins / 40 > 0.95


def test_closing_low_over_an_object_picks_it_and_it_follows_the_gripper():
    cube = WorldObject("red", "cube", 0.5, 0.5, 0.06)
    s = _state([cube], gripper=(0.5, 0.5, OBJECT_HEIGHT + 0.01, 0.0))
    s = step(s, _act(gripper=1.0))
    assert s.held == 0 and s.closed
    s = step(s, _act(dx=0.04, dz=0.05, dyaw=0.2, gripper=1.0))
    obj = s.objects[0]
    assert (obj.x, obj.y) == pytest.approx((0.54, 0.5)) and obj.z > 0.04
    assert obj.yaw == pytest.approx(0.2)


def test_closing_high_above_an_object_grasps_nothing():
    s = step(
        _state([WorldObject("red", "cube", 0.5, 0.5, 0.06)], gripper=(0.5, 0.5, 0.2, 0.0)), _act(gripper=1.0)
    )
    assert s.closed and s.held is None


def test_release_over_another_object_stacks_and_over_the_table_never_overlaps():
    a = WorldObject("red", "cube", 0.3, 0.5, 0.06)
    b = WorldObject("blue", "ball", 0.6, 0.5, 0.06)
    s = _state([a, b], gripper=(0.6, 0.5, 0.2, 0.0), closed=True, held=0)
    s = step(s, _act(gripper=1.0))  # the held object snaps under the gripper
    stacked = step(s, _act(gripper=0.0))
    assert stacked.held is None and stacked.objects[0].on == 1
    assert stacked.objects[0].z == pytest.approx(OBJECT_HEIGHT)
    # released half over the other object: lands on the table, pushed clear of it
    s = _state([a, b], gripper=(0.6 - 0.07, 0.5, 0.2, 0.0), closed=True, held=0)
    landed = step(step(s, _act(gripper=1.0)), _act(gripper=0.0))
    o0, o1 = landed.objects
    assert o0.on is None and o0.z == 0.0
    assert math.hypot(o0.x - o1.x, o0.y - o1.y) >= o0.radius + o1.radius - 1e-9


def test_a_closed_gripper_at_table_height_pushes_and_the_stack_moves_along():
    base = WorldObject("red", "cube", 0.5, 0.5, 0.06)
    top = WorldObject("blue", "ball", 0.5, 0.5, 0.05, z=OBJECT_HEIGHT, on=0)
    s = _state([base, top], gripper=(0.4, 0.5, 0.02, 0.0), closed=True)
    for _ in range(4):
        s = step(s, _act(dx=0.05, gripper=1.0))
    assert s.objects[0].x > 0.6 and s.objects[1].x == pytest.approx(s.objects[0].x)
    # the open gripper straddles objects instead of pushing them
    s = _state([WorldObject("red", "cube", 0.5, 0.5, 0.06)], gripper=(0.4, 0.5, 0.02, 0.0))
    for _ in range(4):
        s = step(s, _act(dx=0.05))
    assert s.objects[0].x == 0.5


def test_action_limits_and_ignored_roll_pitch():
    clipped = clip_action(_act(dx=1.0, dy=-1.0, dz=0.01, dyaw=2.0, gripper=1.0))
    assert clipped.tolist() == [MAX_TRANSLATION, -MAX_TRANSLATION, 0.01, 0.0, 0.0, MAX_ROTATION, 1.0]
    s = _state([WorldObject("red", "cube", 0.2, 0.2, 0.06)])
    a = step(s, _act(dx=0.01, droll=0.2, dpitch=-0.2))
    b = step(s, _act(dx=0.01))
    assert np.array_equal(a.gripper, b.gripper)
    with pytest.raises(ValueError, match="7 values"):
        clip_action(np.zeros(6))
    with pytest.raises(ValueError, match="non-finite"):
        clip_action(_act(dx=np.nan))


def test_instructions_name_the_objects_and_vary():
    env = TabletopEnv()
    seen = {kind: set() for kind in TASK_KINDS}
    for seed in range(30):
        kind = TASK_KINDS[seed % 3]
        env.reset(seed, kind)
        assert env.state.objects[env.task.source].name in env.instruction
        if kind == "pick_place":
            assert env.state.objects[env.task.target].name in env.instruction
        seen[kind].add(env.task.template)
    assert all(len(templates) > 1 for templates in seen.values())
    assert all(len(TEMPLATES[k]) >= 3 for k in TASK_KINDS)


def _gripper_pixels(image):
    return int(((image == [200, 200, 210]).all(-1)).sum())


def test_rendering_shows_height_yaw_and_open_closed():
    background = make_background(128, np.random.default_rng(0))
    obj = [WorldObject("red", "cube", 0.2, 0.2, 0.06)]
    low = render(_state(obj, gripper=(0.6, 0.6, 0.02, 0.0)), background)
    high = render(_state(obj, gripper=(0.6, 0.6, 0.35, 0.0)), background)
    turned = render(_state(obj, gripper=(0.6, 0.6, 0.02, 1.0)), background)
    closed = render(_state(obj, gripper=(0.6, 0.6, 0.02, 0.0), closed=True), background)
    assert _gripper_pixels(high) > 1.3 * _gripper_pixels(low) > 0  # higher looks bigger
    for other in (turned, closed):
        assert (other != low).any(axis=-1).sum() > 20


@pytest.mark.parametrize("hand", [(0.05, 0.05), (0.95, 0.05), (0.5, 0.5), (0.05, 0.95), (0.95, 0.95)])
def test_arm_links_keep_their_length_over_the_whole_table(hand):
    ex, ey = arm_elbow(*hand)
    assert math.hypot(ex - ARM_BASE[0], ey - ARM_BASE[1]) == pytest.approx(ARM_LINK)
    assert math.hypot(hand[0] - ex, hand[1] - ey) == pytest.approx(ARM_LINK)


def test_the_arm_moves_far_from_the_gripper_whichever_way_it_moves():
    """A move along x or along y alone changes arm pixels well away from both gripper positions."""
    size = 64
    background = make_background(size, np.random.default_rng(0))
    obj = [WorldObject("red", "cube", 0.15, 0.15, 0.06)]
    start = render(_state(obj, gripper=(0.5, 0.4, 0.2, 0.0)), background)
    assert (start == ARM_COLOUR).all(-1)[-1].any()  # the arm enters at the bottom edge
    centres = (np.arange(size) + 0.5) / size
    for moved in ((0.6, 0.4), (0.5, 0.5)):
        after = render(_state(obj, gripper=(*moved, 0.2, 0.0)), background)
        far = np.ones((size, size), bool)
        for gx, gy in ((0.5, 0.4), moved):
            far &= np.hypot(centres[None, :] - gx, centres[:, None] - gy) > 0.15
        assert ((start != after).any(-1) & far).sum() > 20


def test_distractors_are_off_by_default_and_move_the_pixels_when_on():
    noop = lambda env: np.zeros(7)  # noqa: E731
    quiet = EnvConfig(lighting_noise=0.0)
    frames, _ = _rollout(TabletopEnv(quiet), 3, "reach", policy=noop)
    assert all(np.array_equal(frames[0], f) for f in frames[:10])
    for config in (
        EnvConfig(lighting_noise=0.0, moving_distractor=True),
        EnvConfig(lighting_noise=0.0, camera_jitter=1.5),
    ):
        frames, _ = _rollout(TabletopEnv(config), 3, "reach", policy=noop)
        assert sum(not np.array_equal(frames[0], f) for f in frames[1:10]) >= 5


def test_bigger_images_and_config_errors():
    assert TabletopEnv(EnvConfig(image_size=256)).reset(0).shape == (256, 256, 3)
    with pytest.raises(ValueError, match="image_size"):
        EnvConfig(image_size=8)
    with pytest.raises(ValueError, match="min_objects"):
        EnvConfig(min_objects=4, max_objects=3)
    with pytest.raises(RuntimeError, match="reset"):
        TabletopEnv().step(np.zeros(7))
