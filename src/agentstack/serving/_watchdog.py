"""Kills a fleet's server process groups when the fleet's process dies, even by SIGKILL.

Run as a file (`python _watchdog.py`), never imported by the library, so it starts in tens of
milliseconds without loading agentstack. The fleet writes `+PGID` / `-PGID` lines to its stdin.
When stdin reaches EOF, the parent is gone (the kernel closes the pipe however it died): every
registered group gets SIGTERM, then SIGKILL after a grace period. PR_SET_PDEATHSIG would reach
only the direct child; vLLM and SGLang start worker processes of their own, all in its group.
"""

import contextlib
import os
import signal
import sys
import time

GRACE_S = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0  # `Watchdog(grace_s=...)` passes it


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill(groups: set[int], sig: int) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the fleet's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin:
        line = line.strip()
        if line[:1] == "+":
            groups.add(int(line[1:]))
        elif line[:1] == "-":
            groups.discard(int(line[1:]))
    groups = {g for g in groups if _alive(g)}
    if not groups:
        return
    _kill(groups, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and any(_alive(g) for g in groups):
        time.sleep(0.05)
    _kill(groups, signal.SIGKILL)


if __name__ == "__main__":
    main()
