"""Sharded train state: creation on the mesh, the step's shardings, AOT compilation
with a memory report, and global batches built from each host's local data."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from latent_pretraining.core.sharding import logical_to_spec, state_shardings

log = logging.getLogger(__name__)

TrainState = dict[str, Any]  # {"params", "rest", "opt_state", "step", "rng"}


def create_train_state(
    factory: Callable[[nnx.Rngs], nnx.Module],
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    seed: int = 0,
) -> tuple[nnx.GraphDef, TrainState, Any]:
    """Builds the model and its optimizer state directly on their target shardings.

    Returns the model's graphdef, the state (``params``: trainable ``nnx.Param``s,
    ``rest``: other variables, ``opt_state``, ``step``, ``rng``) and its shardings.
    """

    def init() -> TrainState:
        model = factory(nnx.Rngs(seed))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        return {
            "params": params,
            "rest": rest,
            "opt_state": optimizer.init(params),
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.PRNGKey(seed + 1),
        }

    abstract = jax.eval_shape(init)
    shardings = state_shardings(abstract, mesh)  # optimizer moments inherit their parameter's axes
    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: factory(nnx.Rngs(seed))))
    return graphdef, state, shardings


def abstract_state(state: TrainState) -> Any:
    """ShapeDtypeStructs with shardings: the target of a checkpoint restore."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def batch_sharding(mesh: Mesh, ndim: int, shape: tuple[int, ...] | None = None) -> NamedSharding:
    """Batch dimension over ('dp', 'fsdp'), the rest replicated."""
    names = ("activation_batch",) + (None,) * (ndim - 1)
    spec = logical_to_spec(names, shape, mesh) if shape is not None else PartitionSpec(("dp", "fsdp"))
    return NamedSharding(mesh, spec)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Each host passes its own rows; the result is one global array per field."""
    chex.assert_equal_shape_prefix(
        list(local.values()), 1, custom_message=f"batch fields {list(local)} must have the same rows"
    )
    out = {}
    for key, value in local.items():
        global_shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        sharding = batch_sharding(mesh, value.ndim, global_shape)
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


def compile_step(
    step: Callable,
    state: TrainState,
    batch: dict[str, jax.Array],
    state_shards: Any,
    mesh: Mesh,
    donate: bool = True,
) -> Any:
    """AOT-compiles ``step(state, batch) -> (state, metrics)`` once and logs its memory report."""
    batch_shards = {k: v.sharding for k, v in batch.items()}
    jitted = jax.jit(
        step,
        in_shardings=(state_shards, batch_shards),
        out_shardings=(state_shards, None),
        donate_argnums=(0,) if donate else (),
    )
    with jax.set_mesh(mesh):
        compiled = jitted.lower(state, batch).compile()
    report = memory_report(compiled)
    if report:
        log.info("train step memory (bytes): %s", json.dumps(report))
        print(f"train step compiled; memory per device: {_human(report)}", flush=True)
    return compiled


def memory_report(compiled: Any) -> dict[str, int]:
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # backends without the analysis
        return {}
    if analysis is None:
        return {}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")
    return {f: int(getattr(analysis, f)) for f in fields if hasattr(analysis, f)}


def _human(report: dict[str, int]) -> str:
    return ", ".join(f"{k.replace('_size_in_bytes', '')} {v / 2**20:.1f} MiB" for k, v in report.items())
