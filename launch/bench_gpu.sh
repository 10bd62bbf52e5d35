#!/usr/bin/env bash
# GPU benchmark: ViT-B/16, 224px, bf16, N=2, at the largest batch that fits.
#
#   bash launch/bench_gpu.sh [OUT_DIR]
#
# Installs the CUDA build of JAX (same version as pyproject.toml), then runs
# `python -m ebm_pretrain.benchmark` for growing batches until one runs out of
# memory, and prints a one-line summary of the largest that fit. The figure to
# compare is the energy step's fraction of the chip's bf16 peak (target >= 40%).
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_dir"
out=${1:-bench_gpu}
mkdir -p "$out"

jax_version=$(python3 -c 'import re,sys; print(re.search(r"\"jax==([^\"]+)\"", open(sys.argv[1]).read()).group(1))' pyproject.toml)
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  echo "install: pip install -e . jax[cuda12]==${jax_version}"
  python3 -m pip install -q -e . "jax[cuda12]==${jax_version}"
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}

best=""
for batch in ${BATCHES:-64 128 256 384 512}; do
  cmd=(python3 -m ebm_pretrain.benchmark --config=configs/vit_b.py
       "--config.batch_size=${batch}" --config.dtype=bfloat16 --config.inner_steps=2
       --matmul_size=8192 --pipeline_config=configs/tiny.py --pipeline_batches=5
       "--output=${out}/vit_b_bs${batch}.json")
  printf 'run:     %s\n' "${cmd[*]}"
  if "${cmd[@]}" > "${out}/vit_b_bs${batch}.log" 2>&1; then
    best=$batch
    tail -n 8 "${out}/vit_b_bs${batch}.log"
  else
    echo "batch ${batch} failed (out of memory?): see ${out}/vit_b_bs${batch}.log"
    break
  fi
done

if [[ -z "$best" ]]; then
  echo "no batch fitted" >&2
  exit 1
fi
python3 - "${out}/vit_b_bs${best}.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
e, s = r["results"]["energy_step"], r["results"]["supervised_step"]
print(f"SUMMARY {r['device']} ViT-B/16 224px bf16 N=2 batch {r['config']['batch_size']}: "
      f"energy step {e['step_s']*1e3:.1f} ms ({e['img_per_s']:.0f} img/s), "
      f"{e['flops_per_s']/1e12:.1f} TFLOP/s = {100*e['roofline_fraction']:.0f}% of the measured bf16 matmul "
      f"({r['results']['roofline']['flops_per_s']/1e12:.0f} TFLOP/s); "
      f"energy/supervised time {e['step_s']/s['step_s']:.2f}x; XLA memory {e['xla_memory_mib']/1024:.1f} GiB")
PY
