"""LWM-compatible VQGAN image tokenizer: model, checkpoints, preprocessing, training, pre-tokenizer."""
