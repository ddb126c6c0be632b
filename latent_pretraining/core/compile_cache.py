"""JAX's persistent compilation cache for the command-line tools: a rerun, a resumed run or a
restarted server loads its compiled programs from disk instead of compiling them again."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DIR = Path("~/.cache/latent_pretraining/jax").expanduser()
MAX_BYTES = 4 * 2**30  # past this, the least recently used programs are deleted


def enable_compilation_cache() -> str | None:
    """Caches compiled programs in ``$JAX_COMPILATION_CACHE_DIR`` when it is set (set but empty:
    no cache, JAX reads the variable itself), else in ``~/.cache/latent_pretraining/jax``
    capped at 4 GiB. Returns the folder, or None when caching is off."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return os.environ["JAX_COMPILATION_CACHE_DIR"] or None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(DEFAULT_DIR))
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return str(DEFAULT_DIR)
