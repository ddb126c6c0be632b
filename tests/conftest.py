"""Test set-up: 8 fake CPU devices for the sharding tests, and shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path

import jax
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def eight_devices() -> list:
    devices = jax.devices()
    assert len(devices) == 8, "tests expect 8 fake CPU devices (XLA_FLAGS set in conftest.py)"
    return devices


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory) -> Path:
    """A tiny LLaMA-style SentencePiece model (BOS 1, EOS 2, UNK 0), trained here."""
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("tokenizer")
    corpus = [
        "pick up the red cube and put it on the blue ball",
        "push the green triangle to the left of the table",
        "You are a helpful assistant. USER: What action should the robot take to",
        "ASSISTANT: <vision> </vision> <delta> </delta> <action> </action>",
    ] * 50
    (folder / "corpus.txt").write_text("\n".join(corpus))
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=160,
        model_type="bpe",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    return folder / "tokenizer.model"
