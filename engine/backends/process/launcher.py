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
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

from pydantic import BaseModel

from engine.backends.process.wire import REPLY_ADAPTER, Close, FromChild, encode, pipe_streams


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

    async def ask_once(self, request: BaseModel) -> FromChild | None:
        """Start an engine process for ``request`` alone (one that needs no model) and
        return its answer, None if it ended without one."""
        with tempfile.TemporaryFile(prefix="kvchat-engine-") as stderr:
            proc = await self.launch(stderr)
            try:
                proc.stdin.write(encode(request))
                line = await proc.stdout.readline()
                return REPLY_ADAPTER.validate_json(line) if line else None
            except ValueError:
                return None
            finally:
                if not proc.stdin.is_closing():
                    proc.stdin.write(encode(Close()))
                    proc.stdin.close()
                await proc.wait()

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def stderr_tail(stderr: IO[bytes] | None, lines: int = 2) -> str:
    """The last ``lines`` lines an engine process wrote to ``stderr``, joined."""
    if stderr is None:
        return ""
    with contextlib.suppress(OSError, ValueError):
        size = stderr.seek(0, 2)
        stderr.seek(max(0, size - 4096))
        text = stderr.read().decode("utf-8", errors="replace")
        kept = [line.strip() for line in text.splitlines() if line.strip()]
        return " | ".join(kept[-lines:])
    return ""


def _popen(stderr: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "engine.backends.process.child"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)


def _resolve(future: asyncio.Future[int], code: int) -> None:
    if not future.done():
        future.set_result(code)
