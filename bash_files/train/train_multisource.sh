#!/usr/bin/env bash
# Train the study's EDM2-XS model for K sources with N images each (preset
# edm2-img256-xs-{K}c-{N}) on a latent dataset from convert/build_multisource.sh, with torchrun.
# Re-running the same command resumes from the newest training state in --outdir.
#
# Usage: bash_files/train/train_multisource.sh --data LATENTS.zip --sources 1|3|5|10
#            --per-class 100|500|1000 --outdir DIR [--gpus INT] [--batch-gpu INT] [--dry-run]
#
#   --gpus        processes (GPUs) on this node (default 8)
#   --batch-gpu   images per GPU and step; the batch of 2048 is reached by gradient accumulation
#                 (default 32: fits an 80 GB GPU comfortably)
set -euo pipefail
source "$(dirname "$0")/../common.sh"

data="" sources="" per_class="" outdir="" gpus=8 batch_gpu=32
while [ $# -gt 0 ]; do
    case "$1" in
        --data)      need_value "$1" "${2:-}"; data="$2"; shift 2 ;;
        --sources)   need_value "$1" "${2:-}"; sources="$2"; shift 2 ;;
        --per-class) need_value "$1" "${2:-}"; per_class="$2"; shift 2 ;;
        --outdir)    need_value "$1" "${2:-}"; outdir="$2"; shift 2 ;;
        --gpus)      need_value "$1" "${2:-}"; gpus="$2"; shift 2 ;;
        --batch-gpu) need_value "$1" "${2:-}"; batch_gpu="$2"; shift 2 ;;
        --dry-run)   DRY_RUN=1; shift ;;
        -h|--help)   usage; exit 0 ;;
        *) die "unknown argument '$1'" ;;
    esac
done
[ -n "$data" ] || die "--data is required"
[ -n "$outdir" ] || die "--outdir is required"
check_choice --sources "$sources" 1 3 5 10
check_choice --per-class "$per_class" 100 500 1000
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "--gpus must be a positive integer"
[[ "$batch_gpu" =~ ^[1-9][0-9]*$ ]] || die "--batch-gpu must be a positive integer"

cd "$REPO_ROOT"
run torchrun --standalone --nproc_per_node="$gpus" train_edm2.py \
    --preset "edm2-img256-xs-${sources}c-${per_class}" --data "$data" --outdir "$outdir" --batch-gpu "$batch_gpu"
