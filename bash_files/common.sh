#!/usr/bin/env bash
# Shared helpers for the launch scripts (sourced, not run). Every script runs in the caller's
# directory: relative paths mean what they mean to the caller; the project's own scripts are
# called by their absolute path.
#   parse_options "$@"   set one variable per option of $OPTIONS (--per-class -> per_class), the
#                        flags of $FLAGS to 1, collect --set KEY=VALUE into SET_ARGS; --dry-run
#   run CMD...           print the command; execute it unless DRY_RUN=1
#   py SCRIPT ARGS...    run one of the project's Python scripts
#   torchrun_py N SCRIPT ARGS...  the same under torchrun with N processes (N = 1: plain python)
#   die MSG              print the usage of the calling script and MSG, exit 2
# Every script documents its usage in its header comment; `usage` prints that header.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT
# The project's packages import from anywhere (python -m simulations.run_gaussian, ...).
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
DRY_RUN="${DRY_RUN:-0}"
SET_ARGS=()

usage() {
    # The header comment of the calling script (lines starting with '#', after the shebang).
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
}

die() {
    usage >&2
    echo >&2
    echo "error: $*" >&2
    exit 2
}

parse_options() {
    while [ $# -gt 0 ]; do
        local name="${1#--}"
        case "$1" in
            -h|--help) usage; exit 0 ;;
            --dry-run) DRY_RUN=1; shift; continue ;;
            --set) [ -n "${2:-}" ] || die "--set needs KEY=VALUE"; SET_ARGS+=(--set "$2"); shift 2; continue ;;
        esac
        [[ "$1" == --* ]] || die "unknown argument '$1'"
        if [[ " ${FLAGS:-} " == *" $name "* ]]; then
            printf -v "${name//-/_}" '%s' 1
            shift
        elif [[ " ${OPTIONS:-} " == *" $name "* ]]; then
            [ -n "${2:-}" ] && [ "${2#--}" = "$2" ] || die "$1 needs a value"
            printf -v "${name//-/_}" '%s' "$2"
            shift 2
        else
            die "unknown argument '$1'"
        fi
    done
    echo "Working directory: $PWD"
}

require() {
    # require OPTION...: each named option was given
    local name
    for name in "$@"; do
        local var="${name//-/_}"
        [ -n "${!var:-}" ] || die "--$name is required"
    done
}

check_int() {
    # check_int OPTION VALUE: a positive integer
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "--$1 must be a positive integer, got '$2'"
}

run() {
    # Print the command as it could be pasted into a shell (quote only what needs it).
    local arg line="+"
    for arg in "$@"; do
        if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then line+=" $arg"; else line+=" $(printf '%q' "$arg")"; fi
    done
    echo "$line"
    if [ "$DRY_RUN" != 1 ]; then
        "$@"
    fi
}

py() {
    local script="$1"
    shift
    run "$PYTHON" "$REPO_ROOT/$script" "$@"
}

torchrun_py() {
    # `--` keeps the script's own options (e.g. --num) away from torchrun's option parser,
    # which takes a prefix like --num for its --numa-binding. One process needs no torchrun: a
    # plain python call is a world of one (the same results, a few seconds less per command).
    local procs="$1" script="$2"
    shift 2
    if [ "$procs" = 1 ]; then
        py "$script" "$@"
    else
        run "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$procs" -- "$REPO_ROOT/$script" "$@"
    fi
}

newest_file() {
    # newest_file DIR GLOB: the last match of GLOB in DIR by name (snapshot names sort by kimg).
    # With no match: a placeholder path in a dry run (nothing exists yet), otherwise an error.
    local found=""
    [ -d "$1" ] && found="$(find "$1" -maxdepth 1 -name "$2" | sort | tail -n 1)"
    if [ -z "$found" ]; then
        [ "$DRY_RUN" = 1 ] || { echo "error: no $2 in $1" >&2; exit 1; }
        found="$1/$2"
    fi
    echo "$found"
}

level_classes() {
    # level_classes LEVEL K: the ImageNet class ids of the level's first K sources
    # (training/study.py, the one table of the study's similarity levels).
    "$PYTHON" -c 'import sys; from training import study; print(",".join(map(str, study.level_classes(sys.argv[1], int(sys.argv[2])))))' "$1" "$2" \
        || die "unknown level '$1' or number of sources '$2'"
}
