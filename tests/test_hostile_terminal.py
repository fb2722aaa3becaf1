"""Text from a model, a user or a stored conversation is shown, never executed.

Escape sequences (a window title set by OSC, the screen cleared by CSI, C1 controls),
bidi overrides, backspace and carriage-return tricks go through every terminal face:
the sanitizer itself, the CLI's outputs read from a real pseudo-terminal (where ``ask``
and ``export`` behave differently than on a pipe), JSON outputs, and the app, whose
whole rendered screen (what Textual would write) is searched for a raw control.

Replies come from a real HTTP server on 127.0.0.1 speaking the OpenAI protocol, as a
hostile remote model would send them; no model is loaded here.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import sqlite3
import subprocess
import threading
import time
import tty
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from textual.message import Message

from engine.backends.remote.engine import OpenAIEngine
from engine.config import EndpointConfig, KvchatConfig, ModelConfig, SamplingConfig
from engine.store import Store
from tests.conftest import kvchat_exe, run_kvchat
from tui.app import KvchatApp
from tui.messages import ReplyFailed, ReplyFinished
from tui.safe_text import json_dumps, json_text, one_line, visible
from tui.screens.conversations import ConversationsScreen
from tui.screens.retry_screen import RetryScreen

ESC_TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J\x1b[H"
EVIL = (f"Title{ESC_TITLE} clear{CLEAR} c1\x9b31m red bidi\u202eevil\u202c "
        "bs abc\x08\x08\x08XYZ cr safe\rOVER del\x7f nul\x00 end\ttab\nnext line")
"""Every kind of control a terminal acts on, with a tab and a line feed that stay."""
PROMPT = "prompt " + EVIL.replace("\x00", "")
"""EVIL as a command-line argument can carry it (no NUL)."""
ACTING = ["\x1b", "\x07", "\x9b", "\u202e", "\u202c", "\x08", "\r", "\x7f", "\x00"]


def raw_controls(text: str) -> list[str]:
    return [repr(ch) for ch in ACTING if ch in text]


# -- the sanitizer ------------------------------------------------------------------


def test_visible_escapes_every_control_and_keeps_lines_and_tabs() -> None:
    shown = visible(EVIL)
    assert raw_controls(shown) == []
    assert "Title\\x1b]0;pwned\\x07 clear\\x1b[2J\\x1b[H c1\\x9b31m" in shown
    assert "bidi\\u202eevil\\u202c" in shown and "abc\\x08\\x08\\x08XYZ" in shown
    assert "safeOVER" in shown  # the carriage return is dropped, nothing overwritten
    assert "\tend" not in shown and "end\ttab\nnext line" in shown
    assert visible(shown) == shown  # escapes are plain text: showing twice changes nothing
    assert visible("a lone \udcff byte") == "a lone \\udcff byte"
    plain = "café, naïve, 日本語, 👨‍👩‍👧 family, non\u00a0breaking, [markup] `code`"
    assert visible(plain) == plain
    assert one_line(plain) == plain.replace("\u00a0", " ")  # a row folds every space
    assert one_line("a\n\tb  c\r\n") == "a b c"


def test_json_outputs_escape_what_json_leaves_raw_and_mean_the_same() -> None:
    value = {"text": EVIL, "name": "é 日本"}
    out = json_dumps(value)
    assert raw_controls(out) == [] and "é 日本" in out
    assert json.loads(out) == value
    dumped = json.dumps(value, ensure_ascii=False)
    assert "\x9b" in dumped and "\x9b" not in json_text(dumped)
    assert json.loads(json_text(dumped)) == value


# -- the CLI, on a terminal and on a pipe ------------------------------------------------


def run_on_tty(*args: str, home: Path, timeout: float = 120) -> tuple[int, str, str]:
    """``kvchat ARGS`` with stdout on a pseudo-terminal in raw mode (no line-ending
    translation, so every byte is the program's): exit code, stdout, stderr."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    env = {**os.environ, "KVCHAT_HOME": str(home)}
    proc = subprocess.Popen([kvchat_exe(), *args], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=subprocess.PIPE, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()))  # type: ignore[union-attr]
    reader.start()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the program closed the terminal's other end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    code = proc.wait(timeout=timeout)
    reader.join(timeout=timeout)
    return (code, b"".join(chunks).decode("utf-8", "replace"),
            b"".join(err).decode("utf-8", "replace"))


