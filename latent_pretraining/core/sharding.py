"""Device mesh, logical-axis sharding rules and multi-host start-up.

One ordered rule table maps logical axis names (carried by every parameter as
``logical_axes`` metadata, and named at every activation constraint) to the
mesh axes ``('dp', 'fsdp', 'tp', 'sp')``. The first rule for a logical name
whose mesh axes are still free in the spec, and whose size divides the array
dimension, wins; otherwise that dimension is replicated (logged once per case).
A run overrides the table with ``axis_rules(...)`` (its config's ``logical_axis_rules``)
or passes ``rules=`` explicitly.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES: tuple[str, ...] = ("dp", "fsdp", "tp", "sp")

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Ordered (logical name, mesh axes) rules. Several rules may name the same
# logical axis: they are tried in order (MaxText's pattern).
DEFAULT_RULES: Rules = (
    # activations
    ("activation_batch", ("dp", "fsdp")),
    ("activation_length", "sp"),
    ("activation_embed", None),
    ("activation_heads", "tp"),
    ("activation_kv_heads", "tp"),
    ("activation_mlp", "tp"),
    ("activation_vocab", "tp"),
    # parameters
    ("vocab", "tp"),
    ("embed", ("fsdp", "sp")),
    ("embed", "fsdp"),
    ("q_heads", "tp"),
    ("kv_heads", "tp"),
    ("mlp", "tp"),
    ("layers", None),
    ("norm", None),
)

_ACTIVE_RULES: contextvars.ContextVar[Rules] = contextvars.ContextVar(
    "logical_axis_rules", default=DEFAULT_RULES
)
_WARNED: set[tuple[str, int, tuple[MeshAxes, ...]]] = set()  # replicated dimensions already logged


def validate_rules(rules: Sequence[Any]) -> Rules:
    """``rules`` as a tuple of ``(logical name, mesh axes)`` pairs (JSON's lists accepted); a
    malformed entry or an unknown mesh axis is a ValueError naming the entry."""
    if isinstance(rules, str) or not isinstance(rules, Sequence):
        raise ValueError(
            f"logical_axis_rules must be a sequence of (logical name, mesh axes) pairs, got {rules!r}"
        )
    out = []
    for entry in rules:
        if isinstance(entry, str) or not isinstance(entry, Sequence) or len(entry) != 2:
            raise ValueError(f"logical_axis_rules entry {entry!r}: expected a (logical name, mesh axes) pair")
        name, axes = entry
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"logical_axis_rules entry {entry!r}: the logical name must be a non-empty string"
            )
        names = () if axes is None else (axes,) if isinstance(axes, str) else axes
        if not isinstance(names, Sequence) or not all(isinstance(a, str) for a in names):
            raise ValueError(
                f"logical_axis_rules entry {entry!r}: mesh axes must be None, a name or a list of names"
            )
        unknown = [a for a in names if a not in MESH_AXES]
        if unknown:
            raise ValueError(
                f"logical_axis_rules entry {entry!r}: unknown mesh axis {unknown[0]!r}; axes are {MESH_AXES}"
            )
        if len(set(names)) != len(names) or (axes is not None and not names):
            raise ValueError(f"logical_axis_rules entry {entry!r}: mesh axes must be distinct and not empty")
        out.append((name, axes if axes is None or isinstance(axes, str) else tuple(names)))
    return tuple(out)


@contextlib.contextmanager
def axis_rules(rules: Sequence[Any] | None) -> Iterator[Rules]:
    """Within the block, shardings computed without ``rules=`` (parameters, batches and the
    model's activation constraints, traced there) use ``rules``; None: ``DEFAULT_RULES``."""
    token = _ACTIVE_RULES.set(DEFAULT_RULES if rules is None else validate_rules(rules))
    try:
        yield _ACTIVE_RULES.get()
    finally:
        _ACTIVE_RULES.reset(token)


F = TypeVar("F", bound=Callable[..., Any])


def uses_config_axis_rules(train: F) -> F:
    """Runs ``train(config, ...)`` within ``axis_rules(config.logical_axis_rules)``."""

    @functools.wraps(train)
    def wrapped(config: Any, *args: Any, **kwargs: Any) -> Any:
        with axis_rules(config.logical_axis_rules):
            return train(config, *args, **kwargs)

    return wrapped  # type: ignore[return-value]


def parse_mesh_dims(spec: str, num_devices: int) -> tuple[tuple[int, ...], bool]:
    """Parses ``"dp,fsdp,tp,sp"`` (one entry may be -1), LAPA's ``"!-1,8,1,1"``
    (the ``!`` allows splitting physical axes) or ``"dp:2,fsdp:4"``.

    Returns the four axis sizes and whether physical axes may be split.
    """
    text = spec.strip()
    allow_split = text.startswith("!")
    text = text.lstrip("!")
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if all(":" in p for p in parts):
        named = {}
        for p in parts:
            name, value = p.split(":", 1)
            if name not in MESH_AXES:
                raise ValueError(f"mesh {spec!r}: unknown axis {name!r}; axes are {MESH_AXES}")
            named[name] = int(value)
        dims = [named.get(a, 1) for a in MESH_AXES]
    else:
        try:
            dims = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"mesh {spec!r}: expected integers like '1,-1,1,1'") from None
        if len(dims) > len(MESH_AXES):
            raise ValueError(f"mesh {spec!r}: at most {len(MESH_AXES)} axes {MESH_AXES}")
        dims += [1] * (len(MESH_AXES) - len(dims))
    if dims.count(-1) > 1:
        raise ValueError(f"mesh {spec!r}: at most one axis may be -1")
    if any(d == 0 or d < -1 for d in dims):
        raise ValueError(f"mesh {spec!r}: axis sizes must be positive or -1")
    known = int(np.prod([d for d in dims if d != -1]))
    if -1 in dims:
        if num_devices % known:
            raise ValueError(f"mesh {spec!r}: {num_devices} devices are not divisible by {known}")
        dims[dims.index(-1)] = num_devices // known
    if int(np.prod(dims)) != num_devices:
        raise ValueError(
            f"mesh {spec!r}: {dict(zip(MESH_AXES, dims, strict=False))} needs {int(np.prod(dims))} devices, "
            f"but {num_devices} are available"
        )
    return tuple(dims), allow_split


def make_mesh(spec: str = "1,-1,1,1", devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a ``('dp','fsdp','tp','sp')`` mesh with Auto axis types."""
    devices = list(jax.devices() if devices is None else devices)
    dims, allow_split = parse_mesh_dims(spec, len(devices))
    device_grid = mesh_utils.create_device_mesh(dims, devices=devices, allow_split_physical_axes=allow_split)
    return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _mesh_size(mesh: Any, axes: MeshAxes) -> int:
    if axes is None:
        return 1
    names = (axes,) if isinstance(axes, str) else axes
    return int(np.prod([mesh.shape[a] for a in names]))


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Any,
    rules: Sequence[Any] | None = None,
) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec for an array of ``shape`` (``rules``
    default: those of the enclosing ``axis_rules``, else ``DEFAULT_RULES``)."""
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    rules = _ACTIVE_RULES.get() if rules is None else validate_rules(rules)
    used: set[str] = set()
    out: list[MeshAxes] = []
    for name, dim in zip(logical_axes, shape, strict=False):
        chosen: MeshAxes = None
        undivided: list[MeshAxes] = []
        if name is not None:
            for rule_name, axes in rules:
                if rule_name != name or axes is None:
                    continue
                names = (axes,) if isinstance(axes, str) else tuple(axes)
                if any(a in used or a not in mesh.shape for a in names):
                    continue
                size = _mesh_size(mesh, names)
                if size > 1 and dim % size:
                    undivided.append(axes)
                    continue
                used.update(names)
                kept = tuple(a for a in names if mesh.shape[a] > 1)  # size-1 axes add nothing
                chosen = None if not kept else kept[0] if len(kept) == 1 else kept
                break
            else:  # no rule fitted
                if undivided:
                    _warn_replicated(name, dim, tuple(undivided), mesh)
        out.append(chosen)
    return PartitionSpec(*out)


def _warn_replicated(name: str, dim: int, undivided: tuple[MeshAxes, ...], mesh: Any) -> None:
    """Logs, once per process and case, a dimension replicated because no mesh axes divide it."""
    key = (name, dim, undivided)
    if key in _WARNED:
        return
    _WARNED.add(key)
    sizes = ", ".join(f"{axes} ({_mesh_size(mesh, axes)})" for axes in undivided)
    log.warning("logical axis %r of size %d is not divisible by mesh axes %s: replicated", name, dim, sizes)


def with_logical_constraint(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names (the ``axis_rules`` in effect at trace time); a
    no-op when no mesh is set."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh))


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Sequence[Any] | None = None) -> Any:
    """NamedShardings for an nnx State whose Variables carry ``logical_axes``."""

    def one(var: Any) -> Any:
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        if not hasattr(value, "shape"):  # e.g. optax's MaskedNode: the state of a frozen group
            return var
        axes = var.get_metadata().get("logical_axes") if isinstance(var, nnx.Variable) else None
        spec = PartitionSpec() if axes is None else logical_to_spec(axes, value.shape, mesh, rules)
        sharding = NamedSharding(mesh, spec)
        return var.replace(sharding) if isinstance(var, nnx.Variable) else sharding

    return jax.tree.map(one, abstract_state, is_leaf=lambda v: isinstance(v, nnx.Variable))


def create_sharded(factory: Callable[[nnx.Rngs], nnx.Module], mesh: Mesh, seed: int = 0) -> nnx.Module:
    """Creates ``factory(rngs)`` with every parameter born on its target sharding."""
    abstract = nnx.eval_shape(lambda: factory(nnx.Rngs(seed)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh)

    def init() -> Any:
        return nnx.state(factory(nnx.Rngs(seed)))

    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def cluster_described() -> bool:
    """True when the environment describes a multi-process job."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        return True
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return True
    return int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


def maybe_initialize_distributed(**kwargs: Any) -> bool:
    """Calls ``jax.distributed.initialize`` when a cluster is described (or
    explicit arguments are given); returns whether the process is distributed.

    Besides what JAX detects itself (SLURM, Cloud TPU, Open MPI, ...), an explicit
    cluster is ``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``. With ``JAX_PLATFORMS=cpu`` the CPU collectives use gloo.
    """
    if not kwargs and not cluster_described():
        return False
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    if "JAX_NUM_PROCESSES" in env and "num_processes" not in kwargs:
        kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
    if "JAX_PROCESS_ID" in env and "process_id" not in kwargs:
        kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    if env.get("JAX_PLATFORMS", "") == "cpu" and hasattr(jax.config, "jax_cpu_collectives_implementation"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the default in newer JAX
    jax.distributed.initialize(**kwargs)
    log.info(
        "jax.distributed initialised: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True
