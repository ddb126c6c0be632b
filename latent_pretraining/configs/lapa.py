"""VLA training runs: ``--config=latent_pretraining/configs/lapa.py:<preset>``.

Presets: ``latent_pretrain`` and ``finetune`` (LAPA's 7B jobs), ``debug_latent`` and
``debug_finetune`` (the debug model, CPU). Any field is overridden on the command line,
e.g. ``--config.data.train=/data/train.jsonl --config.optimizer.learning_rate=1e-4``.
"""

import ml_collections

from latent_pretraining.config import get_model_config
from latent_pretraining.core.run_config import run_config
from latent_pretraining.core.sharding import DEFAULT_RULES


def get_config(preset: str = "debug_latent") -> ml_collections.ConfigDict:
    c = run_config(
        run_dir="runs/lapa",
        mesh="1,-1,1,1",
        batch_size=128,  # rows per micro-batch
        total_steps=20000,
        log_every=10,
        optimizer=dict(learning_rate=2e-5),
    )
    c.preset = preset
    debug = preset.startswith("debug")
    c.model = get_model_config("debug" if debug else "7b")
    # (logical axis, mesh axes) pairs tried in order, e.g. (("embed", "fsdp"), ("mlp", ("tp", "sp")))
    c.logical_axis_rules = DEFAULT_RULES

    c.data = ml_collections.ConfigDict()
    c.data.train = ""  # JSONL path(s), comma-separated
    c.data.eval = ""  # held-out JSONL path(s), comma-separated (optional)
    c.data.tokenizer = ""  # LLaMA SentencePiece tokenizer.model
    c.data.max_length = 384  # input tokens per row
    c.data.packing = False  # several examples per row, isolated by segment ids
    c.data.tokens_per_frame = 256
    c.data.skip_invalid = False
    c.data.vqgan_checkpoint = ""  # encodes rows that have an image but no vision tokens
    c.data.vqgan_config = ""  # preset or JSON (default: vqgan_config.json beside the checkpoint)
    c.data.image_root = ""  # base of relative image paths (LAPA's image_absolute_path)
    c.data.pp_train = "resize"  # image preprocessing of training rows: resize | augment | center_crop
    c.data.pp_eval = ""  # of held-out rows and deployment; "": the deterministic counterpart of pp_train
    c.data.action_bins = ""  # bins CSV: evaluation reports action MAE in the data's units

    c.loss = ml_collections.ConfigDict()  # per-modality weights of the next-token losses
    c.loss.text, c.loss.vision, c.loss.latent, c.loss.action = 0.01, 0.0, 0.99, 0.0

    c.init = ""  # "" (from scratch) | "params::<LAPA/LWM file>" | "<run_dir>" of this trainer
    # vocabularies (latent, action; comma-separated) whose table and head a params:: init may lack,
    # then initialised; any other missing tensor is an error
    c.init_new_vocabs = "latent,action"  # LAPA's latent pretraining starts from LWM, which has neither
    c.eval_batches = 0  # 0: every held-out row; N: at most N batches
    c.export_params = ""  # write final params in LAPA's streaming format here (bf16)
    c.export_policy = ""  # write a policy bundle of the final model here (latent_pretraining.policy)

    if not debug:  # LAPA's jobs: constant 2e-5, no warmup, 384-token rows, remat of whole blocks
        c.optimizer.schedule, c.optimizer.warmup_steps = "constant", 0
        c.model.remat_policy = "full"
        c.mesh = "!-1,8,1,1"
        c.batch_size, c.total_steps = 256, 70000
    if preset in ("finetune", "debug_finetune"):
        c.loss.text, c.loss.latent, c.loss.action = 0.0, 0.0, 1.0
        c.init_new_vocabs = "action"  # a latent-pretrained LAPA checkpoint has no action table or head
        if not debug:
            c.mesh, c.batch_size, c.total_steps = "!-1,4,1,1", 128, 2000
    if debug:
        c.data.max_length = 128
        c.data.tokens_per_frame = 16
        c.batch_size = 8
        c.total_steps = 100
        c.optimizer.learning_rate = 1e-3
        c.optimizer.warmup_steps = 10
        c.log_every = 10
        c.eval_every = 50
        c.save_every = 50
        c.run_dir = "runs/lapa_debug"
    elif preset not in ("latent_pretrain", "finetune"):
        raise ValueError(
            f"unknown preset {preset!r}; choose latent_pretrain, finetune, debug_latent, debug_finetune"
        )
    return c
