"""Latent action model training: ``--config=lam/configs/lam.py:<model>[,<quantizer>]``.

Models: ``small`` (64x64 frames, patch 8; CPU-sized, e.g. the tabletop world; with the max-pool
code head and the kernel decoder instead of LAPA's, see ``lam/model.py``), ``lapa``
(LAPA's released ``laq_openx`` architecture and training values: 256x256, patch 32, dim 1024,
8+8 layers, batch 64, lr 1e-4, offset 30 frames) and ``tiny`` (tests). Quantizers: ``nsvq``
(LAPA's, default), ``vq_ema`` or ``fsq``. Override any field, e.g.
``--config.data.source=rlds --config.data.path=/data/bridge/1.0.0 --config.optimizer.learning_rate=1e-4``.
"""

import ml_collections

from lam.model import get_lam_config
from latent_pretraining.core.run_config import run_config


def get_config(arg: str = "small") -> ml_collections.ConfigDict:
    preset, _, quantizer = arg.partition(",")
    quantizer = quantizer or "nsvq"
    c = run_config(
        run_dir="runs/lam",
        batch_size=32,
        total_steps=3000,
        optimizer=dict(learning_rate=3e-4, weight_decay=0.01, b2=0.99, decay="all"),
    )
    c.preset = arg
    c.model = get_lam_config(preset, quantizer)
    c.data = ml_collections.ConfigDict()
    c.data.source = "tabletop"  # tabletop | folder | video | jsonl | rlds (latent_pretraining.episodes)
    c.data.path = ""  # tabletop: the folder `python -m data.make_tabletop --out DIR` wrote
    c.data.image_key = "image"  # rlds: steps/observation/<image_key>
    c.data.image_root = ""  # jsonl: the folder relative image paths may not leave ("": the JSONL's)
    c.data.offset = 1  # H in frames ...
    c.data.offset_seconds = 0.0  # ... or in seconds (> 0: H = round(seconds * fps) per video)
    c.data.drop_static = 0.0  # > 0: drop pairs whose mean |x_{t+H} - x_t| (in [0, 1]) is below this
    c.data.holdout_fraction = 0.1  # episodes held out for evaluation (split by episode)
    c.eval = ml_collections.ConfigDict()
    c.eval.max_pairs = 1024  # held-out pairs scored
    c.eval.probe_train_pairs = 4096  # training pairs whose codes fit the probes
    c.eval.probe_dims = (0, 1)  # action dims the probes predict (dx, dy)
    if preset == "lapa":
        c.data.source = "folder"
        c.data.offset = 30
        c.batch_size = 64
        c.optimizer.learning_rate = 1e-4
        c.optimizer.schedule = "constant"
        c.total_steps = 100_000
        c.eval_every = c.save_every = 5000
        c.eval.max_pairs, c.eval.probe_train_pairs = 256, 1024  # 256x256 frames are held in memory
    elif preset == "tiny":
        c.batch_size = 8
        c.total_steps = 30
        c.optimizer.warmup_steps = 5
        c.log_every = 5
        c.eval_every = 15
        c.save_every = 15
        c.eval.max_pairs = 64
        c.eval.probe_train_pairs = 256
    return c
