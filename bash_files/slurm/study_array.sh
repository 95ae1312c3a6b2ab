#!/usr/bin/env bash
# The multi-source study as a SLURM job array: each array task trains and scores one model of the
# grid (run_study.py grid ... --task $SLURM_ARRAY_TASK_ID), building first the dataset, reference
# and floor that the model needs (a file another task is building at the same time is taken as
# built when it appears). Tasks run in any order and can be requeued: what is done is skipped.
# When every task has finished, `run_study.py report` with the same grid options writes
# study.csv, study.md and study.png (submit_study.sh submits it as a dependent job).
#
# Usage: sbatch --array=0-$((MODELS - 1)) bash_files/slurm/study_array.sh --data digits --out DIR [grid options]
#        MODELS: the number of lines of `python run_study.py grid --data digits --out DIR ... --dry-run`
#        (bash_files/slurm/submit_study.sh counts them and submits the array and the report)
#
#   Submit from the directory that the relative paths mean (SLURM starts the job there), with
#   REPO_ROOT set to this repository, or from the repository root. --out must be on storage that
#   every task sees. One task = one model with the task's GPUs (--gpus, default 1).
#
#SBATCH --job-name=multisource-study
#SBATCH --ntasks=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=1-00:00:00
#SBATCH --requeue
#SBATCH --signal=TERM@120
set -euo pipefail

repo="${REPO_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
if [ ! -f "$repo/run_study.py" ]; then
    echo "error: $repo is not this repository's root; set REPO_ROOT" >&2
    exit 2
fi
if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
    echo "error: SLURM_ARRAY_TASK_ID is not set: submit with sbatch --array=0-N (see the usage above)" >&2
    exit 2
fi
echo "Working directory: $PWD; SLURM job ${SLURM_ARRAY_JOB_ID:-?}, array task $SLURM_ARRAY_TASK_ID"
set -x
exec "${PYTHON:-python}" "$repo/run_study.py" grid "$@" --task "$SLURM_ARRAY_TASK_ID"
