#!/usr/bin/env bash
# CPU: the energy step's speed and memory under jax's own XLA flags, with YNN
# fusions off (the package's default on a known-bad jaxlib, ebm_pretrain/xla_flags.py)
# and with them on but for reductions. XLA flags hold for a whole process, so
# each setting is its own benchmark process; the settings alternate for ROUNDS
# rounds so that a slow spell of the machine hits all of them.
#
#   bash launch/bench_xla_cpu.sh [OUT_DIR]
#
# Env: ROUNDS (default 2), STEPS (default 5: timed steps per process).
# Prints one line per config, setting and round; JSON in OUT_DIR.
set -euo pipefail
repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_dir"
out=${1:-bench_xla_cpu}
rounds=${ROUNDS:-2}
steps=${STEPS:-5}
mkdir -p "$out"
export JAX_PLATFORMS=cpu

configs=("demo:configs/demo.py" "vit_s_b8:configs/vit_s.py --config.batch_size=8 --config.dtype=float32")
settings=("jax_default" "ynn_off" "ynn_no_reduce")

for round in $(seq 1 "$rounds"); do
  for entry in "${configs[@]}"; do
    name=${entry%%:*}
    read -r -a args <<<"${entry#*:}"
    for setting in "${settings[@]}"; do
      case $setting in
        jax_default) env=(EBM_PRETRAIN_JAX_DEFAULT_FLAGS=1 XLA_FLAGS=) ;;
        ynn_off) env=(XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=) ;;
        ynn_no_reduce) env=(XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-reduce) ;;
      esac
      json="$out/${name}_${setting}_r${round}.json"
      env "${env[@]}" python3 -m ebm_pretrain.benchmark "--config=${args[0]}" "${args[@]:1}" \
        --steps="$steps" --pipeline_batches=2 --output="$json" >"${json%.json}.log" 2>&1
      python3 - "$json" "$name" "$setting" "$round" <<'PY'
import json, sys
rep = json.load(open(sys.argv[1]))
e = rep["results"]["energy_step"]
print(f"{sys.argv[2]:9s} {sys.argv[3]:14s} round {sys.argv[4]}: energy step {e['step_s']:.3f} s, "
      f"XLA memory {e['xla_memory_mib'] / 1024:.2f} GiB, compile {e['compile_s']:.1f} s, "
      f"RSS peak {e['rss_peak_mib'] / 1024:.2f} GiB", flush=True)
PY
    done
  done
done
