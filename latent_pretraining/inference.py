"""One image and one task description through a policy: its latent codes and/or its 7-D command.

    python -m latent_pretraining.inference --policy demo_out/quick/policy \\
        [--image frame.png] [--instruction "pick up the red cube"] [--json]
    python -m latent_pretraining.inference --load_checkpoint params::lapa/params \\
        --vqgan_checkpoint lapa/vqgan --vocab_file lapa/tokenizer.model [--action_scale_file bins.csv]

Without ``--image`` it uses a built-in frame of the tabletop world (with its task description
unless ``--instruction`` is given).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from latent_pretraining.core.cli import exit_on
from latent_pretraining.core.compile_cache import enable_compilation_cache
from latent_pretraining.policy.cli import add_policy_arguments, policy_from_arguments
from latent_pretraining.policy.inputs import add_input_arguments, input_from_arguments
from latent_pretraining.policy.policy import Act, Policy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m latent_pretraining.inference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_policy_arguments(parser)
    add_input_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one machine-readable JSON line")
    args = parser.parse_args(argv)
    enable_compilation_cache()
    with exit_on():
        path, image, instruction = input_from_arguments(args)
        policy = policy_from_arguments(args)
        answer = policy.act([image], [instruction])
    result = as_record(policy, answer, instruction, path)
    print(json.dumps(result) if args.json else describe(result))


def as_record(policy: Policy, answer: Act, instruction: str, image: str) -> dict[str, Any]:
    """The first row of ``answer`` as plain JSON values, with the action's names and units."""
    spec = policy.bundle.spec["action"]
    return {
        "image": image,
        "instruction": instruction,
        "policy": str(policy.bundle.directory),
        "predicts": policy.bundle.predicts,
        "latent": None if answer.latent is None else answer.latent[0].tolist(),
        "action_tokens": None if answer.action_tokens is None else answer.action_tokens[0].tolist(),
        "action": None if answer.actions is None else [float(x) for x in answer.actions[0]],
        "action_names": spec["names"],
        "action_units": spec["units"],
        "timing_s": {stage: round(seconds, 6) for stage, seconds in answer.timing.items()},
    }


def describe(record: dict[str, Any]) -> str:
    """The record for a person: codes, then one line per action dimension."""
    lines = [f"{record['image']}: {record['instruction']!r}"]
    if record["latent"] is not None:
        lines.append(f"latent codes: {record['latent']}")
    if record["action"] is None:
        lines.append("action: none (a latent-only policy without a latent-to-action decoder)")
    else:
        lines.append("action:")
        width = max(len(name) for name in record["action_names"])
        for name, value, unit in zip(
            record["action_names"], record["action"], record["action_units"], strict=True
        ):
            lines.append(f"  {name:<{width}} {value:+.4f} {unit}")
    total = float(np.sum(list(record["timing_s"].values())))
    stages = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in record["timing_s"].items())
    lines.append(f"time: {total * 1e3:.1f} ms ({stages}; the first call compiles)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
