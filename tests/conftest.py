"""Test set-up: 8 fake CPU devices for the sharding tests, the parity fixtures, a tokenizer."""

import os

# 8 fake CPU devices. XLA aborts the process when a device thread joins a collective later
# than a termination timeout; a loaded 2-core machine running two test workers may reach the
# default (a suspected cause of rare "Fatal Python error: Aborted" crashes), so it is raised
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8"
    + " --xla_cpu_collective_call_terminate_timeout_seconds=900"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path

# JAX's persistent compilation cache, in pytest's cache folder: a program compiled once is reused
# by later tests and test processes (a kill-and-resume test compiles one train step three times).
# A fresh clone starts empty; an unreadable entry is recompiled (JAX warns).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).parents[1] / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import jax
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"  # written by LAPA's and LWM's own code (see their READMEs)
# each parity fixture may be replaced by another of the same layout through its variable
LAPA_VLA_FIXTURE = Path(os.environ.get("LAPA_VLA_FIXTURE", FIXTURES / "lapa_vla_tiny"))
LWM_VQGAN_FIXTURE = Path(os.environ.get("LWM_VQGAN_FIXTURE", FIXTURES / "lwm_vqgan_tiny"))
LAQ_TORCH_FIXTURE = Path(os.environ.get("LAQ_TORCH_FIXTURE", FIXTURES / "laq_torch_tiny"))


@pytest.fixture(scope="session")
def eight_devices() -> list:
    devices = jax.devices()
    assert len(devices) == 8, "tests expect 8 fake CPU devices (XLA_FLAGS set in conftest.py)"
    return devices


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory) -> Path:
    """A tiny LLaMA-style SentencePiece model (BOS 1, EOS 2, UNK 0), trained here."""
    from data.train_text_tokenizer import train

    corpus = [
        "pick up the red cube and put it on the blue ball",
        "push the green triangle to the left of the table",
        "You are a helpful assistant. USER: What action should the robot take to",
    ] * 50
    return train(corpus, tmp_path_factory.mktemp("tokenizer") / "tokenizer.model", vocab_size=160)
