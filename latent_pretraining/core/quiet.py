"""One place that keeps TensorFlow's and tfds's start-up and progress noise off the terminal: TF
is only imported to read and write RLDS records, so its C++ INFO lines, oneDNN notice and tfds's
progress bars tell the user nothing."""

from __future__ import annotations

import os
from types import ModuleType

TENSORFLOW_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ INFO/WARNING start-up lines (absl's included)
    "TF_ENABLE_ONEDNN_OPTS": "0",  # its oneDNN notice (TF only reads or writes records here)
}


def import_tfds() -> ModuleType:
    """``tensorflow_datasets``, imported without TensorFlow's start-up lines and with tfds's
    progress bars off; a value the user set in the environment wins."""
    for name, value in TENSORFLOW_ENV.items():
        os.environ.setdefault(name, value)
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    return tfds
