#!/usr/bin/env bash
# Submit the multi-source study to SLURM: one job-array task per model (slurm/study_array.sh)
# and a report job that runs when every task has succeeded (run_study.py report). Counts the
# models with run_study.py grid --dry-run, which also checks every option before anything runs.
#
# Usage: bash bash_files/slurm/submit_study.sh --data digits --out DIR [run_study.py grid options]
#            [-- SBATCH_OPTIONS...]   (options after -- go to both sbatch calls, e.g. --partition=gpu)
#
#   Run from the directory that the relative paths mean; --out on storage that every node sees.
#   Re-submitting the same command resumes: tasks skip what is done. --dry-run checks the options
#   and prints the two sbatch commands without submitting them.
set -euo pipefail
source "$(dirname "$0")/../common.sh"

grid=() sbatch_options=()
while [ $# -gt 0 ]; do
    if [ "$1" = -- ]; then shift; sbatch_options=("$@"); break; fi
    if [ "$1" = --dry-run ]; then DRY_RUN=1; shift; continue; fi
    grid+=("$1"); shift
done
[ ${#grid[@]} -gt 0 ] || die "give the grid options of run_study.py (at least --data and --out)"
echo "Working directory: $PWD"
listing="$("$PYTHON" "$REPO_ROOT/run_study.py" grid "${grid[@]}" --dry-run)" || exit 1
models="$(printf '%s\n' "$listing" | grep -c '^[0-9]*: ')"
echo "$models models"
array=(sbatch --parsable --array="0-$((models - 1))" "${sbatch_options[@]}" "$REPO_ROOT/bash_files/slurm/study_array.sh" "${grid[@]}")
if [ "$DRY_RUN" = 1 ]; then
    run "${array[@]}"
    job=JOBID
else
    job="$(run "${array[@]}" | tail -n 1)"
    job="${job%%;*}" # --parsable prints JOBID[;CLUSTER]
fi
# The report takes the same options (it ignores those that run models).
run sbatch --parsable --dependency="afterok:$job" --job-name=multisource-report --ntasks=1 "${sbatch_options[@]}" \
    --wrap="$(printf '%q ' "$PYTHON" "$REPO_ROOT/run_study.py" report "${grid[@]}")"
