"""The action every model here predicts: a 7-D end-effector command, LAPA's and Open X's order."""

ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
ACTION_DIMS = len(ACTION_NAMES)
# units of LAPA's and SIMPLER's end-effector deltas (a dataset may record its own); the gripper is a
# dimensionless open/closed value in the convention of ``bins.GRIPPER_CONVENTIONS``
ACTION_UNITS = ("m", "m", "m", "rad", "rad", "rad", "1")
DELTA_DIMS = 6  # translation and rotation deltas (they add up over a pair of frames); then the gripper
