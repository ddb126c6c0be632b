"""A bundled VLA as a policy: images and task descriptions in, latent codes or 7-D actions out.

Images (uint8, any size, RGB, RGBA or greyscale) go through the bundle's deploy preprocessing and
its VQGAN; the prompt is the training example of the same row up to its first latent or action
token, built by the same ``SequenceBuilder``. Decoding is greedy unless a temperature is given (or
``Sampling(median=True)``: each action dimension's median bin); actions come from the action head,
each dimension constrained to its valid bins, or, for a latent-only bundle, from the latent codes
through its decoder. ``reset``/``step`` give SIMPLER's
per-step fields.
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from latent_pretraining.actions.decoder import ActionDecoder, load_decoder
from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.lapa_checkpoint import load_lapa_params
from latent_pretraining.model import Modality, VLAModel
from latent_pretraining.policy.bundle import (
    DECODER,
    PARAMS,
    TOKENIZER,
    VQGAN_PICKLE,
    Bundle,
    bundle_from_lapa,
    read_bundle,
)
from latent_pretraining.sampler import Sampler
from latent_pretraining.sequences import SequenceBuilder, TextTokenizer
from latent_pretraining.vqgan.encode import Encoder
from latent_pretraining.vqgan.images import preprocess
from latent_pretraining.vqgan.lwm_checkpoint import load_lwm_vqgan
from latent_pretraining.vqgan.model import VQGAN

IMAGE_BATCHES = (1, 2, 4, 8)  # compiled VQGAN batch sizes: a lone image is not padded to eight


def to_rgb(image: Any, where: str = "image") -> np.ndarray:
    """uint8 [H, W, 3] from a uint8 RGB, RGBA (alpha dropped, as PIL's ``convert('RGB')``) or
    greyscale ([H, W] or [H, W, 1]) array; anything else is a ValueError naming ``where``."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or 0 in image.shape:
        raise ValueError(f"{where}: expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {image.shape}")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def euler_to_axangle(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """The rotation vector (axis times angle, angle in [0, pi]) of static-axis x-y-z Euler angles,
    R = Rz(yaw) Ry(pitch) Rx(roll): what SIMPLER's ``euler2axangle(roll, pitch, yaw)`` gives."""
    cr, sr = math.cos(roll / 2), math.sin(roll / 2)
    cp, sp = math.cos(pitch / 2), math.sin(pitch / 2)
    cy, sy = math.cos(yaw / 2), math.sin(yaw / 2)
    w = cr * cp * cy + sr * sp * sy
    v = np.array([sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy, cr * cp * sy - sr * sp * cy])
    if w < 0:  # the same rotation, with the angle in [0, pi]
        w, v = -w, -v
    norm = float(np.linalg.norm(v))
    if norm < 1e-12:
        return np.zeros(3)
    return v / norm * 2.0 * math.atan2(norm, w)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How tokens are chosen: greedily (temperature 0), or drawn with ``rng`` at ``temperature`` from
    the ``top_k`` most likely (0: all). ``median`` (action bundles, temperature 0) takes each action
    dimension's median bin rather than its most likely one: the least expected absolute error."""

    temperature: float = 0.0
    top_k: int = 0
    rng: jax.Array | None = None
    median: bool = False


GREEDY = Sampling()


@dataclasses.dataclass(frozen=True)
class Act:
    """One batch's answer: ``actions`` float [B, 7] (None: latent codes only), the ``latent`` codes
    and ``action_tokens`` behind them (None where the policy did not make them), and seconds per
    stage (preprocess, image_tokenizer, generation, decoder)."""

    actions: np.ndarray | None
    latent: np.ndarray | None
    action_tokens: np.ndarray | None
    timing: dict[str, float]


def check_instruction(task: Any, where: str = "instruction") -> None:
    """A ValueError naming ``where`` unless ``task`` is a non-empty task description."""
    if not isinstance(task, str) or not task.strip():
        raise ValueError(f"{where}: expected a task description, got {task!r}")


def check_batch(images: Sequence[Any], instructions: Sequence[str]) -> None:
    """A ValueError unless there is one task description (a non-empty string) per image."""
    if isinstance(instructions, str):
        raise ValueError(f"instructions: expected a list of task descriptions, not {instructions!r}")
    if len(images) != len(instructions) or len(images) == 0:
        raise ValueError(f"{len(images)} images and {len(instructions)} instructions; give one of each")
    for i, task in enumerate(instructions):
        check_instruction(task, f"instruction {i}")


class Policy:
    """Samples latent codes and actions for batches of (image, task description) pairs."""

    def __init__(
        self,
        bundle: Bundle,
        model: VLAModel,
        vqgan: VQGAN,
        decoder: ActionDecoder | None = None,
        mesh: Mesh | None = None,
    ):
        self.bundle = bundle
        self.builder = SequenceBuilder(TextTokenizer(bundle.path(TOKENIZER)), bundle.sequence)
        self.sampler = Sampler(model, mesh)
        self.encoders: dict[int, Encoder] = {}  # by compiled size (a multiple of the local devices)
        for size in IMAGE_BATCHES:
            encoder = Encoder(vqgan, size)
            self.encoders.setdefault(encoder.batch_size, encoder)
        self.decoder = decoder
        self.instruction: str | None = None
        self.sampling = GREEDY  # what a call without its own ``sampling`` uses

    @classmethod
    def from_pretrained(
        cls,
        bundle_dir_or_params: str | os.PathLike,
        mesh: Mesh | None = None,
        **lapa_files: Any,
    ) -> Policy:
        """Reads and checks a bundle, then loads its parameters onto ``mesh`` (default: all devices).
        A ``params::`` file instead of a bundle takes LAPA's other files as keywords (``vqgan``,
        ``tokenizer``, ``model_config`` and optionally ``bins_csv``, ``statistics``, ``image_mode``;
        see ``bundle_from_lapa``): they are linked into a temporary bundle, not copied."""
        source = os.fspath(bundle_dir_or_params)
        if source.startswith("params::"):
            missing = [k for k in ("vqgan", "tokenizer", "model_config") if lapa_files.get(k) is None]
            if missing:
                raise ValueError(f"{source}: LAPA's files need {', '.join(missing)} too")
            scratch = Path(tempfile.mkdtemp(prefix="lapa-policy-"))
            atexit.register(shutil.rmtree, scratch, ignore_errors=True)
            lapa_files.setdefault("bins_csv", None)
            bundle = bundle_from_lapa(source, out_dir=scratch / "policy", link=True, **lapa_files)
        elif lapa_files:
            raise ValueError(f"{source}: LAPA's files ({', '.join(lapa_files)}) go with a params:: file")
        else:
            bundle = read_bundle(source)
        mesh = make_mesh() if mesh is None else mesh
        model = load_lapa_params(bundle.path(PARAMS), bundle.model, mesh=mesh)
        vqgan = load_lwm_vqgan(bundle.path(VQGAN_PICKLE), bundle.vqgan)
        decoder = load_decoder(bundle.path(DECODER)) if bundle.has_decoder else None
        return cls(bundle, model, vqgan, decoder, mesh)

    # -- inputs -------------------------------------------------------------------
    def pixels(self, images: Sequence[Any]) -> np.ndarray:
        """float [B, R, R, 3]: images in the bundle's deploy preprocessing."""
        if len(images) == 0:
            raise ValueError("no images; give one per instruction")
        size, mode = self.bundle.spec["image"]["resolution"], self.bundle.image_mode
        return np.stack([preprocess(to_rgb(im, f"image {i}"), size, mode) for i, im in enumerate(images)])

    def vision_tokens(self, images: Sequence[Any]) -> np.ndarray:
        """int [B, tokens_per_frame]: the VQGAN codes of images in the bundle's deploy preprocessing."""
        return self._encode(self.pixels(images))

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        """VQGAN codes of up to the largest compiled size at a time, each chunk at the smallest size
        that holds it."""
        largest = max(self.encoders)
        codes = []
        for start in range(0, len(pixels), largest):
            chunk = pixels[start : start + largest]
            codes.append(self.encoders[min(s for s in self.encoders if s >= len(chunk))](chunk))
        return np.concatenate(codes)

    def prompts(
        self, vision: np.ndarray, instructions: Sequence[str], vocab: str
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(ids, modality)`` per row of vision codes: the training example of the row up to its first
        ``vocab`` (``latent`` or ``action``) token, so that the model sees what it was trained on."""
        check_batch(vision, instructions)
        key, count = ("delta", self.bundle.sequence.tokens_per_latent)
        if vocab == "action":
            key, count = ("action", self.bundle.sequence.tokens_per_action)
        out = []
        for task, codes in zip(instructions, vision, strict=True):
            row = {
                "instruction": self.bundle.prompt_template.replace("{task}", task),
                "vision": codes.tolist(),
                key: [0] * count,  # a placeholder: the prompt stops before it
                "fields": self.bundle.fields[vocab],
            }
            example = self.builder(row)
            first = int(np.flatnonzero(example.modality == Modality[vocab.upper()])[0])
            out.append((example.ids[:first], example.modality[:first]))
        return out

    # -- sampling -------------------------------------------------------------------
    @property
    def acts(self) -> bool:
        """Whether the policy gives actions (an action head, or latent codes and a decoder)."""
        return self.bundle.bins is not None or self.decoder is not None

    def act(
        self, images: Sequence[Any], instructions: Sequence[str], sampling: Sampling | None = None
    ) -> Act:
        """Actions (when the policy gives them), the tokens behind them and where the time went."""
        check_batch(images, instructions)
        clock = time.perf_counter()
        pixels = self.pixels(images)
        timing = {"preprocess": time.perf_counter() - clock}
        clock = time.perf_counter()
        vision = self._encode(pixels)
        timing["image_tokenizer"] = time.perf_counter() - clock
        clock = time.perf_counter()
        bins = self.bundle.bins
        if bins is not None:
            allowed = bins.valid_ids(self.bundle.model.action_vocab_size)
            tokens = self._generate(vision, instructions, "action", sampling, allowed)
            timing["generation"] = time.perf_counter() - clock
            return Act(bins.decode(tokens), None, tokens, timing)
        latent = self._generate(vision, instructions, "latent", sampling)
        timing["generation"] = time.perf_counter() - clock
        if self.decoder is None:
            return Act(None, latent, None, timing)
        clock = time.perf_counter()
        actions = np.asarray(self.decoder.predict(jnp.asarray(latent)), np.float64)
        timing["decoder"] = time.perf_counter() - clock
        return Act(actions, latent, None, timing)

    def sample_latent(
        self, images: Sequence[Any], instructions: Sequence[str], sampling: Sampling | None = None
    ) -> np.ndarray:
        """int [B, tokens_per_latent] latent codes."""
        return self._generate(self.vision_tokens(images), instructions, "latent", sampling)

    def sample_action(
        self, images: Sequence[Any], instructions: Sequence[str], sampling: Sampling | None = None
    ) -> np.ndarray:
        """float [B, 7] actions in the data's units: bin centres of the action head's tokens, each
        dimension constrained to its valid bins, or a latent-only bundle's codes through its decoder."""
        if not self.acts:
            raise ValueError(
                f"{self.bundle.directory}: the model predicts latent codes only and the bundle has no "
                "latent-to-action decoder; use sample_latent"
            )
        return self.act(images, instructions, sampling).actions

    def _generate(
        self,
        vision: np.ndarray,
        instructions: Sequence[str],
        vocab: str,
        sampling: Sampling | None,
        allowed: np.ndarray | None = None,
    ) -> np.ndarray:
        sampling = self.sampling if sampling is None else sampling
        return self.sampler.generate_batch(
            self.prompts(vision, instructions, vocab),
            vocab=vocab,
            num_tokens=getattr(self.bundle.sequence, f"tokens_per_{vocab}"),
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            rng=sampling.rng,
            allowed_tokens=allowed,
            median=sampling.median,
        )

    # -- SIMPLER-style episodes -------------------------------------------------------
    def reset(self, instruction: str) -> None:
        """Starts an episode with this task description."""
        self.instruction = instruction

    def step(self, image: Any) -> dict[str, np.ndarray]:
        """One action for the episode's task: the raw 7-D ``action`` and SIMPLER's ``world_vector``
        (translation), ``rot_axangle`` (from roll/pitch/yaw), ``gripper`` and ``terminate_episode``."""
        if self.instruction is None:
            raise RuntimeError("call reset(instruction) before step(image)")
        action = self.sample_action([image], [self.instruction])[0]
        return {
            "action": action,
            "world_vector": action[:3],
            "rot_axangle": euler_to_axangle(*action[3:6]),
            "gripper": action[6:7],
            "terminate_episode": np.zeros(1),
        }
