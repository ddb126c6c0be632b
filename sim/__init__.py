"""Synthetic tabletop world: numpy rendering, simple physics, tasks, scripted experts, evaluator."""
