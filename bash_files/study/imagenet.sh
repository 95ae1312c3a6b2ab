#!/usr/bin/env bash
# The multi-source study on ImageNet (run_study.py grid --data imagenet), the Multi-Source-GM grid
# seen from its shared source: target 171 (Italian greyhound), companions from the similarity
# levels sim3 (dogs), sim2 (mammals), sim1 (diverse); K = 1, 3, 5, 10 sources; N = 100, 500,
# 1000 images per source; the study's EDM2-XS presets with its launch settings (batch 8192; the
# 5-source, 1000-image model at 192Mi; the 10-source, 1000-image model from the -nlr run),
# trained with torchrun; the target scored with FID, KID and FD-DINOv2 of 5000 images against
# all images of its class, next to the metrics' floor. Writes OUTDIR/study.{csv,md,png};
# re-running resumes. Any option of run_study.py grid narrows or changes the grid
# (e.g. --replicates 0-2 for intervals); bash_files/slurm/submit_study.sh runs it as a job array.
#
# Usage: bash_files/study/imagenet.sh --imagenet DIR --out DIR [--gpus INT] [--batch-gpu INT]
#            [--levels LIST] [--sources LIST] [--per-class LIST] [--replicates LIST] [...] [--dry-run]
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
