#!/usr/bin/env bash
# Creates the virtualenv in which benchmarks/peer/lapa_side.py runs LAPA's own code.
#
#   LAPA_SRC=/path/to/LAPA TUX_SRC=/path/to/tux bash benchmarks/peer/setup_lapa_env.sh [VENV_DIR]
#
# VENV_DIR defaults to .venv-lapa in the repository root (or $LAPA_VENV). The pins are the
# ones our parity fixtures were made with (tests/fixtures/lapa_vla_tiny/README.md and
# tests/fixtures/laq_torch_tiny/README.md): Python 3.11, jax/jaxlib 0.4.23 (CPU), flax 0.7.0,
# optax 0.1.7, chex 0.1.82, transformers 4.29.2, numpy 1.26.4, scipy 1.12.0 (LAPA's
# requirements.txt), plus what LAPA's and tux's modules import (tux: wandb, gcsfs, cloudpickle;
# the samplers: albumentations, cv2), torch 2.2.0 (laq/setup.py's pin) with einops and beartype for the LAQ, and
# pandas for LAPA's data/finetune_preprocess.py.
#
# You provide the source: a checkout of LatentActionPretraining/LAPA (commit 46aca51 is what the
# fixtures were made with) as LAPA_SRC and of lhao499/tux as TUX_SRC. Neither is installed into
# the venv; lapa_side.py puts both on sys.path. Only pip downloads anything, here at set-up; the
# harness itself reads nothing from the network.
#
# torch 2.2.0 from PyPI pulls its CUDA runtime packages (about 2.5 GB) even on CPU machines. To use
# a CPU-only build instead, set LAPA_TORCH to a wheel file or requirement of your own. Extra pip
# options (a wheel cache: PIP_FIND_LINKS=DIR) pass through pip's own environment variables.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-${LAPA_VENV:-$root/.venv-lapa}}"
python="${LAPA_PYTHON:-python3.11}"
torch_spec="${LAPA_TORCH:-torch==2.2.0}"

for var in LAPA_SRC TUX_SRC; do
    if [[ -z "${!var:-}" ]]; then
        echo "set $var to a checkout (see the top of $0)" >&2
        exit 2
    fi
done
[[ -f "$LAPA_SRC/latent_pretraining/delta_llama_action.py" && -f "$LAPA_SRC/laq/laq_model/nsvq.py" ]] || {
    echo "LAPA_SRC=$LAPA_SRC does not look like a LAPA checkout (latent_pretraining/, laq/)" >&2
    exit 2
}
[[ -f "$TUX_SRC/tux/__init__.py" ]] || { echo "TUX_SRC=$TUX_SRC has no tux/__init__.py" >&2; exit 2; }
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' || {
    echo "$python is not Python 3.11 (set LAPA_PYTHON)" >&2
    exit 2
}

"$python" -m venv "$venv"
# lapa_constraints.txt pins every transitive package to what the measured table used
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -c "$here/lapa_constraints.txt")
# the JAX side; orbax/tensorstore/opencv pinned to releases that still accept numpy 1.26 and jax 0.4.23
"${pip[@]}" \
    jax==0.4.23 jaxlib==0.4.23 flax==0.7.0 optax==0.1.7 chex==0.1.82 \
    transformers==4.29.2 tokenizers==0.13.3 huggingface-hub==0.16.4 \
    numpy==1.26.4 scipy==1.12.0 ml-dtypes==0.3.2 orbax-checkpoint==0.5.0 tensorstore==0.1.56 \
    einops ml-collections absl-py sentencepiece msgpack cloudpickle gcsfs wandb tqdm \
    albumentations==1.4.18 albucore==0.0.17 opencv-python-headless==4.10.0.84 \
    pandas==2.2.3 beartype
# the LAQ side
"${pip[@]}" "$torch_spec" numpy==1.26.4

{
    echo "LAPA_SRC=$LAPA_SRC"
    echo "TUX_SRC=$TUX_SRC"
} >"$venv/lapa_sources.env"
JAX_PLATFORMS=cpu "$venv/bin/python" "$here/lapa_side.py" --check --lapa_src "$LAPA_SRC" --tux_src "$TUX_SRC"
echo "ready: $venv (sources recorded in $venv/lapa_sources.env)"
