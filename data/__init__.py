"""Data tools run as modules (finetune preprocessing, RLDS export, synthetic world data)."""
