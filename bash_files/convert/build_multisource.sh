#!/usr/bin/env bash
# Build one multi-source ImageNet dataset of the study: K sources (ImageNet classes) of one
# similarity level with N images each, at 256x256 (center-crop-dhariwal); encode it to VAE
# latents; compute reference statistics of the pixel dataset, overall and per source.
#
# Usage: bash_files/convert/build_multisource.sh --imagenet DIR --out DIR --level sim1|sim2|sim3
#            --sources 1|3|5|10 --per-class 100|500|1000 [--only K] [--vae DIR_OR_NAME] [--seed INT]
#            [--dry-run]
#
#   --imagenet   ImageNet training folder of synset directories (e.g. /data/imagenet/train)
#   --out        output folder; writes {level}-{K}c-{N}.zip (pixels), {level}-{K}c-{N}-latents.zip,
#                refs/{level}-{K}c-{N}.pkl and refs/{level}-{K}c-{N}-class{k}.pkl
#   --level      sim3 = ten dog breeds, sim2 = mammals, sim1 = diverse classes
#   --only       build the single-source dataset of the level's K-th source (0-based) instead,
#                named {level}-src{K}-{N}; with the same --seed it holds exactly the images of
#                that source in the multi-source datasets (selection depends on seed and class only)
#   --vae        VAE for the latents (hub name or local folder; default stabilityai/sd-vae-ft-mse)
#   --dry-run    print the commands without running them
set -euo pipefail
source "$(dirname "$0")/../common.sh"

imagenet="" out="" level="" sources="" per_class="" only="" vae="stabilityai/sd-vae-ft-mse" seed=0
while [ $# -gt 0 ]; do
    case "$1" in
        --imagenet)  need_value "$1" "${2:-}"; imagenet="$2"; shift 2 ;;
        --out)       need_value "$1" "${2:-}"; out="$2"; shift 2 ;;
        --level)     need_value "$1" "${2:-}"; level="$2"; shift 2 ;;
        --sources)   need_value "$1" "${2:-}"; sources="$2"; shift 2 ;;
        --per-class) need_value "$1" "${2:-}"; per_class="$2"; shift 2 ;;
        --only)      need_value "$1" "${2:-}"; only="$2"; shift 2 ;;
        --vae)       need_value "$1" "${2:-}"; vae="$2"; shift 2 ;;
        --seed)      need_value "$1" "${2:-}"; seed="$2"; shift 2 ;;
        --dry-run)   DRY_RUN=1; shift ;;
        -h|--help)   usage; exit 0 ;;
        *) die "unknown argument '$1'" ;;
    esac
done
[ -n "$imagenet" ] || die "--imagenet is required"
[ -n "$out" ] || die "--out is required"
check_choice --level "$level" sim1 sim2 sim3
check_choice --sources "$sources" 1 3 5 10
check_choice --per-class "$per_class" 100 500 1000

classes="$(first_k "$(sources_of_level "$level")" "$sources")"
name="${level}-${sources}c-${per_class}"
if [ -n "$only" ]; then
    [[ "$only" =~ ^[0-9]$ ]] || die "--only must be a source index 0..9"
    classes="$(sources_of_level "$level" | cut -d, -f"$((only + 1))")"
    name="${level}-src${only}-${per_class}"
    sources=1
fi
cd "$REPO_ROOT"
run mkdir -p "$out/refs"
run "$PYTHON" dataset_tool.py convert --source "$imagenet" --dest "$out/$name.zip" \
    --transform center-crop-dhariwal --resolution 256x256 \
    --classes "$classes" --per-class "$per_class" --seed "$seed"
run "$PYTHON" dataset_tool.py encode --source "$out/$name.zip" --dest "$out/$name-latents.zip" --model-url "$vae"
run "$PYTHON" calculate_metrics.py ref --data "$out/$name.zip" --dest "$out/refs/$name.pkl"
for ((k = 0; k < sources; k++)); do
    run "$PYTHON" calculate_metrics.py ref --data "$out/$name.zip" --class "$k" --dest "$out/refs/$name-class$k.pkl"
done
echo "Datasets: $out/$name.zip (pixels), $out/$name-latents.zip (latents); references: $out/refs/$name*.pkl"
