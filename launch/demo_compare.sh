#!/usr/bin/env bash
# The paper's comparisons at demo scale (Fashion-MNIST, ViT-nano/7, 2 CPU cores):
# pretrain with every pretext task and every baseline for STEPS steps through
# the same CLI, fine-tune each on 1% of the labels, train the same model from
# scratch on them, and print one table (pretraining's final eval metric, test top-1).
#
#   bash launch/demo_compare.sh [STEPS] [FT_EPOCHS] [OUT_DIR] [TASKS...]
#
# colorize needs colour images, so it is not in the default list (Fashion-MNIST is gray).
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_dir"
steps=${1:-300}
epochs=${2:-20}
out=${3:-workdirs/compare}
shift $(( $# > 3 ? 3 : $# ))
tasks=("$@")
if [[ ${#tasks[@]} -eq 0 ]]; then
  tasks=(mask_grid7 mask_random_large sr4 denoise mixed sorting ae_sr4 ae_denoise ae_sorting mae)
fi

run() {  # run WORKDIR CONFIG: one training run, its output in WORKDIR.log
  local workdir=$1 config=$2
  printf 'run: python3 -m ebm_pretrain.main --config=%q --workdir=%q\n' "$config" "$workdir"
  python3 -m ebm_pretrain.main --config="$config" --workdir="$workdir" > "$workdir.log" 2>&1 \
    || { tail -20 "$workdir.log"; exit 1; }
}

last() {  # the last value of metric $2 in a run's metrics.jsonl
  python3 -c 'import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
v = [r for r in rs if sys.argv[2] in r]
print("%.4f" % v[-1][sys.argv[2]] if v else "-")' "$1/metrics.jsonl" "$2"
}

mkdir -p "$out"
declare -A pre top1
for task in "${tasks[@]}"; do
  wd="$out/pre_$task"
  run "$wd" "configs/demo.py:task=$task,steps=$steps"
  case $task in
    sorting) metric=eval/pe_sorted_step_2 ;;
    ae_*|mae) metric=eval/loss ;;
    *) metric=eval/psnr_step_2 ;;
  esac
  pre[$task]="$metric $(last "$wd" "$metric")"
  run "$out/ft_$task" "configs/demo_finetune.py:fraction=0.01,epochs=$epochs,init=$wd"
  top1[$task]=$(last "$out/ft_$task" eval/top1)
done
run "$out/ft_scratch" "configs/demo_finetune.py:fraction=0.01,epochs=$epochs"

echo
echo "Fashion-MNIST, ViT-nano/7: $steps pretraining steps, then $epochs epochs on 1% of the labels; test top-1 (10000 images)"
printf '| %-18s | %-34s | %-8s |\n' pretraining "pretraining eval" top-1
printf '| %-18s | %-34s | %-8s |\n' "(from scratch)" - "$(last "$out/ft_scratch" eval/top1)"
for task in "${tasks[@]}"; do
  printf '| %-18s | %-34s | %-8s |\n' "$task" "${pre[$task]}" "${top1[$task]}"
done
