#!/usr/bin/env bash
# Score a trained run source by source: FID and FD-DINOv2 of source k's samples against source
# k's reference statistics (refs/{name}-class{k}.pkl from convert/build_multisource.sh).
# Samples are generated in memory (calculate_metrics.py gen --class k); results are appended to
# {run}/metrics-per-source.jsonl and tabulated in {run}/metrics-per-source.md.
#
# Usage: bash_files/metrics/score_multisource.sh --run DIR --refs PREFIX --sources K
#            [--num INT] [--gpus INT] [--snapshot FILE] [--dry-run]
#
#   --refs       reference prefix, e.g. out/refs/sim3-5c-500 (uses PREFIX-class{k}.pkl)
#   --snapshot   snapshot to score (default: the newest in --run)
set -euo pipefail
source "$(dirname "$0")/../common.sh"

rundir="" refs="" sources="" num=10000 gpus=1 snapshot=""
while [ $# -gt 0 ]; do
    case "$1" in
        --run)      need_value "$1" "${2:-}"; rundir="$2"; shift 2 ;;
        --refs)     need_value "$1" "${2:-}"; refs="$2"; shift 2 ;;
        --sources)  need_value "$1" "${2:-}"; sources="$2"; shift 2 ;;
        --num)      need_value "$1" "${2:-}"; num="$2"; shift 2 ;;
        --gpus)     need_value "$1" "${2:-}"; gpus="$2"; shift 2 ;;
        --snapshot) need_value "$1" "${2:-}"; snapshot="$2"; shift 2 ;;
        --dry-run)  DRY_RUN=1; shift ;;
        -h|--help)  usage; exit 0 ;;
        *) die "unknown argument '$1'" ;;
    esac
done
[ -n "$rundir" ] || die "--run is required"
[ -n "$refs" ] || die "--refs is required"
[[ "$sources" =~ ^[1-9][0-9]*$ ]] || die "--sources must be a positive integer"
[ -n "$snapshot" ] || snapshot="$(newest_file "$rundir" 'network-snapshot-*.pkl')"

cd "$REPO_ROOT"
for ((k = 0; k < sources; k++)); do
    run torchrun --standalone --nproc_per_node="$gpus" calculate_metrics.py gen --net "$snapshot" \
        --ref "$refs-class$k.pkl" --class "$k" --num "$num" --metrics fid,fd_dinov2 \
        --results "$rundir/metrics-per-source.jsonl" --tag "snapshot=$(basename "$snapshot" .pkl) source=$k"
done
run "$PYTHON" calculate_metrics.py table --results "$rundir/metrics-per-source.jsonl" --rows source --cols snapshot \
    --dest "$rundir/metrics-per-source.md"
echo "Table: $rundir/metrics-per-source.md"
