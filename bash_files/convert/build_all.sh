#!/usr/bin/env bash
# Build the whole dataset grid of the ImageNet multi-source study: similarity levels sim1..sim3,
# K in 1, 3, 5, 10 sources and N in 100, 500, 1000 images per source (36 datasets), and the
# references of every source (each built once).
#
# Usage: bash_files/convert/build_all.sh --imagenet DIR --out DIR [--vae DIR_OR_NAME] [--dry-run]
set -euo pipefail
source "$(dirname "$0")/../common.sh"

OPTIONS="imagenet out vae"
imagenet="" out="" vae="stabilityai/sd-vae-ft-mse"
parse_options "$@"
require imagenet out
extra=()
[ "$DRY_RUN" = 1 ] && extra+=(--dry-run)
for level in sim1 sim2 sim3; do
    for sources in 1 3 5 10; do
        for per_class in 100 500 1000; do
            bash "$(dirname "$0")/build_multisource.sh" --imagenet "$imagenet" --out "$out" --level "$level" \
                --sources "$sources" --per-class "$per_class" --vae "$vae" "${extra[@]}"
        done
    done
done
