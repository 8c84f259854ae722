"""`python tests/edm2_exit_checked.py ARGS...` runs `edm2 ARGS...` and exits with status 3 if the
command left a torch.distributed process group open when the interpreter starts to exit.

A gloo group still open then makes the process abort at random ("terminate called without an
active exception"), so the multi-process tests launch their ranks through this script: the check
fails every time the group is left open, not only on the runs that happen to abort.
"""

import atexit
import os
import sys

SCRIPT = os.path.abspath(__file__)  # what the tests run instead of `-m edm2`


def gloo_threads() -> list[str]:
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return sorted(n for n in names if "gloo" in n)


def check_no_process_group() -> None:
    left = gloo_threads()
    if left:
        sys.stderr.write(f"edm2_exit_checked: process group still open at exit (threads {left})\n")
        sys.stderr.flush()
        os._exit(3)


if __name__ == "__main__":
    atexit.register(check_no_process_group)
    sys.argv[0] = "edm2"
    from edm2.cli import main

    main()
