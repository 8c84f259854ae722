"""SIGTERM/SIGUSR1/SIGINT as a flag (torch-free, so that `edm2 train` can install it before importing torch)."""

import contextlib
import os
import signal


class StopSignal:
    """Turns SIGTERM/SIGUSR1/SIGINT into a flag that the loop polls between steps (context manager).

    SLURM sends SIGTERM before a time limit or on preemption (SIGUSR1 with --signal=USR1@T); a
    user presses Ctrl-C (SIGINT). Each stops the run after the current step, with a training state
    written. A second Ctrl-C raises KeyboardInterrupt at once, for a user who cannot wait for that.
    Handlers are installed only in the main thread; previous handlers are restored on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self._previous = {}
        self._pid = os.getpid()

    def _handler(self, signum, frame):
        # No printing here: a handler that writes to a stream the interrupted code is writing to
        # can raise a reentrancy error. The loop reports the signal when it polls the flag.
        if os.getpid() != self._pid:  # a forked helper (DataLoader or compile worker)
            return
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without a training state
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        self._pid = os.getpid()
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False
