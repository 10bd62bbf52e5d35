#!/usr/bin/env bash
# Pretrain on every host of a TPU VM (v4/v5e/v5p pods included).
#
#   launch/tpu_vm.sh TPU_NAME ZONE --config=configs/vit_b.py --workdir=gs://BUCKET/vit_b \
#       --config.data.data_dir=gs://BUCKET/tensorflow_datasets
#
# Copies this checkout to every worker, installs it with the TPU build of JAX,
# and starts the same command on all hosts; jax.distributed.initialize() finds
# the pod topology by itself (--distributed). The workdir must be shared (gs://).
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE MAIN_ARGS..." >&2
  exit 2
fi
tpu=$1
zone=$2
shift 2

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
jax_version=$(python3 -c 'import re,sys; print(re.search(r"\"jax==([^\"]+)\"", open(sys.argv[1]).read()).group(1))' "$repo_dir/pyproject.toml")
main_args=$(printf '%q ' "$@")
# Exit 75: stopped by SIGTERM (maintenance, preemption) after saving a
# checkpoint; run this script again with the same arguments to resume.
remote="cd ~/ebm_pretrain && pip install -q -e '.[gcs]' 'jax[tpu]==${jax_version}' && python3 -m ebm_pretrain.main --distributed ${main_args}"

echo "TPU VM:  $tpu (zone $zone), all workers"
echo "copy:    $repo_dir -> ~/ebm_pretrain on every worker"
echo "run:     $remote"

gcloud compute tpus tpu-vm scp --recurse "$repo_dir" "$tpu":~/ebm_pretrain \
  --zone "$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$remote"
