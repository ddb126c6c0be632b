"""Trains a small LLaMA-style SentencePiece tokenizer (BOS 1, EOS 2, UNK 0) on instruction text.

    python -m data.train_text_tokenizer --input rows.jsonl [--field instruction] --output tok.model

For demos and tests that have no LLaMA ``tokenizer.model``; real runs use LLaMA's tokenizer.
Reads JSONL rows (the given field) or a JSON array of LAPA finetune rows (the human turn).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

MARKERS = (
    "<vision> </vision> <delta> </delta> <action> </action> You are a helpful assistant. USER: ASSISTANT:"
)


def instructions(path: Path, field: str) -> list[str]:
    text = path.read_text()
    if text.lstrip().startswith("["):
        return [row["conversations"][0]["value"].replace("<image>\n", "") for row in json.loads(text)]
    return [json.loads(line)[field] for line in text.splitlines() if line.strip()]


def train(lines: list[str], output: Path, vocab_size: int) -> Path:
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join([*lines, *[MARKERS] * 20]))
        prefix = Path(tmp) / "tokenizer"
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type="bpe",
            bos_id=1,
            eos_id=2,
            unk_id=0,
            pad_id=-1,
            character_coverage=1.0,
            hard_vocab_limit=False,
            minloglevel=2,
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(prefix.with_suffix(".model").read_bytes())
    return output


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--field", default="instruction")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--vocab_size", type=int, default=256)
    args = parser.parse_args()
    lines = instructions(args.input, args.field)
    train(lines, args.output, args.vocab_size)
    print(f"trained {args.output} on {len(lines)} lines (vocabulary up to {args.vocab_size})")


if __name__ == "__main__":
    main()