@pytest.fixture
def hostile_store(kvchat_home: Path) -> dict[str, int]:
    """A conversation whose title, prompt, reply and retried attempts hold EVIL."""
    with Store(kvchat_home / "kvchat.db") as store:
        cid = store.create_conversation(f"chat {ESC_TITLE}{CLEAR}\u202etitle", "m\x1b[5m")
        store.add_message(cid, "user", f"prompt {EVIL}")
        reply = store.add_message(cid, "assistant", f"reply {EVIL}")
        for number, ok in ((1, False), (2, True)):
            store.add_attempt(reply, number, "as_generated" if number == 1 else "stricter_prompt",
                              "json", f"attempt {number} {EVIL}", ok, found=f"found {EVIL}",
                              errors=[] if ok else [f"$.x: bad {EVIL}"],
                              prompt_change=f"added {EVIL}", completion_tokens=5,
                              elapsed_s=0.1)
    return {"cid": cid, "reply": reply}


def stored(home: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(home / "kvchat.db")
    try:
        return db.execute("SELECT role, content FROM messages ORDER BY id").fetchall()
    finally:
        db.close()


@pytest.mark.parametrize("args", [
    ("history",), ("history", "1"), ("retries",), ("retries", "show", "2"),
    ("search", "reply"), ("export", "1"), ("export", "1", "--all-branches")])
def test_cli_views_on_a_terminal_show_escapes(args: tuple[str, ...], kvchat_home: Path,
                                              hostile_store: dict[str, int]) -> None:
    code, out, err = run_on_tty(*args, home=kvchat_home)
    assert code == 0, err
    if args[0] == "search":  # its own bold around each match, on a terminal only
        assert "\x1b[1mreply\x1b[22m" in out
        out = out.replace("\x1b[1m", "").replace("\x1b[22m", "")
    assert raw_controls(out) == [] and raw_controls(err) == []
    assert "\\x1b]0;pwned\\x07" in out or "\\x1b[2J" in out  # shown, as an escape
    assert ("user", f"prompt {EVIL}") in stored(kvchat_home)  # nothing stored changed


@pytest.mark.parametrize("args", [
    ("history", "--json"), ("history", "1", "--json"), ("retries", "--json"),
    ("retries", "show", "2", "--json"), ("search", "reply", "--json"),
    ("export", "1", "--format", "json")])
def test_json_outputs_are_pure_json_holding_the_text(args: tuple[str, ...], kvchat_home: Path,
                                                     hostile_store: dict[str, int]) -> None:
    code, out, err = run_on_tty(*args, home=kvchat_home)
    assert code == 0, err
    assert raw_controls(out) == []
    data = json.loads(out)  # the whole output, nothing around it
    assert any(ESC_TITLE in text for text in strings(data))  # the text as stored


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def test_export_to_a_pipe_or_a_file_keeps_the_text_as_stored(
        kvchat_home: Path, hostile_store: dict[str, int], tmp_path: Path) -> None:
    piped = subprocess.run([kvchat_exe(), "export", "1"], capture_output=True,
                           env={**os.environ, "KVCHAT_HOME": str(kvchat_home)}, timeout=120)
    assert piped.returncode == 0
    assert f"reply {EVIL}".encode() in piped.stdout
    out = tmp_path / "chat.md"
    assert run_kvchat("export", "1", "-o", str(out), home=kvchat_home).returncode == 0
    assert f"prompt {EVIL}".encode() in out.read_bytes()


def test_errors_and_usage_mistakes_quote_input_escaped(kvchat_home: Path) -> None:
    cases = [("--kv-type", f"f16{CLEAR}"), ("export", "1", "-o", f"/nonexistent{ESC_TITLE}/x.md"),
             ("ask", "--schema", f"missing{ESC_TITLE}.json", "hi")]
    for args in cases:
        proc = run_kvchat(*args, home=kvchat_home)
        assert proc.returncode == 2, proc.stderr
        assert raw_controls(proc.stderr) == [], proc.stderr
        assert proc.stderr.count("\n") == 1 and "\\x1b" in proc.stderr


# -- a hostile server's reply ------------------------------------------------------------


class HostileTextServer:
    """An OpenAI-compatible server on 127.0.0.1 whose model name and every reply hold
    EVIL, streamed in small chunks so that sequences are cut between them; ``delay_s``
    between chunks makes a reply last."""

    MODEL = f"evil{CLEAR}model\u202e"

    def __init__(self, reply: str = f"reply {EVIL}", delay_s: float = 0.0) -> None:
        self.reply = reply
        self.delay_s = delay_s
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._json({"object": "list", "data": [
                    {"id": server.MODEL, "object": "model", "owned_by": "test"}]})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                with contextlib.suppress(OSError):  # a client killed mid-reply
                    self._stream(server.reply)

            def _stream(self, text: str) -> None:
                for i in range(0, len(text), 3):
                    self._event({"delta": {"content": text[i:i + 3]}, "finish_reason": None})
                    self.wfile.flush()
                    time.sleep(server.delay_s)
                self._event({"delta": {}, "finish_reason": "stop"})
                self.wfile.write(b"data: [DONE]\n\n")

            def _event(self, choice: dict[str, Any]) -> None:
                chunk = {"id": "c", "object": "chat.completion.chunk", "model": server.MODEL,
                         "choices": [{"index": 0, **choice}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())

            def _json(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HostileTextServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[HostileTextServer]:
    with HostileTextServer() as srv:
        yield srv


def test_ask_streams_escaped_to_a_terminal_and_as_generated_to_a_pipe(
        server: HostileTextServer, kvchat_home: Path) -> None:
    args = ("ask", "--base-url", server.base_url, "--route", "chat", PROMPT)
    code, out, err = run_on_tty(*args, home=kvchat_home)
    assert code == 0, err
    assert raw_controls(out) == [] and raw_controls(err) == []
    assert out == visible(f"reply {EVIL}") + "\n"
    piped = run_kvchat(*args, home=kvchat_home)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == f"reply {EVIL}\n"  # a pipe gets the reply as generated
    # Both replies and both prompts are stored whole, controls and all.
    assert stored(kvchat_home).count(("assistant", f"reply {EVIL}")) == 2
    assert stored(kvchat_home).count(("user", PROMPT)) == 2


def test_ask_events_are_pure_json_lines(server: HostileTextServer, kvchat_home: Path) -> None:
    code, out, err = run_on_tty("ask", "--base-url", server.base_url, "--route", "chat",
                                "--events", "jsonl", PROMPT, home=kvchat_home)
    assert code == 0, err
    assert raw_controls(out) == []
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["type"] == "model_loaded" and events[0]["name"] == server.MODEL
    assert "".join(e["text"] for e in events if e["type"] == "token") == f"reply {EVIL}"
    assert events[-1]["type"] == "done" and events[-1]["text"] == f"reply {EVIL}"


# -- the app -----------------------------------------------------------------------------


def screen_text(app: KvchatApp) -> str:
    """Every cell of the screen as Textual would write it, toasts and dialogs included."""
    update = app.screen._compositor.render_update(full=True)
    return "\n".join("".join(segment.text for segment in strip)
                     for strip in update.strips)  # type: ignore[attr-defined]


async def wait_for(seen: list[Message], kinds: tuple[type, ...], pilot: Any,
                   limit: int = 600) -> Message:
    for _ in range(limit):
        found = [m for m in seen if isinstance(m, kinds)]
        if found:
            return found[-1]
        await pilot.pause(0.05)
    raise AssertionError(f"no {kinds} within {limit * 0.05:.0f} s")


async def test_app_shows_a_hostile_reply_title_and_names_escaped(
        server: HostileTextServer, kvchat_home: Path, hostile_store: dict[str, int]) -> None:
    config = KvchatConfig(model=ModelConfig(), sampling=SamplingConfig(max_tokens=64),
                          ui={"stream_view": "markdown"})
    engine = OpenAIEngine(EndpointConfig(base_url=server.base_url),  # type: ignore[arg-type]
                          api_key=SecretStr("k"), sampling=config.sampling)
    seen: list[Message] = []
    app = KvchatApp(config, engine, Store(kvchat_home / "kvchat.db"), route="chat",
                    conversation_id=hostile_store["cid"],
                    prefs_file=kvchat_home / "ui-prefs.json")
    async with app.run_test(size=(160, 48), message_hook=seen.append,
                            notifications=True) as pilot:
        for _ in range(400):
            if app.ready:
                break
            await pilot.pause(0.05)
        app.query_one("#prompt").text = f"prompt {EVIL}"  # type: ignore[attr-defined]
        await pilot.press("enter")
        done = await wait_for(seen, (ReplyFinished, ReplyFailed), pilot)
        assert isinstance(done, ReplyFinished), done
        app.notify(f"note {EVIL}", title=f"title {ESC_TITLE}[/]")
        await pilot.pause(0.2)
        main = screen_text(app)
        assert raw_controls(main) == []
        assert "\\x1b]0;pwned\\x07" in main  # the reply, the prompt, the title: shown
        assert "evil\\x1b[2J" in main  # the server's model name, in the status line
        assert "note Title\\x1b]0;pwned" in main  # a toast, as plain text
        await app.push_screen(ConversationsScreen(app.store, app.conversation_id))
        await pilot.pause(0.2)
        listing = screen_text(app)
        assert raw_controls(listing) == [] and "\\u202etitle" in listing
        app.pop_screen()
        await app.push_screen(RetryScreen(app.store, hostile_store["reply"]))
        await pilot.pause(0.3)
        review = screen_text(app)
        assert raw_controls(review) == [] and "\\x1b]0;pwned\\x07" in review
    with Store(kvchat_home / "kvchat.db") as store:
        texts = [m.content for m in store.messages(app.conversation_id or 0)]
    assert f"reply {EVIL}" in texts and f"prompt {EVIL}" in texts  # stored as sent

