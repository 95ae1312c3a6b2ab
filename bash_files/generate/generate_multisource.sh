#!/usr/bin/env bash
# Sample every snapshot of a trained run: for each source k, 50,000/K images (or --num) of
# class k, into {outdir}/{snapshot}/class{k}/.
#
# Usage: bash_files/generate/generate_multisource.sh --run DIR --sources K --outdir DIR
#            [--num INT] [--gpus INT] [--batch INT] [--snapshot GLOB] [--dry-run]
#
#   --run        training run directory (network-snapshot-*.pkl)
#   --num        images per source (default 10000)
#   --snapshot   which snapshots (default: network-snapshot-*.pkl, the newest kimg only)
set -euo pipefail
source "$(dirname "$0")/../common.sh"

rundir="" sources="" outdir="" num=10000 gpus=1 batch=64 pattern=""
while [ $# -gt 0 ]; do
    case "$1" in
        --run)      need_value "$1" "${2:-}"; rundir="$2"; shift 2 ;;
        --sources)  need_value "$1" "${2:-}"; sources="$2"; shift 2 ;;
        --outdir)   need_value "$1" "${2:-}"; outdir="$2"; shift 2 ;;
        --num)      need_value "$1" "${2:-}"; num="$2"; shift 2 ;;
        --gpus)     need_value "$1" "${2:-}"; gpus="$2"; shift 2 ;;
        --batch)    need_value "$1" "${2:-}"; batch="$2"; shift 2 ;;
        --snapshot) need_value "$1" "${2:-}"; pattern="$2"; shift 2 ;;
        --dry-run)  DRY_RUN=1; shift ;;
        -h|--help)  usage; exit 0 ;;
        *) die "unknown argument '$1'" ;;
    esac
done
[ -n "$rundir" ] || die "--run is required"
[ -n "$outdir" ] || die "--outdir is required"
[[ "$sources" =~ ^[1-9][0-9]*$ ]] || die "--sources must be a positive integer"
[[ "$num" =~ ^[1-9][0-9]*$ ]] || die "--num must be a positive integer"

if [ -z "$pattern" ]; then
    newest="$(basename "$(newest_file "$rundir" 'network-snapshot-*.pkl')")"
    pattern="${newest:0:24}*.pkl" # network-snapshot-KKKKKKK: every EMA profile of the newest kimg
fi
cd "$REPO_ROOT"
shopt -s nullglob
# shellcheck disable=SC2206 # the pattern is a glob on purpose
snapshots=("$rundir"/$pattern)
[ ${#snapshots[@]} -gt 0 ] || snapshots=("$rundir/$pattern")
for snapshot in "${snapshots[@]}"; do
    name="$(basename "$snapshot" .pkl)"
    for ((k = 0; k < sources; k++)); do
        run torchrun --standalone --nproc_per_node="$gpus" generate_images.py --net "$snapshot" \
            --outdir "$outdir/$name/class$k" --class "$k" --seeds "0-$((num - 1))" --batch "$batch"
    done
done
