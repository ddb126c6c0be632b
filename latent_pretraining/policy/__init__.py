"""The policy layer: a trained VLA as a self-describing bundle, and the object that makes it act."""
