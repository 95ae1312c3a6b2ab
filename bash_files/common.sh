#!/usr/bin/env bash
# Shared helpers for the launch scripts (sourced, not run).
#   run CMD...     print the command; execute it unless DRY_RUN=1 (set by --dry-run)
#   die MSG        print the usage of the calling script and MSG, exit 2
#   need_value     check that an option got a value
# Every script documents its usage in its header comment; `usage` prints that header.

# Repository root, so the scripts work from any directory.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT
# The project's packages import from anywhere (python -m simulations.run_gaussian, ...).
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
DRY_RUN="${DRY_RUN:-0}"

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

need_value() {
    # need_value OPTION VALUE
    [ -n "${2:-}" ] && [ "${2#--}" = "$2" ] || die "$1 needs a value"
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

# ImageNet class ids of the study's three similarity levels (10 sources each).
sources_of_level() {
    case "$1" in
        sim3) echo "171,182,198,208,215,231,236,244,245,258" ;; # ten dog breeds
        sim2) echo "171,269,279,283,294,330,340,366,370,386" ;; # mammals
        sim1) echo "171,1,18,31,46,532,579,609,849,980" ;;      # diverse
        *) die "unknown similarity level '$1' (sim1, sim2 or sim3)" ;;
    esac
}

# The first K ids of a comma-separated list.
first_k() {
    echo "$1" | cut -d, -f"1-$2"
}

check_choice() {
    # check_choice OPTION VALUE CHOICES...
    local option="$1" value="$2"
    shift 2
    for choice in "$@"; do
        [ "$value" = "$choice" ] && return 0
    done
    die "$option must be one of: $*"
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
