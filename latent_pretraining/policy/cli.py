"""The flags that name a policy, shared by the inference CLI, the server and the evaluator: a bundle
(``--policy DIR``) or LAPA's own flags for its released files (``--load_checkpoint params::...``,
``--vqgan_checkpoint``, ``--vocab_file``, ``--action_scale_file``, ``--load_llama_config``,
``--update_llama_config``), which are linked into a temporary bundle, not copied."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import ml_collections
from jax.sharding import Mesh

from latent_pretraining.config import from_lapa_config, get_model_config
from latent_pretraining.policy.bundle import BundleError
from latent_pretraining.policy.policy import Policy, Sampling

# LAPA's ``update_llama_config`` keys and ours; its scan_* and sample_mode settings change no result.
LAPA_UPDATE_KEYS = {
    "vocab_size": "text_vocab_size",
    "vision_vocab_size": "vision_vocab_size",
    "delta_vocab_size": "latent_vocab_size",
    "action_vocab_size": "action_vocab_size",
    "theta": "rope_theta",
    "max_sequence_length": "max_sequence_length",
}
LAPA_IGNORED_KEYS = {
    "sample_mode",
    "scan_attention",
    "scan_query_chunk_size",
    "scan_key_chunk_size",
    "scan_mlp",
    "scan_mlp_chunk_size",
    "scan_layers",
}


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """``--policy`` and, as the alternative, LAPA's flags."""
    parser.add_argument("--policy", type=Path, default=None, help="a policy bundle directory")
    parser.add_argument(
        "--median",
        action="store_true",
        help="each action dimension's median bin (least expected absolute error), not its most likely",
    )
    lapa = parser.add_argument_group("LAPA's flags (instead of --policy)")
    lapa.add_argument("--load_checkpoint", default=None, help="params::<path> of LAPA's parameters")
    lapa.add_argument("--vqgan_checkpoint", type=Path, default=None, help="LWM's VQGAN pickle")
    lapa.add_argument("--vocab_file", type=Path, default=None, help="tokenizer.model")
    lapa.add_argument("--action_scale_file", type=Path, default=None, help="bins CSV (finetuned models)")
    lapa.add_argument("--load_llama_config", default="7b", help="preset (7b, 1b, debug) or a config JSON")
    lapa.add_argument("--update_llama_config", default="", help="LAPA's dict(key=value, ...) string")
    lapa.add_argument("--image_aug", type=int, choices=(0, 1), default=1, help="1: centre crop; 0: resize")


def policy_from_arguments(args: argparse.Namespace, mesh: Mesh | None = None) -> Policy:
    """The policy the parsed flags name; a ValueError says which flag is missing or wrong."""
    policy = _load_policy(args, mesh)
    if args.median:
        if policy.bundle.bins is None:
            raise ValueError(f"--median: {policy.bundle.directory} predicts latent codes, not action bins")
        policy.sampling = Sampling(median=True)
    return policy


def _load_policy(args: argparse.Namespace, mesh: Mesh | None) -> Policy:
    if args.policy is not None:
        if args.load_checkpoint:
            raise ValueError("give --policy or LAPA's --load_checkpoint flags, not both")
        return Policy.from_pretrained(args.policy, mesh)
    missing = [
        flag
        for flag, value in (
            ("--load_checkpoint", args.load_checkpoint),
            ("--vqgan_checkpoint", args.vqgan_checkpoint),
            ("--vocab_file", args.vocab_file),
        )
        if not value
    ]
    if missing:
        raise ValueError(f"give --policy <bundle>, or LAPA's flags: missing {', '.join(missing)}")
    for flag, path in (
        ("--load_checkpoint", Path(args.load_checkpoint.removeprefix("params::"))),
        ("--vqgan_checkpoint", args.vqgan_checkpoint),
        ("--vocab_file", args.vocab_file),
        ("--action_scale_file", args.action_scale_file),
    ):
        if path is not None and not path.is_file():
            raise BundleError(f"{path}: no such file ({flag})")
    statistics = args.action_scale_file.with_suffix(".json") if args.action_scale_file else None
    return Policy.from_pretrained(
        args.load_checkpoint,
        mesh,
        vqgan=args.vqgan_checkpoint,
        tokenizer=args.vocab_file,
        model_config=lapa_model_config(args.load_llama_config, args.update_llama_config),
        bins_csv=args.action_scale_file,
        statistics=statistics if statistics and statistics.is_file() else None,
        image_mode="center_crop" if args.image_aug else "resize",
    )


def lapa_model_config(load: str, update: str) -> ml_collections.ConfigDict:
    """LAPA's ``--load_llama_config`` (a preset, or a config JSON) with its ``--update_llama_config``."""
    config = from_lapa_config(load) if load.endswith(".json") else get_model_config(load)
    for key, value in parse_lapa_dict(update).items():
        if key in LAPA_UPDATE_KEYS:
            setattr(config, LAPA_UPDATE_KEYS[key], value)
        elif key not in LAPA_IGNORED_KEYS:
            raise ValueError(f"--update_llama_config: unknown key {key!r}")
    return config


def parse_lapa_dict(text: str) -> dict[str, object]:
    """``dict(a=1, b='x')`` (LAPA's ``--update_llama_config``) as a dict of literals."""
    if not text.strip():
        return {}
    try:
        call = ast.parse(text.strip(), mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "dict"):
            raise ValueError("not a dict(...) call")
        if call.args:
            raise ValueError("positional arguments")
        return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"--update_llama_config {text!r}: expected dict(key=value, ...) ({e})") from None
