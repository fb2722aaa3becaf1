"""Starting the engine process and watching it, for ProcessEngine.

Linux gives a new thread, and a forked process, the scheduling priority of the thread
that made it. The app lowers its screen thread's priority once the model is loaded
(``ui.ui_nice``), and an engine process started again after a crash must not inherit
that, nor could it undo it (only privileged processes raise their priority). So every
engine process is started from one launcher thread, made before anything is lowered,
and only its pipes are handed to asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

from engine.backends.process.wire import pipe_streams


@dataclass
class EngineChild:
    popen: subprocess.Popen[bytes]
    stdout: asyncio.StreamReader
    stdin: asyncio.StreamWriter
    exited: asyncio.Future[int]
    """Resolved with the exit status (negative: the signal) once the process is gone."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()

    async def wait(self) -> int:
        return await asyncio.shield(self.exited)


class Launcher:
    def __init__(self) -> None:
        # The thread itself is made by the first launch, which the app runs before it
        # lowers any priority.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvchat-launcher")

    async def launch(self, stderr: IO[bytes]) -> EngineChild:
        loop = asyncio.get_running_loop()
        popen = await loop.run_in_executor(self._pool, _popen, stderr)
        assert popen.stdout is not None and popen.stdin is not None
        stdout, stdin = await pipe_streams(popen.stdout, popen.stdin)
        exited: asyncio.Future[int] = loop.create_future()

        def reap() -> None:
            code = popen.wait()
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(_resolve, exited, code)

        # A daemon thread: an app that exits without closing the engine must not wait
        # here (its child then sees stdin close and ends on its own).
        threading.Thread(target=reap, name="kvchat-engine-reaper", daemon=True).start()
        return EngineChild(popen, stdout, stdin, exited)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _popen(stderr: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "engine.backends.process.child"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)


def _resolve(future: asyncio.Future[int], code: int) -> None:
    if not future.done():
        future.set_result(code)
