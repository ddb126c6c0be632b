"""Reading LAPA's PyTorch LAQ state_dict without torch (the fixture written by LAPA's own code)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from conftest import LAQ_TORCH_FIXTURE

from lam.torch_checkpoint import TorchCheckpointError, load_state_dict

FIXTURE = LAQ_TORCH_FIXTURE


def test_every_tensor_has_the_recorded_name_shape_and_dtype():
    state = load_state_dict(FIXTURE / "laq.pt")
    recorded = json.loads((FIXTURE / "facts.json").read_text())["state_dict"]
    assert list(state) == list(recorded)
    for key, (shape, dtype) in recorded.items():
        assert state[key].shape == tuple(shape), key
        assert str(state[key].dtype) == dtype.removeprefix("torch."), key


def test_codebook_values_reproduce_the_recorded_codes():
    """The recorded pre-quantisation vectors and codes come from the torch model: the codebook
    read here must give the same nearest codes (LAPA's distance |x|^2 - 2 x.C + |C|^2)."""
    codebook = load_state_dict(FIXTURE / "laq.pt")["vq.codebooks"]
    x = np.load(FIXTURE / "nsvq_delta.npy")
    distances = (x**2).sum(-1, keepdims=True) - 2 * x @ codebook.T + (codebook**2).sum(-1)
    np.testing.assert_array_equal(distances.argmin(-1), np.load(FIXTURE / "indices.npy"))


def test_not_a_torch_zip_is_a_clear_error(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    with pytest.raises(TorchCheckpointError, match="not a PyTorch zip checkpoint"):
        load_state_dict(tmp_path / "bad.pt")
    with zipfile.ZipFile(tmp_path / "empty.pt", "w") as z:
        z.writestr("x/version", "3")
    with pytest.raises(TorchCheckpointError, match=r"expected one data\.pkl"):
        load_state_dict(tmp_path / "empty.pt")
