"""``python -m latent_pretraining.vqgan train|encode ...``"""

import sys

USAGE = """usage: python -m latent_pretraining.vqgan COMMAND [options]

commands:
  train   train a VQ tokenizer (--config=latent_pretraining/configs/vqgan.py:<preset> ...)
  encode  add 'vision' tokens to JSONL rows (--checkpoint ... --input ... --output ...)
"""


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("train", "encode"):
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
    command, argv = sys.argv[1], [f"{sys.argv[0]} {sys.argv[1]}", *sys.argv[2:]]
    if command == "train":
        from latent_pretraining.vqgan.train import main as run
    else:
        from latent_pretraining.vqgan.encode import main as run
    run(argv)


if __name__ == "__main__":
    main()
