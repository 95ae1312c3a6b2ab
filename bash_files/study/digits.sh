#!/usr/bin/env bash
# The multi-source study on the built-in digits, on a laptop (run_study.py grid --data digits):
# similarity levels 'similar' and 'diverse' (the K digits with the closest / farthest class
# means), K = 2, 3, 5 sources, N = 20 and 80 images per source, training seeds 0 and 1: 24
# multi-source and 36 single-source models, scored source by source (digits Frechet distance and
# classifier agreement, 100 samples per source) against each digit's held-out test images.
# Writes OUTDIR/study.csv, study.md (the paper's table) and study.png; re-running skips what is
# done. 55 minutes on 2 CPU cores (two models at a time); --quick: 10 models, 8.5 minutes.
#
# Usage: bash_files/study/digits.sh OUTDIR [--quick] [--jobs INT] [--levels LIST] [--sources LIST]
#            [--per-class LIST] [--seeds LIST] [--duration NIMG] [--num INT] [--set KEY=VALUE]... [--dry-run]
#
#   --jobs   models trained at the same time (default 2: one per core of a 2-core machine)
set -euo pipefail
source "$(dirname "$0")/../common.sh"

[ $# -gt 0 ] && [ "${1#-}" = "$1" ] || die "OUTDIR is required (first argument)"
out="$1"
shift
echo "Working directory: $PWD"
has_jobs=0
for arg in "$@"; do [ "$arg" = --jobs ] && has_jobs=1; done
jobs=()
[ "$has_jobs" = 1 ] || jobs=(--jobs 2)
py run_study.py grid --data digits --out "$out" "${jobs[@]}" "$@"
