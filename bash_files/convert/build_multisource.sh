#!/usr/bin/env bash
# Build one dataset of the ImageNet multi-source study: K sources (ImageNet classes) of one
# similarity level with N images each, at 256x256 (center-crop-dhariwal), encoded to VAE
# latents; and the reference statistics of each source from ALL images of its class (about
# 1300, built once and shared by every K and N).
#
# Usage: bash_files/convert/build_multisource.sh --imagenet DIR --out DIR --level sim1|sim2|sim3
#            --sources K --per-class N [--only ID] [--vae DIR_OR_NAME] [--seed INT]
#            [--resolution PIXELS] [--metrics LIST] [--workers INT] [--dry-run]
#
#   --imagenet   ImageNet training folder of synset directories (e.g. /data/imagenet/train)
#   --out        output folder; writes data/{level}-{K}c-{N}.zip (pixels), data/{level}-{K}c-{N}-latents.zip,
#                refs/imagenet-{id}.pkl per source (and the class's images, refs/images/imagenet-{id}.zip)
#   --level      sim3 = ten dog breeds, sim2 = mammals, sim1 = diverse classes (level1..3 work too)
#   --only       build the single-source dataset of the class with this ImageNet id instead,
#                data/src{ID}-{N}.zip; with the same --seed it holds exactly the images of that
#                source in the multi-source datasets (the draw depends on seed and class only)
#   --vae        VAE for the latents (hub name or local folder; default stabilityai/sd-vae-ft-mse)
#   --resolution image size (default 256); --metrics of the references (default fid,fd_dinov2)
# Existing outputs are kept (re-running skips them).
set -euo pipefail
source "$(dirname "$0")/../common.sh"

OPTIONS="imagenet out level sources per-class only vae seed resolution metrics workers"
imagenet="" out="" level="" sources="" per_class="" vae="stabilityai/sd-vae-ft-mse" seed=0 resolution=256 metrics="fid,fd_dinov2" workers=2 only=""
parse_options "$@"
require imagenet out level sources per-class
check_int sources "$sources"
check_int per-class "$per_class"

classes="$(level_classes "$level" "$sources")"
name="${level}-${sources}c-${per_class}"
if [ -n "$only" ]; then
    [[ ",$classes," == *",$only,"* ]] || die "--only $only is not one of the level's first $sources sources ($classes)"
    classes="$only" name="src${only}-${per_class}"
fi
size="${resolution}x${resolution}"
if [ -e "$out/data/$name.zip" ]; then echo "(exists: $out/data/$name.zip)"; else
    py dataset_tool.py convert --source "$imagenet" --dest "$out/data/$name.zip" --transform center-crop-dhariwal \
        --resolution "$size" --classes "$classes" --per-class "$per_class" --seed "$seed" --workers "$workers"
fi
if [ -e "$out/data/$name-latents.zip" ]; then echo "(exists: $out/data/$name-latents.zip)"; else
    py dataset_tool.py encode --source "$out/data/$name.zip" --dest "$out/data/$name-latents.zip" --model-url "$vae"
fi
for id in ${classes//,/ }; do
    [ -e "$out/refs/imagenet-$id.pkl" ] && { echo "(exists: $out/refs/imagenet-$id.pkl)"; continue; }
    [ -e "$out/refs/images/imagenet-$id.zip" ] || py dataset_tool.py convert --source "$imagenet" \
        --dest "$out/refs/images/imagenet-$id.zip" --transform center-crop-dhariwal --resolution "$size" --classes "$id" --workers "$workers"
    py calculate_metrics.py ref --data "$out/refs/images/imagenet-$id.zip" --dest "$out/refs/imagenet-$id.pkl" --metrics "$metrics"
done
echo "Datasets: $out/data/$name.zip (pixels), $out/data/$name-latents.zip (latents); references: $out/refs/imagenet-{${classes}}.pkl"
