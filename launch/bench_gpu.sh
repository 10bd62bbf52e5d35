#!/usr/bin/env bash
# GPU benchmark: ViT-B/16, 224px, bf16, N=2, at the largest batch that fits.
#
#   bash launch/bench_gpu.sh [OUT_DIR]
#
# Env: BATCHES (default "64 128 256 384 512"): the batches tried, in order, until
# one runs out of memory; INSTALL=1: first install this package and the CUDA 12
# build of JAX (same version as pyproject.toml); STEPS (default 5): timed rounds.
# Prints what it will run, then runs `python -m ebm_pretrain.benchmark` per batch
# and a one-line summary of the largest that fit. The figure to compare is the
# energy step's fraction of the chip's bf16 peak (target >= 40%).
# Exit: 0 done; 2 no GPU visible to JAX; 1 no batch fitted.
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_dir"
out=${1:-bench_gpu}
batches=${BATCHES:-64 128 256 384 512}
steps=${STEPS:-5}

if [[ "${INSTALL:-0}" == 1 ]]; then
  jax_version=$(python3 -c 'import re,sys; print(re.search(r"\"jax==([^\"]+)\"", open(sys.argv[1]).read()).group(1))' pyproject.toml)
  echo "install: pip install -e . jax[cuda12]==${jax_version}"
  python3 -m pip install -q -e . "jax[cuda12]==${jax_version}"
fi

echo "plan:    ViT-B/16 224px bf16 N=2; batches: ${batches} (stop at the first that fails); ${steps} timed rounds; results in ${out}/"
backend=$(python3 -c 'import jax; print(jax.default_backend())' 2>/dev/null || echo "none (import jax failed)")
if [[ "$backend" != gpu && "$backend" != cuda ]]; then
  echo "error: no GPU visible to JAX (default backend: ${backend}). Run on a GPU host; INSTALL=1 installs the CUDA build of JAX." >&2
  exit 2
fi
python3 -c 'import jax; d = jax.devices()[0]; print(f"device:  {d.device_kind} x{jax.device_count()}, jax {jax.__version__}")'
mkdir -p "$out"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}

best=""
for batch in ${batches}; do
  cmd=(python3 -m ebm_pretrain.benchmark --config=configs/vit_b.py
       "--config.batch_size=${batch}" --config.dtype=bfloat16 --config.inner_steps=2
       --matmul_size=8192 "--steps=${steps}" --pipeline_config=configs/tiny.py
       --pipeline_batches=5 "--output=${out}/vit_b_bs${batch}.json")
  printf 'run:     %s\n' "${cmd[*]}"
  if "${cmd[@]}" > "${out}/vit_b_bs${batch}.log" 2>&1; then
    best=$batch
    tail -n 8 "${out}/vit_b_bs${batch}.log"
  else
    echo "batch ${batch} failed (out of memory?): see ${out}/vit_b_bs${batch}.log"
    tail -n 3 "${out}/vit_b_bs${batch}.log"
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
peak = r['results']['roofline']['flops_per_s']
rate = lambda x: (f"{x['flops_per_s']/1e12:.1f} TFLOP/s = {100*x['roofline_fraction']:.0f}%"
                  if x.get('flops_per_s') else "FLOPs not counted")
print(f"SUMMARY {r['device']} ViT-B/16 224px bf16 N=2 batch {r['config']['batch_size']}: "
      f"energy step {e['step_s']*1e3:.1f} ms ({e['img_per_s']:.0f} img/s, {rate(e)}), "
      f"supervised step {s['step_s']*1e3:.1f} ms ({s['img_per_s']:.0f} img/s, {rate(s)}) "
      f"of the measured bf16 matmul ({peak/1e12:.0f} TFLOP/s); "
      f"energy/supervised time {e['step_s']/s['step_s']:.2f}x; XLA memory {e['xla_memory_mib']/1024:.1f} GiB")
PY
