#!/usr/bin/env bash
# One command on a fresh Debian machine: install, then pretrain the demo on
# Fashion-MNIST (2 CPU cores, under 10 minutes), then say where the outputs are.
#
#   bash launch/demo.sh [WORKDIR] [MAIN_ARGS...]
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_dir"
workdir=${1:-workdirs/demo}
shift $(( $# > 0 ? 1 : 0 ))

sudo_cmd=()
[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
if [[ ! -d /usr/share/datasets/fashion-mnist ]]; then
  echo "install: apt-get install dataset-fashion-mnist"
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq dataset-fashion-mnist
fi
echo "install: pip install -e ."
python3 -m pip install -q -e .

printf 'run:     python3 -m ebm_pretrain.main --config=configs/demo.py --workdir=%q' "$workdir"
if [[ $# -gt 0 ]]; then printf ' %q' "$@"; fi
printf '\n'
python3 -m ebm_pretrain.main --config=configs/demo.py --workdir="$workdir" "$@"

echo
echo "checkpoints:        $workdir/checkpoints"
echo "metrics:            $workdir/metrics.jsonl"
echo "tensorboard:        tensorboard --logdir $workdir/tensorboard"
echo "restoration grids:  $workdir/images/ (columns: corrupted | step 1 | step 2 | original)"
