"""No TensorFlow/absl start-up lines: the tools' ``--help`` and an import of tfds through
``core.quiet`` print none unless the user asks for them."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from latent_pretraining.core.quiet import TENSORFLOW_ENV

# absl's C++ log prefix (I0000 00:00:... file.cc:123]) and TensorFlow's/tfds's start-up notices
NOISE = re.compile(
    r"^[IWEF]\d{4} [\d:. ]+\S+\.cc:\d+\]|absl::InitializeLog|oneDNN|cpu_feature_guard"
    r"|Downloading and preparing|Generating splits",
    re.MULTILINE,
)


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """``python <args>`` as a user runs it: one CPU device, TensorFlow's own defaults."""
    clean = {k: v for k, v in os.environ.items() if k not in {"XLA_FLAGS", *TENSORFLOW_ENV}}
    clean["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), clean.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=clean | env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "command", [["-m", "latent_pretraining.report"], ["-m", "lam.label"], ["data/finetune_preprocess.py"]]
)
def test_help_prints_usage_and_no_start_up_noise(command):
    out = _run(["-X", "importtime", *command, "--help"])  # stderr also lists every module imported
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage:")
    imports = [line for line in out.stderr.splitlines() if line.startswith("import time:")]
    printed = "\n".join(line for line in out.stderr.splitlines() if not line.startswith("import time:"))
    assert not NOISE.search(printed), printed[-2000:]
    modules = {line.rsplit("|", 1)[-1].strip() for line in imports}
    assert "numpy" in modules and "tensorflow" not in modules


IMPORT_TFDS = "from latent_pretraining.core.quiet import import_tfds; import_tfds(); import tensorflow"


def test_tfds_imported_through_quiet_prints_nothing():
    out = _run(["-c", IMPORT_TFDS])
    assert out.returncode == 0, out.stderr[-2000:]
    assert not NOISE.search(out.stderr), out.stderr[-2000:]


def test_a_log_level_the_user_set_wins():
    out = _run(["-c", IMPORT_TFDS], TF_CPP_MIN_LOG_LEVEL="0", TF_ENABLE_ONEDNN_OPTS="1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert NOISE.search(out.stderr), "TensorFlow's start-up lines were expected at the user's log level"
