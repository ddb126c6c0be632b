"""What a request asks and what the server answers, for both protocols: the image and task
description a decoded payload holds (checked, with the HTTP status of what is wrong), and the
answers built from a policy's output."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from latent_pretraining.deploy.batching import Answer
from latent_pretraining.deploy.codecs import MAX_PIXELS, decode_image, image_bytes
from latent_pretraining.policy.policy import Policy, check_instruction, to_rgb

IMAGE_KEYS = ("image", "observation/image")  # OpenVLA's and LAPA's key; openpi's flattened key
INSTRUCTION_KEYS = ("instruction", "prompt")  # OpenVLA's and LAPA's key; openpi's
FORMS = ("action", "full")


class RequestError(Exception):
    """A request the server refuses: the HTTP status and what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class Query:
    """One checked request: uint8 RGB pixels, the task description and the answer form asked for."""

    image: np.ndarray
    instruction: str
    form: str


def parse_query(payload: Any, image_root: Path | None) -> Query:
    """The query in a decoded payload: the image at ``image``, ``observation/image`` or
    ``observation.image``; the task description at ``instruction`` or ``prompt``; ``return``
    ``action`` (default) or ``full``. A RequestError (400, 403, 404) says what is wrong."""
    if not isinstance(payload, dict):
        raise RequestError(400, f"expected a JSON object (a dict), got {type(payload).__name__}")
    instruction = _first(payload, INSTRUCTION_KEYS)
    if instruction is None:
        raise RequestError(400, "missing 'instruction': the task description, a non-empty string")
    try:
        check_instruction(instruction)
    except ValueError as e:
        raise RequestError(400, str(e)) from None
    form = payload.get("return", "action")
    if form not in FORMS:
        raise RequestError(400, f"'return' is {form!r}; expected one of {', '.join(map(repr, FORMS))}")
    image = _first(payload, IMAGE_KEYS)
    observation = payload.get("observation")
    if image is None and isinstance(observation, dict):
        image = observation.get("image")
    if image is None:
        raise RequestError(
            400, "missing 'image': a uint8 [H, W, 3] array (json_numpy), a base64 PNG/JPEG or a path"
        )
    try:
        return Query(to_rgb(_pixels(image, image_root)), instruction, form)
    except ValueError as e:
        raise RequestError(400, str(e)) from None


def _first(payload: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((payload[k] for k in keys if payload.get(k) is not None), None)


def _pixels(image: Any, image_root: Path | None) -> np.ndarray:
    """The pixels an image field holds: an array as sent, or a decoded PNG/JPEG (inline or a file)."""
    if isinstance(image, np.ndarray):
        if image.ndim >= 2 and image.shape[0] * image.shape[1] > MAX_PIXELS:
            raise ValueError(f"image: {image.shape[0]}x{image.shape[1]} pixels; at most {MAX_PIXELS}")
        return image
    if isinstance(image, bytes):  # a msgpack frame's PNG/JPEG file
        return decode_image(image)
    if not isinstance(image, str):
        raise ValueError(
            f"image: expected a uint8 array (json_numpy), a base64 PNG/JPEG or a path, "
            f"got {type(image).__name__}"
        )
    data = image_bytes(image)
    return decode_image(data) if data is not None else decode_image(read_under(image, image_root))


def read_under(path_text: str, image_root: Path | None) -> bytes:
    """The bytes of a server-side image file: only with ``--image_root``, relative to it, and only
    where the path resolves (symlinks followed) inside it."""
    if image_root is None:
        raise RequestError(
            400,
            "image: a string that is neither base64 of a PNG/JPEG nor, since the server was started "
            "without --image_root, a path it may read",
        )
    shown = path_text if len(path_text) <= 200 else f"{path_text[:200]}... ({len(path_text)} characters)"
    try:
        root = image_root.resolve()
        path = (root / path_text).resolve()
        if not path.is_relative_to(root):
            raise RequestError(403, f"image: path {shown!r} lies outside the image root")
        if not path.is_file():
            raise RequestError(404, f"image: no file {shown!r} under the image root")
        return path.read_bytes()
    except OSError as e:
        raise RequestError(400, f"image: cannot read {shown!r} ({e.strerror})") from None


def action(answer: Answer) -> np.ndarray:
    """The plain answer: the float [7] action; a RequestError (409) for a policy of latent codes only."""
    if answer.actions is None:
        raise RequestError(
            409,
            "this policy gives latent codes only (no action head, no latent-to-action decoder); "
            'send "return": "full" for the codes',
        )
    return answer.actions


def full(answer: Answer, policy: Policy, total_s: float) -> dict[str, Any]:
    """The full answer: the action (None: latent codes only) with its names and units, the tokens
    behind it, the requests in its batch and seconds per stage (``total``: the whole request)."""
    spec = policy.bundle.spec["action"]
    return {
        "action": None if answer.actions is None else answer.actions.tolist(),
        "action_names": spec["names"],
        "units": spec["units"],
        "latent": None if answer.latent is None else answer.latent.tolist(),
        "action_tokens": None if answer.action_tokens is None else answer.action_tokens.tolist(),
        "batch": answer.batch,
        "timing": {**answer.timing, "total": total_s},
    }


def frame(answer: Answer, form: str, total_s: float) -> dict[str, Any]:
    """openpi's reply: ``actions`` float [1, 7] and ``server_timing`` in ms (``infer_ms``: the whole
    request); the full form has ``latent`` and ``action_tokens`` [1, n] where made, and ``actions``
    only where the policy gives them."""
    reply: dict[str, Any] = {}
    if form == "action":
        reply["actions"] = action(answer)[None]
    else:
        for key, values in (("actions", answer.actions), ("latent", answer.latent)):
            if values is not None:
                reply[key] = values[None]
        if answer.action_tokens is not None:
            reply["action_tokens"] = answer.action_tokens[None]
    timing = {f"{stage}_ms": seconds * 1e3 for stage, seconds in answer.timing.items()}
    reply["server_timing"] = {"infer_ms": total_s * 1e3, **timing}
    return reply


def metadata(policy: Policy, batch_sizes: tuple[int, ...], wait_s: float) -> dict[str, Any]:
    """What the server serves: model config, provenance, action spec, bins, image preprocessing,
    sequence layout and batching."""
    bundle = policy.bundle
    bins = bundle.bins
    return {
        "policy": bundle.directory.name,
        "model": bundle.spec["model"],
        "provenance": bundle.spec["provenance"],
        "action": {**bundle.spec["action"], "acts": policy.acts, "has_decoder": bundle.has_decoder},
        "bins": None if bins is None else {"edges": [e.tolist() for e in bins.edges]},
        "statistics": bundle.statistics,
        "image": bundle.spec["image"],
        "sequence": bundle.spec["sequence"],
        "batching": {"batch_sizes": list(batch_sizes), "batch_wait_ms": wait_s * 1e3},
    }
