#!/usr/bin/env bash
# The multi-source study's comparison for one cell, end to end (run_study.py grid): for K
# sources of one similarity level with N images each, build the datasets and the per-source
# references, train one model on all K sources jointly and one model per source on that source
# alone (the same images), score every model source by source (FID and FD-DINOv2 of --num images
# of each source against all images of its ImageNet class) and write {out}/study.{csv,md,png}.
# Re-running skips what is done.
#
# Usage: bash_files/compare_single_vs_multi.sh --imagenet DIR --out DIR --level sim1|sim2|sim3
#            --sources K --per-class N [--gpus INT] [--batch-gpu INT] [--num INT] [--seeds LIST]
#            [--vae DIR_OR_NAME] [--resolution PIXELS] [--preset NAME] [--duration NIMG]
#            [--set KEY=VALUE]... [--dry-run] [--nnodes N --node-rank R --master-addr HOST [--master-port PORT]]
#
#   --num   generated images per source for the metrics (default 5000, as in the study)
#   --preset, --duration, --set   shrink the runs (e.g. a trial on a small machine)
#   --nnodes, --node-rank, --master-addr, --master-port   several machines: start the same command
#           on each node with its --node-rank, --out on storage that every node sees; node 0
#           builds the data and writes the summary, the others wait for its data and join every
#           training and scoring command (torchrun's static rendezvous at node 0's address)
set -euo pipefail
source "$(dirname "$0")/common.sh"

OPTIONS="imagenet out level sources per-class gpus batch-gpu num seeds vae resolution preset duration $NODE_OPTIONS"
imagenet="" out="" level="" sources="" per_class="" gpus=8 batch_gpu=32 num=5000 seeds=0 vae="stabilityai/sd-vae-ft-mse" resolution=256 preset="" duration=""
parse_options "$@"
require imagenet out level sources per-class
check_nodes
[ -z "$rdzv_endpoint" ] || die "--rdzv-endpoint: the study needs node 0 to hold global rank 0; give --master-addr (node 0's address)"
args=(grid --data imagenet --source "$imagenet" --out "$out" --levels "$level" --sources "$sources" --per-class "$per_class"
    --seeds "$seeds" --gpus "$gpus" --batch-gpu "$batch_gpu" --num "$num" --vae "$vae" --resolution "$resolution" "${SET_ARGS[@]}")
[ -z "$preset" ] || args+=(--preset "$preset")
[ -z "$duration" ] || args+=(--duration "$duration")
[ "$nnodes" = 1 ] || args+=(--nnodes "$nnodes" --node-rank "$node_rank" --master-addr "$master_addr" --master-port "$master_port")
[ "$DRY_RUN" = 1 ] && args+=(--dry-run)
DRY_RUN=0 py run_study.py "${args[@]}"
