#!/usr/bin/env bash
# Score a trained run source by source: FID and FD-DINOv2 of --num images of each source against
# that source's reference statistics (refs/imagenet-{id}.pkl from convert/build_multisource.sh:
# all images of the class). The sources' ImageNet ids come from the snapshot (its dataset.json).
# Results are appended to {run}/metrics-per-source.jsonl and tabulated in {run}/metrics-per-source.md.
#
# Usage: bash_files/metrics/score_multisource.sh --run DIR --refs DIR [--num INT] [--gpus INT]
#            [--snapshot FILE] [--metrics LIST] [--steps INT] [--dry-run] [node options]
#
#   --refs       folder of the references (the refs/ folder of build_multisource.sh's --out)
#   --num        generated images per source (default 5000, as in the study)
#   --gpus       processes (GPUs) on each node (default 1)
#   --snapshot   snapshot to score (default: the newest in --run, EMA std 0.050)
#   --nnodes, --node-rank, --master-addr, --master-port | --rdzv-endpoint HOST:PORT [--rdzv-id]
#                several machines: start the same command on each node with its --node-rank
#                (bash_files/common.sh; bash_files/slurm/ has a SLURM job)
#                (node 0 writes the results and the table)
set -euo pipefail
source "$(dirname "$0")/../common.sh"

OPTIONS="run refs num gpus snapshot metrics steps $NODE_OPTIONS"
run="" refs="" num=5000 gpus=1 snapshot="" metrics="fid,fd_dinov2" steps=""
parse_options "$@"
require run refs
check_int num "$num"
check_int gpus "$gpus"
check_nodes
[ -n "$snapshot" ] || snapshot="$(newest_file "$run" 'network-snapshot-*-0.050.pkl')"
extra=()
[ -z "$steps" ] || extra+=(--steps "$steps")
torchrun_py "$gpus" calculate_metrics.py gen --net "$snapshot" --per-class --ref "$refs/imagenet-{source}.pkl" \
    --num "$num" --metrics "$metrics" --results "$run/metrics-per-source.jsonl" --tag "snapshot=$(basename "$snapshot" .pkl)" "${extra[@]}"
if first_node; then
    py calculate_metrics.py table --results "$run/metrics-per-source.jsonl" --rows source --cols snapshot \
        --dest "$run/metrics-per-source.md" --overwrite
    echo "Table: $run/metrics-per-source.md"
fi
