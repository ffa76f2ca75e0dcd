"""A rank whose launcher died stops as if preempted, instead of training on as an orphan.

torchrun (under `accelerate launch` and `python -m blueberry.launch`) starts every rank in a session
of its own, so a SIGKILL that reaches only the launcher's process group (`wandb agent` after its kill
delay, `sweep local`'s kill, the OOM killer, `kill -9 LAUNCHER`) leaves the ranks training, holding
the run dir's lock and the GPUs, with nobody to collect them. Each rank polls its parent; when the
launcher is gone (the rank was re-parented), it sends itself SIGTERM: the trainer checkpoints at the
end of the step and exits 75 (`preempted`), so `--resume` continues where it stopped.
"""

from __future__ import annotations

import os
import signal
import threading
import time

POLL_S = 0.5


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def watch_launcher(poll_s: float = POLL_S) -> threading.Thread | None:
    """Start the watch in a daemon thread (only in a rank torchrun started); returns the thread."""
    if not launched_by_torchrun():
        return None
    launcher = os.getppid()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(poll_s)
        from blueberry.console import notice

        notice(f"the launcher (pid {launcher}) is gone: stopping at the end of this step with a checkpoint")
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="blueberry-launcher-watch", daemon=True)
    thread.start()
    return thread
