"""Serves a policy on one port: OpenVLA's REST ``POST /act`` and openpi's websocket at ``/``.

    python -m latent_pretraining.deploy --policy policies/tabletop [--host 127.0.0.1] [--port 32820] \\
        [--image_root DIR] [--max_batch 8] [--batch_wait_ms 5] [--no_batching] [--max_body_bytes N]
    python -m latent_pretraining.deploy --load_checkpoint params::lapa/params \\
        --vqgan_checkpoint lapa/vqgan --vocab_file lapa/tokenizer.model [--action_scale_file bins.csv]

Also ``GET /healthz``, ``GET /metadata`` and ``POST /reset``. Before serving, the model is compiled and
run once at every batch size it will use (powers of two below --max_batch, and --max_batch) on a
grey image and the instruction "warm up"; until then /healthz answers 503, then one line says where
it serves. Concurrent requests arriving within --batch_wait_ms of the first are run as one greedy
batch (--no_batching: one request at a time). Server-side image paths are read only under --image_root.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import uvicorn

from latent_pretraining.core.cli import exit_on
from latent_pretraining.core.compile_cache import enable_compilation_cache
from latent_pretraining.deploy.app import create_app
from latent_pretraining.deploy.batching import Batcher
from latent_pretraining.policy.cli import add_policy_arguments, policy_from_arguments

WARM_UP_INSTRUCTION = "warm up"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m latent_pretraining.deploy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_policy_arguments(parser)
    server_flags = parser.add_argument_group("the server")
    server_flags.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too")
    server_flags.add_argument(
        "--port", type=int, default=32820, help="0: any free port (the ready line says)"
    )
    server_flags.add_argument("--image_root", type=Path, default=None, help="where image paths may point")
    server_flags.add_argument("--max_batch", type=int, default=8, help="most requests in one model call")
    server_flags.add_argument("--batch_wait_ms", type=float, default=5.0, help="how long a batch collects")
    server_flags.add_argument("--no_batching", action="store_true", help="one request per model call")
    server_flags.add_argument("--max_body_bytes", type=int, default=16 << 20, help="larger bodies: 413")
    args = parser.parse_args(argv)
    if args.max_batch < 1 or args.batch_wait_ms < 0 or args.max_body_bytes < 1:
        parser.error("--max_batch and --max_body_bytes must be >= 1 and --batch_wait_ms >= 0")
    if args.image_root is not None and not args.image_root.is_dir():
        parser.error(f"--image_root {args.image_root}: not a directory")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    enable_compilation_cache()  # a restarted server loads its compiled programs
    with exit_on():
        policy = policy_from_arguments(args)
    batcher = Batcher(policy.act, 1 if args.no_batching else args.max_batch, args.batch_wait_ms / 1e3)
    app = create_app(policy, batcher, args.image_root, args.max_body_bytes)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        ws_max_size=args.max_body_bytes,
        ws_per_message_deflate=False,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    failures: list[Exception] = []

    def on_ready(failure: Exception | None) -> None:
        if failure is not None:
            failures.append(failure)
            server.should_exit = True
            return
        while not (server.started or server.should_exit):
            time.sleep(0.05)
        if server.started:
            port = server.servers[0].sockets[0].getsockname()[1]
            print(f"serving {policy.bundle.directory} on http://{args.host}:{port}", flush=True)

    size = policy.bundle.spec["image"]["resolution"]
    batcher.start(np.full((size, size, 3), 128, np.uint8), WARM_UP_INSTRUCTION, on_ready)
    server.run()
    batcher.close()
    if failures:
        raise SystemExit(f"error: warm-up failed: {failures[0]}")


if __name__ == "__main__":
    main()
