"""Actions: the action spec, the action tokenizer (bins) and the latent-to-action decoder."""
