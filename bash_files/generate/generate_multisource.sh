#!/usr/bin/env bash
# Sample a trained run source by source: --num images of each of its K sources (class k into
# {outdir}/{snapshot}/class{k}/), from the newest snapshot or the one given.
#
# Usage: bash_files/generate/generate_multisource.sh --run DIR --sources K --outdir DIR
#            [--num INT] [--gpus INT] [--batch INT] [--snapshot FILE] [--steps INT] [--dry-run]
#
#   --run        training run directory (network-snapshot-*.pkl)
#   --num        images per source (default 5000, as in the study)
#   --snapshot   the snapshot to sample (default: the newest in --run, EMA std 0.050)
set -euo pipefail
source "$(dirname "$0")/../common.sh"

OPTIONS="run sources outdir num gpus batch snapshot steps"
run="" sources="" outdir="" num=5000 gpus=1 batch=64 snapshot="" steps=""
parse_options "$@"
require run sources outdir
check_int sources "$sources"
check_int num "$num"
check_int gpus "$gpus"
[ -n "$snapshot" ] || snapshot="$(newest_file "$run" 'network-snapshot-*-0.050.pkl')"
name="$(basename "$snapshot" .pkl)"
extra=()
[ -z "$steps" ] || extra+=(--steps "$steps")
for ((k = 0; k < sources; k++)); do
    torchrun_py "$gpus" generate_images.py --net "$snapshot" --outdir "$outdir/$name/class$k" --class "$k" \
        --seeds "0-$((num - 1))" --batch "$batch" "${extra[@]}"
done
