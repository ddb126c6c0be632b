"""The package as users install and run it: declared dependencies, trainer CLIs started from any
directory, their ``--help``, and no TensorFlow start-up noise."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from latent_pretraining.core.loop import PACKAGE_ROOT, resolve_config_path

PACKAGES = ("latent_pretraining", "lam", "data", "sim")
OPTIONAL_IMPORTS = {"wandb"}  # imported only when a run asks for it
# lines TensorFlow's C++ start-up and tfds print although the user asked for none of them
NOISE = ("absl::InitializeLog", "oneDNN", "cpu_feature_guard", "Downloading and preparing")


def _name(requirement: str) -> str:
    """The normalised distribution name of ``name[extra]>=1.0  # comment``."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement.strip()).group()).lower()


def _imported_distributions() -> set[str]:
    """Distributions of the third-party modules that the packages' code imports."""
    modules = set()
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - set(PACKAGES) - OPTIONAL_IMPORTS - {"__future__"}
    installed = packages_distributions()
    return {_name(dist) for module in third_party for dist in installed[module]}


def test_pyproject_declares_what_the_code_imports_and_the_lock_pins_it():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"  # an SPDX string: no setuptools licence warnings
    declared = {_name(r) for r in project["dependencies"]}
    assert _imported_distributions() <= declared
    dev = {_name(r) for r in project["optional-dependencies"]["dev"]}
    assert {"pytest", "pytest-xdist", "ruff", "import-linter"} <= dev
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    pinned = {_name(line) for line in lines if "==" in line.split("#")[0]}
    assert declared | dev <= pinned


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python <args>`` in ``cwd`` as a user runs it: one CPU device, TensorFlow's defaults."""
    drop = {"XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    ("command", "fields"),
    [
        (["latent_pretraining.train"], ["data.train", "optimizer.learning_rate"]),
        (["lam.train"], ["data.source", "run_dir"]),
        (["latent_pretraining.vqgan", "train"], ["data.path", "run_dir"]),
        (["latent_pretraining.actions.decoder", "train"], ["data.train", "optimizer.learning_rate"]),
    ],
)
def test_trainer_help_exits_0_and_lists_the_config_fields(tmp_path, command, fields):
    out = _run(["-m", *command, "--help"], tmp_path)  # not the repository: the default config is found
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for field in fields:
        assert f"--config.{field}=" in out.stdout


def test_help_shows_the_chosen_config_file_and_overridden_values(tmp_path):
    """A repository config path given from another directory is the installed file."""
    args = ["-m", "lam.train", "--config=lam/configs/lam.py:tiny", "--config.total_steps=7", "--help"]
    out = _run(args, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"--config={PACKAGE_ROOT}/lam/configs/lam.py:tiny:" in out.stdout
    assert "--config.total_steps=7\n" in out.stdout


def test_config_paths_resolve_in_the_working_directory_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("lam/configs/lam.py:tiny") == f"{PACKAGE_ROOT}/lam/configs/lam.py:tiny"
    (tmp_path / "lam" / "configs").mkdir(parents=True)
    (tmp_path / "lam" / "configs" / "lam.py").write_text("")  # a user's own file of that name
    assert resolve_config_path("lam/configs/lam.py:tiny") == "lam/configs/lam.py:tiny"
    assert resolve_config_path("missing.py") == "missing.py"  # left for ml_collections to report


def test_rlds_writing_and_reading_print_no_tensorflow_start_up_lines(tmp_path):
    write = _run(
        ["-m", "data.make_tabletop", "--out", "tt", "--episodes", "1", "--formats", "rlds"], tmp_path
    )
    assert write.returncode == 0, write.stderr[-4000:]
    read = _run(
        [
            "-c",
            "from latent_pretraining.episodes import EpisodeFrames, open_episodes; "
            "print(len(EpisodeFrames(open_episodes('rlds', 'tt/rlds/tabletop/1.0.0'))))",
        ],
        tmp_path,
    )
    assert read.returncode == 0, read.stderr[-4000:]
    for out in (write, read):
        output = out.stdout + out.stderr
        assert not [noise for noise in NOISE if noise in output], output[-4000:]


CACHE_PROBE = """
import jax, jax.numpy as jnp
from latent_pretraining.core.compile_cache import enable_compilation_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
print(enable_compilation_cache())
jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()
print("hits", sum(e.endswith("/cache_hits") for e in events))
"""


def test_tools_cache_compiled_programs_for_the_next_process(tmp_path):
    """The second process loads the first one's program from ~/.cache; an empty
    JAX_COMPILATION_CACHE_DIR turns the cache off."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(HOME=str(tmp_path), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

    def probe(**extra: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", CACHE_PROBE],
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.split("\n")

    folder = tmp_path / ".cache" / "latent_pretraining" / "jax"
    first, second = probe(), probe()
    assert first[0] == second[0] == str(folder)
    assert first[1] == "hits 0" and second[1] != "hits 0"
    assert any(folder.iterdir())
    assert probe(JAX_COMPILATION_CACHE_DIR="")[:2] == ["None", "hits 0"]
