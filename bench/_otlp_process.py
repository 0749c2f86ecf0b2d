"""An OTLP receiver in its own process, as a collector would be: its protobuf decoding must not share the
measured process's interpreter. Prints its URL, then, when its stdin closes, how many spans it received."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

_CHILD = """
import sys
from agentstack.testing import OtlpReceiver
with OtlpReceiver() as receiver:
    print(receiver.url, flush=True)
    sys.stdin.read()
    print(len(receiver.spans), flush=True)
"""


class ReceiverProcess:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc, self.url = proc, url

    def spans(self) -> int:
        """Stop it and say how many spans it received."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        count = int(self.proc.stdout.readline())
        self.proc.wait(timeout=30)
        return count


@contextlib.contextmanager
def otlp_receiver_process() -> Iterator[ReceiverProcess]:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield ReceiverProcess(proc, proc.stdout.readline().strip())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
