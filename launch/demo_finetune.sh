#!/usr/bin/env bash
# Fine-tune the demo pretraining (launch/demo.sh) on 1% and 10% of the
# Fashion-MNIST labels, train the same model from scratch on the same labels,
# and print the test-split top-1 of all four runs.
#
#   bash launch/demo_finetune.sh [PRETRAIN_WORKDIR] [OUT_DIR]
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_dir"
pretrain=${1:-workdirs/demo}
out=${2:-workdirs}

if [[ ! -d "$pretrain/checkpoints" ]]; then
  echo "no pretraining in $pretrain: run 'bash launch/demo.sh $pretrain' first" >&2
  exit 2
fi

top1() {  # the last eval/top1 in a run's metrics.jsonl
  python3 -c 'import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
print("%.4f" % [r for r in rs if "eval/top1" in r][-1]["eval/top1"])' "$1/metrics.jsonl"
}

declare -A result
for fraction in 0.01 0.1; do
  for init in pretrained scratch; do
    workdir="$out/demo_ft_${init}_${fraction}"
    args=(--config="configs/demo_finetune.py:fraction=$fraction" --workdir="$workdir")
    [[ $init == pretrained ]] && args+=(--config.init="$pretrain")
    printf 'run: python3 -m ebm_pretrain.main'
    printf ' %q' "${args[@]}"
    printf '\n'
    python3 -m ebm_pretrain.main "${args[@]}"
    result[$init,$fraction]=$(top1 "$workdir")
  done
done

echo
echo "Fashion-MNIST test top-1 (10000 images), ViT-nano/7:"
printf '%-10s %-12s %-12s\n' labels pretrained scratch
for fraction in 0.01 0.1; do
  printf '%-10s %-12s %-12s\n' "$fraction" "${result[pretrained,$fraction]}" "${result[scratch,$fraction]}"
done
