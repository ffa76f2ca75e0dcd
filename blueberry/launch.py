"""`python -m blueberry.launch ARGS`: `accelerate launch ARGS` that a stop signal ends cleanly.

`wandb agent` (and SLURM, and `kill`) stop a trial by sending SIGTERM to the one process they started.
Under plain `accelerate launch` that is torchrun's agent: it forwards the signal, waits for the
ranks (which checkpoint and exit 75), then raises SignalException: a traceback and exit code 1, so
W&B records a crash and nothing re-queues the trial. Here the launcher runs in this process with
torchrun's own SIGTERM/SIGUSR1 handling off (TORCHELASTIC_SIGNALS_TO_HANDLE); this process forwards
the signal to the ranks, and when every rank that failed exited with the same blueberry exit code
(75 preempted, 130 interrupted, 3 diverged, 2 bad input) it exits with that code and one line.
"""

from __future__ import annotations

import signal
import subprocess
import sys

from blueberry.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_PREEMPTED, UserError

# Exit codes a rank ends with on purpose, after writing its summary (and checkpoint, where one is due).
CLEAN_EXITS = {EXIT_PREEMPTED: "preempted", EXIT_INTERRUPTED: "interrupted", EXIT_DIVERGED: "diverged",
               UserError.exit_code: "refused its input"}
FORWARDED = (signal.SIGTERM, signal.SIGUSR1)


def _forward(signum, _frame) -> None:
    """Pass the signal on to the ranks (this process's children); they checkpoint and exit."""
    import psutil

    for child in psutil.Process().children():
        try:
            child.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def main(argv: list[str] | None = None) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(sys.argv[1:] if argv is None else argv)
    # torchrun's own option: it keeps SIGINT (a terminal's Ctrl-C reaches every rank itself) and
    # leaves SIGTERM / SIGUSR1 to this process.
    args.signals_to_handle = "SIGINT,SIGHUP,SIGQUIT"
    for sig in FORWARDED:
        signal.signal(sig, _forward)
    try:
        launch_command(args)
    except ChildFailedError as e:   # several ranks (torchrun)
        return _exit_code({rank: failure.exitcode for rank, failure in e.failures.items()})
    except subprocess.CalledProcessError as e:   # one process (accelerate's simple launcher)
        return _exit_code({0: e.returncode})
    return 0


def _exit_code(failed: dict[int, int]) -> int:
    """The ranks' own code when they all stopped on purpose with the same one; else 1."""
    codes = set(failed.values())
    if len(codes) == 1 and (code := codes.pop()) in CLEAN_EXITS:
        print(f"blueberry: every rank that ended early {CLEAN_EXITS[code]} (exit {code})", file=sys.stderr)
        return code
    print(f"blueberry: training failed: {', '.join(f'rank {r} exit {c}' for r, c in sorted(failed.items()))} "
          "(their output is above)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
