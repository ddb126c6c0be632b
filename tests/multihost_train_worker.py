"""One process of the 2-process training test in test_multihost.py (not collected by pytest).

Trains the debug VLA with this host's share of every batch and records which rows it read.
"""

import json
import sys
from pathlib import Path

from latent_pretraining import train as vla_train
from latent_pretraining.configs.lapa import get_config
from latent_pretraining.core.batches import BatchStream, host_rows


def main(tokenizer: str, data: str, out: Path) -> None:
    seen = []
    original = BatchStream.__next__

    def recording(self):  # the rows of the batch about to be read (no packing: row j is example j)
        rows = host_rows(self.num_rows, self.seed, self.epoch)
        seen.append(rows[self.index * self.batch_size : (self.index + 1) * self.batch_size].tolist())
        return original(self)

    BatchStream.__next__ = recording
    config = get_config("debug_latent")
    config.data.tokenizer, config.data.train, config.data.max_length = tokenizer, data, 96
    config.run_dir, config.batch_size, config.total_steps = str(out / "run"), 8, 10
    config.log_every, config.eval_every, config.mesh = 5, 0, "1,-1,1,1"
    vla_train.train(config)
    import jax

    (out / f"rows_{jax.process_index()}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
