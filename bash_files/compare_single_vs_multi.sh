#!/usr/bin/env bash
# One comparison of the multi-source study, end to end (run_study.py grid --data imagenet): does
# training on K sources of one similarity level help the target source 171 (the source every
# level shares)? Builds the datasets (N images per source) and the target's reference (all
# images of its ImageNet class), trains the target alone and the target with the level's next
# K - 1 sources, scores the target with each (FID, KID and FD-DINOv2 of --num images) next to the
# metrics' floor, and writes {out}/study.{csv,md,png}. Re-running skips what is done.
#
# Usage: bash_files/compare_single_vs_multi.sh --imagenet DIR --out DIR --level sim1|sim2|sim3
#            --sources K --per-class N [--gpus INT] [--batch-gpu INT] [--num INT] [--replicates LIST]
#            [--vae DIR_OR_NAME] [--resolution PIXELS] [--preset NAME] [--arms LIST] [--budget NIMG]
#            [--set KEY=VALUE]... [--dry-run] [--nnodes N --node-rank R --master-addr HOST [--master-port PORT]]
#
#   --num   generated images of the target per score (default 5000, as in the study)
#   --arms, --budget   the budgets (default: each preset's own duration, as the study trains them;
#           --arms steps,per-source --budget NIMG: the same steps, and the same images per source)
#   --preset, --set   shrink the runs (e.g. a trial on a small machine)
#   --nnodes, --node-rank, --master-addr, --master-port   several machines: start the same command
#           on each node with its --node-rank, --out on storage that every node sees; node 0
#           builds the data and writes the summary, the others wait for its data and join every
#           training and scoring command (torchrun's static rendezvous at node 0's address)
set -euo pipefail
source "$(dirname "$0")/common.sh"

OPTIONS="imagenet out level sources per-class gpus batch-gpu num replicates vae resolution preset arms budget set $NODE_OPTIONS"
imagenet="" out="" level="" sources="" per_class="" gpus=8 batch_gpu=32 num=5000 replicates=0 vae="stabilityai/sd-vae-ft-mse" resolution=256
preset="" arms="" budget=""
parse_options "$@"
require imagenet out level sources per-class
check_int sources "$sources"
check_nodes
[ -z "$rdzv_endpoint" ] || die "--rdzv-endpoint: the study needs node 0 to hold global rank 0; give --master-addr (node 0's address)"
args=(grid --data imagenet --source "$imagenet" --out "$out" --levels "$level" --sources "1,$sources" --per-class "$per_class"
    --replicates "$replicates" --gpus "$gpus" --batch-gpu "$batch_gpu" --num "$num" --vae "$vae" --resolution "$resolution" "${SET_ARGS[@]}")
[ -z "$preset" ] || args+=(--preset "$preset")
[ -z "$arms" ] || args+=(--arms "$arms")
[ -z "$budget" ] || args+=(--budget "$budget")
[ "$nnodes" = 1 ] || args+=(--nnodes "$nnodes" --node-rank "$node_rank" --master-addr "$master_addr" --master-port "$master_port")
[ "$DRY_RUN" = 1 ] && args+=(--dry-run)
DRY_RUN=0 py run_study.py "${args[@]}"
