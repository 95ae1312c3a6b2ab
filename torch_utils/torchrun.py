"""torchrun whose failure ends in one line: `python -m torch_utils.torchrun [torchrun's options] --
script.py ...` runs torch.distributed.run as it is, except that when a process fails, the report
torchrun prints in place of the processes' own (the launcher's Python traceback and a table of
failures) becomes one line naming the first process that failed and how, and the exit status is
that process's. The processes' own output (a script's one-line `Error:`) stays above it. The
launchers of bash_files/ and run_study.py start their torchrun commands this way; `torchrun`
itself works too, with its report."""

import sys

from torch.distributed import run
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

def describe(code):
    return f'signal {-code}' if code < 0 else f'exit status {code}'

def main(argv=None):
    try:
        run.main(argv)
    except ChildFailedError as e:
        by_how = {}
        for rank, failure in sorted(e.failures.items()):
            by_how.setdefault(describe(failure.exitcode), []).append(str(rank))
        what = '; '.join(f'rank{"s" if len(ranks) > 1 else ""} {", ".join(ranks)} ended with {how}' for how, ranks in by_how.items())
        print(f'torchrun: {e.name}: {what} (the output is above)', file=sys.stderr, flush=True)
        code = e.get_first_failure()[1].exitcode # The first to fail, as torchrun reports it.
        sys.exit(128 - code if code < 0 else code or 1)

if __name__ == '__main__':
    main()
