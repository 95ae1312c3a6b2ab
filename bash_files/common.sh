#!/usr/bin/env bash
# Shared helpers for the launch scripts (sourced, not run). Every script runs in the caller's
# directory: relative paths mean what they mean to the caller; the project's own scripts are
# called by their absolute path.
#   parse_options "$@"   set one variable per option of $OPTIONS (--per-class -> per_class), the
#                        flags of $FLAGS to 1, collect --set KEY=VALUE into SET_ARGS (where
#                        $OPTIONS names set; elsewhere refused); --dry-run
#   run CMD...           print the command; execute it unless DRY_RUN=1
#   py SCRIPT ARGS...    run one of the project's Python scripts
#   torchrun_py N SCRIPT ARGS...  the same under torchrun with N processes on this node, joined
#                        by the other nodes of $NODE_OPTIONS (one node, one process: plain python)
#   first_node           true on node rank 0 (for the steps that only one node should do)
#   die MSG              print the usage of the calling script and MSG, exit 2
# Every script documents its usage in its header comment; `usage` prints that header.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT
# The project's packages import from anywhere (python -m simulations.run_gaussian, ...).
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
DRY_RUN="${DRY_RUN:-0}"
SET_ARGS=()

# Several machines: the launchers that run torchrun take these options (add $NODE_OPTIONS to
# their OPTIONS). Every node starts the same command with its own --node-rank; the nodes meet at
# --master-addr:--master-port (node 0's address; torchrun's static rendezvous) or at a
# rendezvous endpoint HOST:PORT (torchrun's c10d rendezvous, ranks in order of arrival). A
# launcher that runs several torchrun commands gives each its own port (master port + k) or
# rendezvous id (--rdzv-id-k), so that a node never meets the previous command.
# shellcheck disable=SC2034 # Read by the launchers that source this file.
NODE_OPTIONS="nnodes node-rank master-addr master-port rdzv-endpoint rdzv-id"
nnodes=1 node_rank=0 master_addr="" master_port=29500 rdzv_endpoint="" rdzv_id=multisource
TORCHRUN_JOB=0

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
            --set)
                [[ " ${OPTIONS:-} " == *" set "* ]] || die "unknown argument '--set' (this launcher trains nothing)"
                [ -n "${2:-}" ] || die "--set needs KEY=VALUE"; SET_ARGS+=(--set "$2"); shift 2; continue ;;
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

check_nodes() {
    # The values of $NODE_OPTIONS make sense together.
    check_int nnodes "$nnodes"
    [[ "$node_rank" =~ ^[0-9]+$ ]] && [ "$node_rank" -lt "$nnodes" ] || die "--node-rank must be 0..$((nnodes - 1)) for --nnodes $nnodes, got '$node_rank'"
    check_int master-port "$master_port"
    if [ "$nnodes" -gt 1 ]; then
        [ -n "$master_addr" ] || [ -n "$rdzv_endpoint" ] || die "--nnodes $nnodes needs --master-addr (node 0's address) or --rdzv-endpoint HOST:PORT"
        [ -z "$master_addr" ] || [ -z "$rdzv_endpoint" ] || die "give --master-addr or --rdzv-endpoint, not both"
        [ -z "$rdzv_endpoint" ] || [[ "$rdzv_endpoint" =~ ^[^:]+:[0-9]+$ ]] || die "--rdzv-endpoint must be HOST:PORT, got '$rdzv_endpoint'"
    fi
}

first_node() {
    [ "$node_rank" = 0 ]
}

torchrun_py() {
    # `--` keeps the script's own options (e.g. --num) away from torchrun's option parser,
    # which takes a prefix like --num for its --numa-binding. One process on one node needs no
    # torchrun: a plain python call is a world of one (the same results, a few seconds less).
    local procs="$1" script="$2" nodes=()
    shift 2
    if [ "$procs" = 1 ] && [ "$nnodes" = 1 ]; then
        py "$script" "$@"
        return
    fi
    if [ "$nnodes" = 1 ]; then
        nodes=(--standalone)
    elif [ -n "$rdzv_endpoint" ]; then
        nodes=(--nnodes="$nnodes" --rdzv-backend=c10d --rdzv-endpoint="$rdzv_endpoint" --rdzv-id="$rdzv_id-$TORCHRUN_JOB")
    else
        nodes=(--nnodes="$nnodes" --node-rank="$node_rank" --master-addr="$master_addr" --master-port="$((master_port + TORCHRUN_JOB))")
    fi
    TORCHRUN_JOB=$((TORCHRUN_JOB + 1))
    run "$PYTHON" -m torch_utils.torchrun "${nodes[@]}" --nproc_per_node="$procs" -- "$REPO_ROOT/$script" "$@"
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
