"""Shape and dtype checks where callers hand arrays in: the model's inputs and the per-host batch."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import debug_model, mixed_batch

from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.core.state import global_batch
from latent_pretraining.sampler import Sampler


@pytest.fixture(scope="module")
def model():
    return debug_model()


def test_model_refuses_mismatched_inputs_naming_their_shapes(model):
    ids, modality = mixed_batch(2)
    with pytest.raises(AssertionError, match=r"rank 1 \(shape \(29,\)\).*must be \[batch, length\]"):
        model(ids[0], modality[0])
    with pytest.raises(AssertionError, match=r"\[\(2, 29\), \(2, 28\)\]"):
        model(ids, modality[:, :-1])
    with pytest.raises(AssertionError, match=r"\[\(2, 29\), \(2, 29\), \(2, 29\), \(1, 29\)\]"):
        model(ids, modality, positions=np.ones((2, 29), np.int32), segment_ids=np.ones((1, 29), np.int32))
    with pytest.raises(AssertionError, match="has type float32 but expected <class 'int'>"):
        model(ids.astype(np.float32), modality)


def test_sampler_keeps_its_user_facing_value_error(model):
    ids, modality = mixed_batch(2)
    with pytest.raises(ValueError, match=r"share one \[batch, length\] shape"):
        Sampler(model).generate(ids, modality[:, :-1], vocab="latent", num_tokens=1)


def test_global_batch_refuses_fields_with_different_rows(eight_devices):
    mesh = make_mesh("1,-1,1,1")
    local = {"ids": np.zeros((8, 4), np.int32), "segments": np.zeros((4, 4), np.int32)}
    with pytest.raises(AssertionError, match=r"\(8,\), \(4,\).*batch fields \['ids', 'segments'\]"):
        global_batch(local, mesh)
    local["segments"] = np.ones((8, 4), np.int32)
    batch = global_batch(local, mesh)
    assert batch["segments"].shape == (8, 4) and len(batch["segments"].sharding.device_set) == 8
