"""Writes a policy bundle from a training run or from LAPA's released files.

    python -m latent_pretraining.policy export --run runs/finetune --out policies/tabletop \\
        [--vqgan runs/vq/vqgan] [--vqgan_config lwm|small|tiny|<json>] [--decoder <save_decoder dir>]
    python -m latent_pretraining.policy lapa --params params::lapa/params --vqgan lapa/vqgan \\
        --tokenizer lapa/tokenizer.model --config lapa/config.json --out policies/lapa \\
        [--bins bins.csv [--statistics bins.json]] [--image_mode center_crop|resize]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latent_pretraining.core.cli import exit_on
from latent_pretraining.policy.bundle import bundle_from_lapa, bundle_from_run
from latent_pretraining.vqgan.encode import resolve_config

VQGAN_CONFIG_HELP = "preset (lwm/small/tiny) or JSON; default: the JSON beside the checkpoint, else lwm"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m latent_pretraining.policy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="a bundle of a latent_pretraining.train run")
    export.add_argument("--run", type=Path, required=True, help="the run directory (its config.json)")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--vqgan", type=Path, default=None, help="default: the run's data.vqgan_checkpoint")
    export.add_argument("--vqgan_config", default=None, help=VQGAN_CONFIG_HELP)
    export.add_argument("--decoder", type=Path, default=None, help="a latent-to-action decoder directory")
    lapa = commands.add_parser("lapa", help="a bundle of LAPA's released files")
    lapa.add_argument("--params", required=True, help="params::<path>")
    lapa.add_argument("--vqgan", type=Path, required=True)
    lapa.add_argument("--vqgan_config", default=None, help=VQGAN_CONFIG_HELP)
    lapa.add_argument("--tokenizer", type=Path, required=True)
    lapa.add_argument("--config", type=Path, required=True, help="LAPA's model config JSON")
    lapa.add_argument("--bins", type=Path, default=None, help="the bins CSV of a finetuned model")
    lapa.add_argument("--statistics", type=Path, default=None, help="the bins' statistics JSON")
    lapa.add_argument("--image_mode", choices=("center_crop", "resize"), default="center_crop")
    lapa.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    with exit_on():
        if args.command == "export":
            bundle = bundle_from_run(
                args.run, args.out, vqgan=args.vqgan, vqgan_config=args.vqgan_config, decoder=args.decoder
            )
        else:
            bundle = bundle_from_lapa(
                args.params,
                args.vqgan,
                args.tokenizer,
                args.bins,
                args.out,
                args.config,
                vqgan_config=resolve_config(args.vqgan, args.vqgan_config),
                statistics=args.statistics,
                image_mode=args.image_mode,
            )
    print(f"wrote {bundle.describe()}")


if __name__ == "__main__":
    main()
