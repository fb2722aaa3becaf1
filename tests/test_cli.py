"""``kvchat`` as a person runs it: real processes, real model, real SQLite file."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from engine.events import parse_event
from tests.conftest import kvchat_exe, run_kvchat

ASK = ("ask", "--temp", "0", "--max-tokens", "12")


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def test_ask_streams_the_reply(kvchat_home: Path) -> None:
    proc = run_kvchat(*ASK, "Say hello.", home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    no_traceback(proc)


def test_ask_events_jsonl(kvchat_home: Path) -> None:
    proc = run_kvchat(*ASK, "--events", "jsonl", "Say hello.", home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    events = [parse_event(line) for line in proc.stdout.splitlines()]
    types = [e.type for e in events]
    assert types[:4] == ["model_loaded", "memory", "memory", "turn_started"]
    assert "token" in types and types[-1] == "done"
    raw_done = json.loads(proc.stdout.splitlines()[-1])
    for key in ("prompt_tokens", "completion_tokens", "ttft_s", "tokens_per_s", "finish_reason"):
        assert key in raw_done
    tokens = sum(len(e.token_ids) for e in events if e.type == "token")
    assert tokens == raw_done["completion_tokens"]


def test_conversation_history_and_export(kvchat_home: Path, tmp_path: Path) -> None:
    first = run_kvchat(*ASK, "--events", "jsonl", "Name a fruit.", home=kvchat_home)
    started = next(parse_event(ln) for ln in first.stdout.splitlines()
                   if '"turn_started"' in ln)
    cid = str(started.conversation_id)
    second = run_kvchat(*ASK, "--conversation", cid, "And a vegetable?", home=kvchat_home)
    assert second.returncode == 0, second.stderr

    history = run_kvchat("history", "--json", home=kvchat_home)
    rows = json.loads(history.stdout)
    assert [r["id"] for r in rows] == [int(cid)]
    assert rows[0]["message_count"] == 4 and rows[0]["title"] == "Name a fruit."

    md = run_kvchat("export", cid, "--format", "md", home=kvchat_home)
    assert md.returncode == 0
    assert "Name a fruit." in md.stdout and "And a vegetable?" in md.stdout
    out = tmp_path / "conv.json"
    js = run_kvchat("export", cid, "--format", "json", "-o", str(out), home=kvchat_home)
    assert js.returncode == 0, js.stderr
    exported = json.loads(out.read_text())
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant"] * 2


@pytest.mark.parametrize("kind, message", [
    ("missing", "model file not found"),
    ("directory", "is a directory"),
    ("empty", "is empty"),
    ("text", "not a GGUF model file"),
    ("truncated", "truncated"),
    ("garbage", "GGUF"),
])
def test_bad_model_file_is_one_clear_line(kvchat_home: Path, bad_files, kind: str,
                                          message: str) -> None:
    proc = run_kvchat(*ASK, "--model", str(bad_files[kind]), "Hi", home=kvchat_home)
    assert proc.returncode == 2
    assert proc.stderr.startswith("kvchat: error:") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    no_traceback(proc)


def test_bad_model_file_in_jsonl_mode_is_an_error_event(kvchat_home: Path, bad_files) -> None:
    proc = run_kvchat(*ASK, "--events", "jsonl", "--model", str(bad_files["text"]), "Hi",
                      home=kvchat_home)
    assert proc.returncode == 2
    event = parse_event(proc.stdout.strip())
    assert event.type == "error" and event.code == "model_file"


@pytest.mark.parametrize("args, message", [
    (("",), "the prompt is empty"),
    (("   ",), "the prompt is empty"),
    ((b"caf\xe9",), "not valid UTF-8 (byte 0xe9"),
    (("--conversation", "999", "Hi"), "no conversation with id 999"),
    (("--ctx", "lots", "Hi"), "expected a whole number"),
    (("--ctx", "16", "Hi"), "option --ctx"),
    (("--temp", "-3", "Hi"), "option --temp"),
])
def test_bad_prompts_and_options_exit_2(kvchat_home: Path, args, message: str) -> None:
    proc = run_kvchat("ask", *args, home=kvchat_home)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    no_traceback(proc)


def test_prompt_from_stdin(kvchat_home: Path) -> None:
    ok = run_kvchat(*ASK, "-", home=kvchat_home, stdin=b"Say hi.")
    assert ok.returncode == 0 and ok.stdout.strip()
    bad = run_kvchat(*ASK, "-", home=kvchat_home, stdin=b"\xff\xfe bad")
    assert bad.returncode == 2 and "not valid UTF-8 (byte 0xff at offset 0)" in bad.stderr


@pytest.mark.parametrize("body, key", [
    ("[sampling]\ntemprature = 0.5\n", "sampling.temprature"),
    ("[ui]\nthem = 'kvchat-light'\n", "ui.them"),  # the app's table, checked by tui/
])
def test_config_typo_is_one_line_naming_the_key(kvchat_home: Path, tmp_path: Path,
                                                body: str, key: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(body)
    for command in ((*ASK, "--config", str(config), "Hi"), ("--config", str(config))):
        proc = run_kvchat(*command, home=kvchat_home)  # kvchat ask, and the app
        assert proc.returncode == 2
        assert proc.stderr.strip() == f"kvchat: error: {config}: {key}: unknown key"


def test_generation_runs_through_a_small_context_with_evictions(kvchat_home: Path) -> None:
    proc = run_kvchat("ask", "--ctx", "512", "--ignore-eos", "--max-tokens", "2000",
                      "--events", "jsonl", "Tell me a story.", home=kvchat_home, timeout=900)
    assert proc.returncode == 0, proc.stderr
    events = [parse_event(line) for line in proc.stdout.splitlines()]
    done = events[-1]
    assert done.type == "done" and done.completion_tokens == 2000
    assert done.finish_reason == "length"
    evictions = [e for e in events if e.type == "eviction"]
    assert len(evictions) >= 4 and done.evictions == len(evictions)
    assert all(e.used_before <= 512 for e in evictions)


def test_prompt_longer_than_the_context_is_cut_with_a_note(kvchat_home: Path) -> None:
    proc = run_kvchat(*ASK, "--ctx", "256", "word " * 400, home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    note = next(line for line in proc.stderr.splitlines() if "note:" in line)
    assert "the context holds 256" in note and "tokens were cut" in note
    no_traceback(proc)


def test_failed_prompt_loses_nothing_stored(kvchat_home: Path, tmp_path: Path) -> None:
    # Without eviction, a prompt longer than the context is refused: a failed turn.
    config = tmp_path / "no-evict.toml"
    config.write_text("[kv]\nevict = false\n")
    ok = run_kvchat(*ASK, "--ctx", "256", "--events", "jsonl", "Hi there", home=kvchat_home)
    cid = next(parse_event(ln) for ln in ok.stdout.splitlines()
               if '"turn_started"' in ln).conversation_id
    too_long = run_kvchat(*ASK, "--ctx", "256", "--config", str(config), "--conversation",
                          str(cid), "word " * 400, home=kvchat_home)
    assert too_long.returncode == 2 and "the context holds 256" in too_long.stderr
    again = run_kvchat(*ASK, "--ctx", "256", "--conversation", str(cid), "Bye",
                       home=kvchat_home)
    assert again.returncode == 0, again.stderr
    rows = json.loads(run_kvchat("export", str(cid), "--format", "json",
                                 home=kvchat_home).stdout)["messages"]
    assert [r["content"] for r in rows if r["role"] == "user"] == ["Hi there", "word " * 400,
                                                                   "Bye"]
    assert [r["status"] for r in rows] == ["complete", "complete", "error", "error",
                                           "complete", "complete"]


def test_store_survives_sigkill_mid_reply(kvchat_home: Path) -> None:
    env = {**os.environ, "KVCHAT_HOME": str(kvchat_home)}
    proc = subprocess.Popen(
        [kvchat_exe(), "ask", "--events", "jsonl", "--ignore-eos", "--max-tokens", "5000",
         "Tell me a very long story about a lighthouse."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    tokens, cid = 0, None
    deadline = time.monotonic() + 120
    while tokens < 30 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        event = parse_event(line)
        if event.type == "turn_started":
            cid = event.conversation_id
        elif event.type == "token":
            tokens += len(event.token_ids)
    time.sleep(1.5)  # past one periodic save of the partial reply
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and cid is not None

    db = sqlite3.connect(kvchat_home / "kvchat.db")
    rows = db.execute("SELECT role, content, status FROM messages WHERE conversation_id = ? "
                      "ORDER BY id", (cid,)).fetchall()
    db.close()
    assert rows[0] == ("user", "Tell me a very long story about a lighthouse.", "complete")
    assert rows[1][0] == "assistant" and rows[1][2] == "streaming" and rows[1][1]

    # The next run marks the reply interrupted, and the conversation goes on.
    cont = run_kvchat(*ASK, "--conversation", str(cid), "The end.", home=kvchat_home)
    assert cont.returncode == 0, cont.stderr
    exported = json.loads(run_kvchat("export", str(cid), "--format", "json",
                                     home=kvchat_home).stdout)
    statuses = [m["status"] for m in exported["messages"]]
    assert statuses == ["complete", "interrupted", "complete", "complete"]
