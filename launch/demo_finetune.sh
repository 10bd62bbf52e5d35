#!/usr/bin/env bash
# Fine-tune the demo pretraining (launch/demo.sh) on 1% and 10% of the
# Fashion-MNIST labels, train the same model from scratch on the same labels,
# and print the test-split top-1 of all four runs. Any backbone family: the
# fine-tuning takes the pretraining's model.
#
#   bash launch/demo_finetune.sh [PRETRAIN_WORKDIR] [OUT_DIR] [FRACTIONS]
#   bash launch/demo_finetune.sh workdirs/demo_convnext   # after configs/demo.py:model=convnext
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_dir"
pretrain=${1:-workdirs/demo}
out=${2:-workdirs}
read -r -a fractions <<< "${3:-0.01 0.1}"

if [[ ! -d "$pretrain/checkpoints" ]]; then
  echo "no pretraining in $pretrain: run 'bash launch/demo.sh $pretrain' first" >&2
  exit 2
fi

top1() {  # the last eval/top1 in a run's metrics.jsonl
  python3 -c 'import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
print("%.4f" % [r for r in rs if "eval/top1" in r][-1]["eval/top1"])' "$1/metrics.jsonl"
}

# The pretraining's model family, for the from-scratch runs.
family=$(python3 -c 'import json, sys
print(json.load(open(sys.argv[1]))["model"]["name"])' "$pretrain/config.json")
name=$(basename "$pretrain")

declare -A result
for fraction in "${fractions[@]}"; do
  for init in pretrained scratch; do
    workdir="$out/${name}_ft_${init}_${fraction}"
    if [[ $init == pretrained ]]; then
      spec="configs/demo_finetune.py:fraction=$fraction,init=$pretrain"
    else
      spec="configs/demo_finetune.py:fraction=$fraction,model=$family"
    fi
    args=(--config="$spec" --workdir="$workdir")
    printf 'run: python3 -m ebm_pretrain.main'
    printf ' %q' "${args[@]}"
    printf '\n'
    python3 -m ebm_pretrain.main "${args[@]}"
    result[$init,$fraction]=$(top1 "$workdir")
  done
done

echo
echo "Fashion-MNIST test top-1 (10000 images), $family pretrained in $pretrain:"
printf '%-10s %-12s %-12s\n' labels pretrained scratch
for fraction in "${fractions[@]}"; do
  printf '%-10s %-12s %-12s\n' "$fraction" "${result[pretrained,$fraction]}" "${result[scratch,$fraction]}"
done
