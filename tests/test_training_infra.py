"""The shared training infrastructure: per-host batch streams, checkpoints, metrics."""

from __future__ import annotations

import json

import numpy as np
import optax
import pytest
from helpers import debug_config

from latent_pretraining.core.batches import BatchStream, host_rows
from latent_pretraining.core.checkpointing import Checkpointer
from latent_pretraining.core.logger import MetricsLogger
from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.core.state import abstract_state, create_train_state
from latent_pretraining.model import VLAModel


def test_hosts_read_disjoint_rows_that_cover_the_epoch():
    parts = [host_rows(100, seed=3, epoch=2, process_index=i, process_count=3) for i in range(3)]
    joined = np.concatenate(parts)
    assert len(joined) == 100 and len(set(joined.tolist())) == 100
    assert not np.array_equal(host_rows(100, 3, 2, 0, 1), host_rows(100, 3, 1, 0, 1))  # reshuffled per epoch


def _stream(prefetch):
    return BatchStream(
        10, 3, lambda rows, epoch, index: {"rows": rows.copy(), "epoch": epoch}, seed=1, prefetch=prefetch
    )


def test_batch_stream_prefetch_and_resume_give_the_same_batches():
    plain, prefetched = _stream(0), _stream(3)
    sequence = [next(plain)["rows"].tolist() for _ in range(8)]  # 3 batches per epoch: crosses epochs
    assert [next(prefetched)["rows"].tolist() for _ in range(8)] == sequence
    assert len({tuple(rows) for rows in sequence[:3]}) == 3
    interrupted = _stream(2)
    for _ in range(5):
        next(interrupted)
    saved = json.loads(json.dumps(interrupted.state()))  # what a checkpoint stores
    resumed = _stream(2)
    resumed.restore(saved)
    assert resumed.peek()["rows"].tolist() == sequence[5]
    assert [next(resumed)["rows"].tolist() for _ in range(3)] == sequence[5:8]
    with pytest.raises(ValueError, match="not this run's data"):
        resumed.restore({"epoch": 0, "index": 0, "seed": 1, "num_rows": 11})


def test_checkpoint_restores_sharded_state_and_data_position(tmp_path, eight_devices):
    mesh = make_mesh("1,2,2,2")
    factory = lambda rngs: VLAModel(debug_config(), rngs=rngs)  # noqa: E731
    _, state, _ = create_train_state(factory, optax.adamw(1e-3), mesh, seed=0)
    checkpointer = Checkpointer(tmp_path, keep=2, save_every=10)
    assert not checkpointer.maybe_save(5, state, {"epoch": 0, "index": 5})  # not a multiple of save_every
    assert checkpointer.maybe_save(10, state, {"epoch": 1, "index": 2})
    checkpointer.wait()
    _, other, _ = create_train_state(factory, optax.adamw(1e-3), mesh, seed=7)
    restored, data = checkpointer.restore(abstract_state(other))
    assert data == {"epoch": 1, "index": 2}
    got, want = restored["params"]["layers"]["wq"][...], state["params"]["layers"]["wq"][...]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert got.sharding.spec == want.sharding.spec and len(got.sharding.device_set) == 8
    mu = restored["opt_state"][0].mu["layers"]["wq"][...]
    assert mu.sharding.spec == want.sharding.spec  # optimizer moments sharded like their parameter
    checkpointer.close()


def test_metrics_logger_writes_jsonl_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricsLogger(tmp_path)
    logger.log(5, {"loss": 1.5})
    logger.log(10, {"psnr": 20.0}, prefix="eval")
    logger.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("train/loss"), r.get("eval/psnr")) for r in lines] == [
        (5, 1.5, None),
        (10, None, 20.0),
    ]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(5, 1.5)]
