#!/usr/bin/env bash
# Pretrain on one host with all of its GPUs (data parallel over every device).
#
#   launch/gpu_host.sh --config=configs/vit_b.py --workdir=/data/runs/vit_b \
#       --config.data.data_dir=/data/tensorflow_datasets
#
# Set INSTALL=1 to install the CUDA 12 build of JAX first. CUDA_VISIBLE_DEVICES
# limits the GPUs used.
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_dir"

if [[ "${INSTALL:-0}" == 1 ]]; then
  jax_version=$(python3 -c 'import re,sys; print(re.search(r"\"jax==([^\"]+)\"", open(sys.argv[1]).read()).group(1))' pyproject.toml)
  echo "install: pip install -e . jax[cuda12]==${jax_version}"
  python3 -m pip install -q -e . "jax[cuda12]==${jax_version}"
fi

# Let XLA use most GPU memory up front, and overlap collectives with compute.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"

echo "GPUs:    ${CUDA_VISIBLE_DEVICES:-all}"
printf 'run:     python3 -m ebm_pretrain.main'
if [[ $# -gt 0 ]]; then printf ' %q' "$@"; fi
printf '\n'
exec python3 -m ebm_pretrain.main "$@"
