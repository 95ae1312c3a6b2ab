#!/usr/bin/env bash
# The multi-source study on ImageNet (run_study.py grid --data imagenet), the paper's grid:
# similarity levels sim1..sim3, K = 3, 5, 10 sources, N = 100, 500, 1000 images per source; the
# study's EDM2-XS presets trained with torchrun; every source scored with FID and FD-DINOv2 of
# 5000 images against all images of its class. Writes OUTDIR/study.{csv,md,png}; re-running
# resumes. Any of run_study.py grid's options narrows or changes the grid.
#
# Usage: bash_files/study/imagenet.sh --imagenet DIR --out DIR [--gpus INT] [--batch-gpu INT]
#            [--levels LIST] [--sources LIST] [--per-class LIST] [--seeds LIST] [...] [--dry-run]
set -euo pipefail
source "$(dirname "$0")/../common.sh"

[ "${1:-}" = --imagenet ] && [ -n "${2:-}" ] || die "--imagenet DIR is required (first)"
imagenet="$2"
shift 2
echo "Working directory: $PWD"
has_gpus=0
for arg in "$@"; do [ "$arg" = --gpus ] && has_gpus=1; done
gpus=()
[ "$has_gpus" = 1 ] || gpus=(--gpus 8 --batch-gpu 32)
py run_study.py grid --data imagenet --source "$imagenet" "${gpus[@]}" "$@"
