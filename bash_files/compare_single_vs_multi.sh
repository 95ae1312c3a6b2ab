#!/usr/bin/env bash
# The multi-source study's comparison, end to end: for K sources of one similarity level with N
# images each, train one model on all K sources jointly and one model per source on that source
# alone (the same images), score every model source by source (FID and FD-DINOv2 of source k's
# samples against source k's references) and write a table {out}/compare-{level}-{K}c-{N}.md.
#
# Usage: bash_files/compare_single_vs_multi.sh --imagenet DIR --out DIR --level sim1|sim2|sim3
#            --sources 3|5|10 --per-class 100|500|1000 [--gpus INT] [--batch-gpu INT] [--num INT]
#            [--vae DIR_OR_NAME] [--dry-run]
#
#   --num   generated images per source for the metrics (default 10000)
set -euo pipefail
source "$(dirname "$0")/common.sh"

imagenet="" out="" level="" sources="" per_class="" gpus=8 batch_gpu=32 num=10000 vae="stabilityai/sd-vae-ft-mse"
while [ $# -gt 0 ]; do
    case "$1" in
        --imagenet)  need_value "$1" "${2:-}"; imagenet="$2"; shift 2 ;;
        --out)       need_value "$1" "${2:-}"; out="$2"; shift 2 ;;
        --level)     need_value "$1" "${2:-}"; level="$2"; shift 2 ;;
        --sources)   need_value "$1" "${2:-}"; sources="$2"; shift 2 ;;
        --per-class) need_value "$1" "${2:-}"; per_class="$2"; shift 2 ;;
        --gpus)      need_value "$1" "${2:-}"; gpus="$2"; shift 2 ;;
        --batch-gpu) need_value "$1" "${2:-}"; batch_gpu="$2"; shift 2 ;;
        --num)       need_value "$1" "${2:-}"; num="$2"; shift 2 ;;
        --vae)       need_value "$1" "${2:-}"; vae="$2"; shift 2 ;;
        --dry-run)   DRY_RUN=1; shift ;;
        -h|--help)   usage; exit 0 ;;
        *) die "unknown argument '$1'" ;;
    esac
done
[ -n "$imagenet" ] || die "--imagenet is required"
[ -n "$out" ] || die "--out is required"
check_choice --level "$level" sim1 sim2 sim3
check_choice --sources "$sources" 3 5 10
check_choice --per-class "$per_class" 100 500 1000

here="$(cd "$(dirname "$0")" && pwd)"
flags=()
[ "$DRY_RUN" = 1 ] && flags+=(--dry-run)
name="${level}-${sources}c-${per_class}"
results="$out/compare-$name.jsonl"

# Data: the joint dataset (with per-source references) and one single-source dataset per source.
bash "$here/convert/build_multisource.sh" --imagenet "$imagenet" --out "$out" --level "$level" \
    --sources "$sources" --per-class "$per_class" --vae "$vae" "${flags[@]}"
for ((k = 0; k < sources; k++)); do
    bash "$here/convert/build_multisource.sh" --imagenet "$imagenet" --out "$out" --level "$level" \
        --sources 1 --per-class "$per_class" --only "$k" --vae "$vae" "${flags[@]}"
done

# Train: the joint model, then each single-source model (preset for K=1 at this N).
bash "$here/train/train_multisource.sh" --data "$out/$name-latents.zip" --sources "$sources" \
    --per-class "$per_class" --outdir "$out/runs/$name" --gpus "$gpus" --batch-gpu "$batch_gpu" "${flags[@]}"
for ((k = 0; k < sources; k++)); do
    bash "$here/train/train_multisource.sh" --data "$out/$level-src$k-$per_class-latents.zip" --sources 1 \
        --per-class "$per_class" --outdir "$out/runs/$level-src$k-$per_class" --gpus "$gpus" --batch-gpu "$batch_gpu" "${flags[@]}"
done

# Score source by source against the same references: source k of the joint model (class k)
# and the single model of source k (its class 0).
cd "$REPO_ROOT"
for ((k = 0; k < sources; k++)); do
    joint="$(newest_file "$out/runs/$name" 'network-snapshot-*.pkl')"
    single="$(newest_file "$out/runs/$level-src$k-$per_class" 'network-snapshot-*.pkl')"
    run "$PYTHON" calculate_metrics.py gen --net "$joint" --class "$k" \
        --ref "$out/refs/$name-class$k.pkl" --num "$num" --metrics fid,fd_dinov2 \
        --results "$results" --tag "model=multi source=$k"
    run "$PYTHON" calculate_metrics.py gen --net "$single" --class 0 \
        --ref "$out/refs/$name-class$k.pkl" --num "$num" --metrics fid,fd_dinov2 \
        --results "$results" --tag "model=single source=$k"
done
run "$PYTHON" calculate_metrics.py table --results "$results" --rows source --cols model --dest "$out/compare-$name.md"
echo "Table: $out/compare-$name.md"
