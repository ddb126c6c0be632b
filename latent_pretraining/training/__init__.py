"""The one training infrastructure: sharded state, step compilation, checkpoints, logging, the loop."""
