#!/usr/bin/env bash
# The end-to-end pipeline on the built-in 8x8 digits, on a CPU (what `make demo` runs; about
# 10 minutes on 2 cores, 589 s measured): build the train/test datasets -> train a small class-conditional
# EDM2 model -> generate a grid of every class -> evaluate it (class accuracy and a Frechet
# distance in a digits feature space; FID/FD-DINOv2 when their weights are present) -> train an
# ARDM and measure its test bits/dim -> run the Gaussian simulations and draw their figures.
# Re-running skips the datasets that exist and resumes training where it stopped.
#
# Usage: bash_files/demo.sh [--dry-run] [OUTDIR]      (default OUTDIR: demo-out)
#
# Environment: EDM2_DURATION (default 128Ki images), ARDM_DURATION (default 96Ki images).
set -euo pipefail
source "$(dirname "$0")/common.sh"

out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown argument '$1'" ;;
        *) [ -z "$out" ] || die "only one OUTDIR"; out="$1"; shift ;;
    esac
done
out="${out:-demo-out}"
edm2_duration="${EDM2_DURATION:-128Ki}"
ardm_duration="${ARDM_DURATION:-96Ki}"
echo "Working directory: $PWD"
start=$(date +%s)

step() { echo; echo "=== $* ($(( $(date +%s) - start ))s)"; }
convert() { # convert SOURCE DEST, unless DEST exists
    if [ -e "$2" ]; then echo "(exists: $2)"; else py dataset_tool.py convert --source "$1" --dest "$2"; fi
}

step "1. Datasets: built-in digits, fixed train/test split"
run mkdir -p "$out/data" "$out/refs"
convert builtin:digits-train "$out/data/digits-train.zip"
convert builtin:digits-test "$out/data/digits-test.zip"

step "2. Train a class-conditional EDM2 model (preset edm2-digits, $edm2_duration images)"
py train_edm2.py --preset edm2-digits --data "$out/data/digits-train.zip" --outdir "$out/edm2-digits" \
    --duration "$edm2_duration" --snapshot "$edm2_duration"
edm2_net="$(newest_file "$out/edm2-digits" 'network-snapshot-*-0.100.pkl')"

step "3. Generate a grid of every class (rows: classes 0-9, guidance 2 from the model's own unconditional branch)"
py generate_images.py --net "$edm2_net" --outdir "$out/samples/edm2" --seeds 0-99 --class all \
    --guidance 2 --grid "$out/samples/edm2-grid.png"

step "4. Evaluate the EDM2 model against the held-out digits"
[ -e "$out/refs/digits-test.pkl" ] || py calculate_metrics.py ref --data "$out/data/digits-test.zip" --metrics fd_digits \
    --dest "$out/refs/digits-test.pkl"
py calculate_metrics.py gen --net "$edm2_net" --ref "$out/refs/digits-test.pkl" --metrics fd_digits,digits_acc \
    --num 1000 --guidance 2 --results "$out/metrics.jsonl" --tag model=edm2-digits
if [ "$DRY_RUN" = 1 ] || "$PYTHON" "$REPO_ROOT/calculate_metrics.py" weights --check fid,fd_dinov2; then
    [ -e "$out/refs/digits-test-fid.pkl" ] || py calculate_metrics.py ref --data "$out/data/digits-test.zip" \
        --metrics fid,fd_dinov2 --dest "$out/refs/digits-test-fid.pkl"
    py calculate_metrics.py gen --net "$edm2_net" --ref "$out/refs/digits-test-fid.pkl" --metrics fid,fd_dinov2 \
        --num 359 --results "$out/metrics.jsonl" --tag model=edm2-digits
else
    echo "FID/FD-DINOv2 skipped: their weights are not on this machine (see the message above and README, 'Offline weights')."
fi

step "5. Train an ARDM (preset ardm-digits, $ardm_duration images) and measure test bits/dim"
py train_edm2.py --preset ardm-digits --data "$out/data/digits-train.zip" --outdir "$out/ardm-digits" \
    --duration "$ardm_duration" --snapshot "$ardm_duration"
ardm_net="$(newest_file "$out/ardm-digits" 'network-snapshot-*.pkl')"
py calculate_metrics.py bpd --net "$ardm_net" --data "$out/data/digits-test.zip" \
    --results "$out/metrics.jsonl" --tag "model=ardm-digits"
py generate_images.py --net "$ardm_net" --outdir "$out/samples/ardm" --seeds 0-99 --class all \
    --grid "$out/samples/ardm-grid.png"

step "6. Gaussian simulations of multi-source learning"
run "$PYTHON" -m simulations.run_gaussian --tag all --results_dir "$out/simulations/results"
for tag in K n sim; do
    run "$PYTHON" -m "simulations.plot_gaussian_$tag" --results_dir "$out/simulations/results" --outdir "$out/simulations/figures" --overwrite
done

step "Done in $(( $(date +%s) - start ))s. Outputs:"
cat <<TXT
  datasets             $out/data/digits-{train,test}.zip
  EDM2 run             $out/edm2-digits/ (log.txt, stats.jsonl, loss.png, snapshots)
  EDM2 samples         $out/samples/edm2-grid.png (and $out/samples/edm2/)
  ARDM run             $out/ardm-digits/
  ARDM samples         $out/samples/ardm-grid.png
  metrics              $out/metrics.jsonl
  simulation results   $out/simulations/results/  figures: $out/simulations/figures/
TXT
[ "$DRY_RUN" = 1 ] || "$PYTHON" "$REPO_ROOT/calculate_metrics.py" table --results "$out/metrics.jsonl" --rows model --cols metric
