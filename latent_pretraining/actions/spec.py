"""The action every model here predicts: a 7-D end-effector command, LAPA's and Open X's order."""

ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
ACTION_DIMS = len(ACTION_NAMES)
DELTA_DIMS = 6  # translation and rotation deltas (they add up over a pair of frames); then the gripper
