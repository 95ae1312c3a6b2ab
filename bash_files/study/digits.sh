#!/usr/bin/env bash
# The multi-source study on the built-in digits, on a laptop (run_study.py grid --data digits):
# does training on more sources help a target digit? Target 3; companions joining it from the
# nearest class means ('similar': 9, then 8, 2) or the farthest ('dissimilar': 4, then 6, 0);
# K = 1, 2, 4 sources; N = 20 and 40 images per source (the 20 are part of the 40); replicates
# 0-5, each its own data draw and training seed; budgets as two arms, the same number of steps
# (32Ki images) and the same images per source (K x 32Ki), the single-source model also at 64Ki
# (converged?). The target alone is scored (digits Frechet distance and KID, 300 samples) against
# its images that no model saw, next to the metric's floor. Writes OUTDIR/study.csv, study.md and
# study.png; re-running skips what is done. Wall time on 2 CPU cores: README ("The multi-source
# study"); --quick (K = 1, 2; N = 20; replicates 0-2) is the short version.
#
# Usage: bash_files/study/digits.sh OUTDIR [--quick] [--jobs INT] [any option of run_study.py grid]
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
