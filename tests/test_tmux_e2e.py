"""End to end: ``kvchat`` in a real terminal (tmux), a prompt typed, the reply read
back from the captured screen."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.store import Store
from tests.conftest import kvchat_exe

WIDTH, HEIGHT = 120, 36
CHAT_COLUMNS = WIDTH - 48  # the side panes take 48 columns at this width

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True,
                          text=True).stdout


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               screen: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen()}")


@pytest.fixture
def session(kvchat_home: Path) -> Iterator[str]:
    name = f"kvchat-e2e-{os.getpid()}"
    command = (f"{kvchat_exe()} --ctx 512 --max-tokens 12 --temp 0 --route chat")
    tmux("new-session", "-d", "-s", name, "-x", str(WIDTH), "-y", str(HEIGHT),
         "-e", f"KVCHAT_HOME={kvchat_home}", "-e", "TERM=xterm-256color",
         "-e", "OMP_WAIT_POLICY=PASSIVE", command)
    try:
        yield name
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def test_type_a_prompt_and_read_the_reply(session: str, kvchat_home: Path) -> None:
    def screen() -> str:
        return tmux("capture-pane", "-p", "-t", session)

    wait_until(lambda: " ready " in screen(), 180, "the model to load", screen)
    tmux("send-keys", "-t", session, "-l", "Name a colour.")
    tmux("send-keys", "-t", session, "Enter")
    wait_until(lambda: re.search(r"route chat chosen · \d+ tokens", screen()) is not None,
               180, "the reply's stats line", screen)
    shown = screen()
    with Store(kvchat_home / "kvchat.db") as store:
        conversation = store.list_conversations()[0]
        rows = store.messages(conversation.id)
    assert [r.role for r in rows] == ["user", "assistant"]
    assert rows[0].content == "Name a colour."
    reply = rows[1]
    assert reply.status == "complete" and reply.content.strip()
    assert "Name a colour." in shown
    # The reply's words are on the screen, in order (Markdown may restyle, not reword);
    # only the chat column, left of the side panes, so wrapped lines join up.
    chat_column = "\n".join(line[:CHAT_COLUMNS] for line in shown.splitlines())
    words = re.findall(r"[A-Za-z0-9]+", reply.content)[:6]
    on_screen = " ".join(re.findall(r"[A-Za-z0-9]+", chat_column))
    assert " ".join(words) in on_screen, (words, shown)
    assert f"{reply.stats['completion_tokens']} tokens" in shown
    tmux("send-keys", "-t", session, "C-q")
    wait_until(lambda: subprocess.run(["tmux", "has-session", "-t", session],
                                      capture_output=True).returncode != 0,
               30, "kvchat to quit", screen)
