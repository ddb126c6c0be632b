"""A client of the policy server's REST side (OpenVLA's json_numpy convention): one request from the
command line, or a policy with SIMPLER's ``reset``/``step`` for the closed-loop evaluator.

    python -m latent_pretraining.deploy.client --url http://127.0.0.1:32820 \\
        [--image frame.png --instruction "pick up the red cube"] [--wait_s 120]
"""

from __future__ import annotations

import argparse
import json
import time

import json_numpy
import numpy as np
import requests

from latent_pretraining.core.cli import INPUT_ERRORS, exit_on
from latent_pretraining.policy.inputs import add_input_arguments, input_from_arguments


class ServerError(RuntimeError):
    """The server refused a request or answered something that is not an action."""


class ServerPolicy:
    """``POST /act`` of a running server as a policy: ``step(image)`` gives the 7-D action."""

    def __init__(self, url: str, timeout_s: float = 60.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self.session = requests.Session()
        self.instruction: str | None = None

    def reset(self, instruction: str) -> None:
        self.instruction = instruction

    def step(self, image: np.ndarray) -> np.ndarray:
        if self.instruction is None:
            raise RuntimeError("call reset(instruction) before step(image)")
        return self.act(image, self.instruction)

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        """The action the server answers for one image and instruction."""
        body = json_numpy.dumps({"image": np.asarray(image, np.uint8), "instruction": instruction})
        reply = self.session.post(
            f"{self.url}/act", data=body, headers={"Content-Type": "application/json"}, timeout=self.timeout_s
        )
        if reply.status_code != 200:
            raise ServerError(f"{self.url}/act answered {reply.status_code}: {reply.text[:500]}")
        action = np.asarray(json_numpy.loads(reply.text), np.float64)
        if action.shape != (7,) or not np.isfinite(action).all():
            raise ServerError(f"{self.url}/act answered {action.tolist()}, not 7 finite numbers")
        return action


def wait_until_ready(url: str, wait_s: float) -> dict:
    """Polls ``GET /healthz`` until it answers 200 (the server has warmed up), then returns ``/metadata``."""
    url = url.rstrip("/")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return requests.get(f"{url}/metadata", timeout=5).json()
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise ServerError(f"{url}/healthz did not answer 200 within {wait_s:.0f} s")
        time.sleep(0.25)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m latent_pretraining.deploy.client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default="http://127.0.0.1:32820")
    parser.add_argument("--wait_s", type=float, default=0.0, help="wait this long for the server to be ready")
    add_input_arguments(parser)
    args = parser.parse_args(argv)
    with exit_on(*INPUT_ERRORS, ServerError):  # requests' errors are OSErrors
        path, image, instruction = input_from_arguments(args)
        metadata = wait_until_ready(args.url, args.wait_s)
        action = ServerPolicy(args.url).act(image, instruction)
    named = dict(zip(metadata["action"]["names"], action.tolist(), strict=True))
    print(json.dumps({"image": path, "instruction": instruction, "action": named}))


if __name__ == "__main__":
    main()
