"""Hostile inputs: what a careless or malicious user, file or server hands kvchat.

Every case must end in one clear line (exit 2 for what the user can fix, 1 for a
failure of the machine or the server), within a bounded time: never a traceback, a
native crash, or a wait without end. A hang fails through the subprocess's or the
event loop's time limit, which bounds each case without timing it.

Sections, one per kind of input; other kinds join as sections of their own:

1. GGUF metadata of the wrong type or range (small files made here, read directly
   and through ``kvchat plan``, ``models`` and ``ask``)
2. Files llama.cpp aborts on (the bundled models with one value changed), and the
   app's engine process as the line behind the checks
3. Servers that misbehave (keep-alives without tokens, tokens past max_tokens, a
   refused key), OpenAI-compatible or passing for ``kvchat serve``
4. Secrets (a password in --base-url, a key given as --api-key-env)
5. Command-line consistency (one-line option errors, no blank line before an error)

Chat templates are tests/test_chat_template.py's (HOSTILE, ESCAPES, the hanging render
cancelled); escapes on the terminal tests/test_hostile_terminal.py's; the store and
schema patterns tests/test_hostile_data.py's; an abort in ``kvchat ask``'s load
tests/test_hostile_engine.py's.
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGUFValueType as T
from pydantic import SecretStr

from engine.api import ChatMessage
from engine.backends.process.engine import ProcessEngine
from engine.backends.remote.engine import OpenAIEngine
from engine.config import EndpointConfig, ModelConfig, SamplingConfig
from engine.errors import EngineDied, ModelFileError
from engine.events import Done, Error, Event, TokenChunk
from engine.model.gguf_header import read_gguf_header
from tests.conftest import chat_request, run_kvchat
from tests.gguf_patch import Raw, patch_gguf, rewrite_kv
from tests.openai_servers import HostileServer

BOUND_S = 60
"""Each command's time limit: a hang or work sized by a hostile number fails here."""
PASSWORD = "hunter2-secret"


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The command failed with ``code`` and said why in exactly one line."""
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvchat: error: "), proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    return lines[0]


# == 1. GGUF metadata of the wrong type or range ==========================================

def tiny_llama(path: Path, n_layers: int = 2) -> Path:
    """A well-formed llama GGUF of a few KB: two layers of 8-wide tensors."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(n_layers)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(8, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((8, 8), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _nested(depth: int) -> Raw:
    """An array of arrays ``depth`` deep, as bytes (no writer nests that far)."""
    return Raw(T.ARRAY, struct.pack("<IQ", T.ARRAY, 1) * (depth - 1)
               + struct.pack("<IQ", T.UINT8, 0))


# name -> (metadata changes, what the one-line error says)
CRAFTED: dict[str, tuple[dict[str, object], str]] = {
    "nested-5000-deep": ({"x.deep": _nested(5000)}, "x.deep is an array of arrays"),
    "nested-2-deep": ({"x.pairs": (T.ARRAY, (T.ARRAY, [(T.UINT8, [1]), (T.UINT8, [2])]))},
                      "array of arrays"),
    "alignment-text": ({"general.alignment": (T.STRING, "32")}, "general.alignment is the text"),
    "alignment-fraction": ({"general.alignment": (T.FLOAT32, 0.5)}, "not a power of two"),
    "alignment-zero": ({"general.alignment": (T.UINT32, 0)}, "not a power of two"),
    "alignment-48": ({"general.alignment": (T.UINT32, 48)}, "not a power of two"),
    "layers-text": ({"llama.block_count": (T.STRING, "2")}, "llama.block_count is the text"),
    "layers-nan": ({"llama.block_count": (T.FLOAT32, float("nan"))}, "llama.block_count is nan"),
    "layers-1e12": ({"llama.block_count": (T.UINT64, 10**12)}, "not a whole number"),
    "layers-3e7": ({"llama.block_count": (T.UINT32, 30_000_000)}, "takes 1 to 512 layers"),
    "layers-0": ({"llama.block_count": (T.UINT32, 0)}, "takes 1 to 512 layers"),
    "layers-beyond-tensors": ({"llama.block_count": (T.UINT32, 3)},
                              "no tensors for layer 2"),
    "layers-fewer-than-tensors": ({"llama.block_count": (T.UINT32, 1)},
                                  "has tensors for layer 1"),
    "array-length-lies": ({"x.lie": Raw(T.ARRAY, struct.pack("<IQ", T.UINT32, 2**60))},
                          "truncated or corrupt"),
    "string-array-length-lies": ({"x.lie": Raw(T.ARRAY, struct.pack("<IQ", T.STRING, 2**40))},
                                 "truncated or corrupt"),
    "string-length-lies": ({"x.lie": Raw(T.STRING, struct.pack("<Q", 2**40))},
                           "claims 1099511627776 bytes"),
    "unknown-value-type": ({"x.odd": Raw(99, b"")}, "unknown value type 99"),
    "per-layer-array-short": ({"llama.attention.head_count": (T.ARRAY, (T.UINT32, [2]))},
                              "has 1 entries for 2 layers"),
    "kv-heads-not-dividing": ({"llama.attention.head_count_kv": (T.UINT32, 3)},
                              "does not divide"),
    "experts-used-without-experts": ({"llama.expert_used_count": (T.UINT32, 2)},
                                     "more than llama.expert_count"),
    "rope-scaling-unknown": ({"llama.rope.scaling.type": (T.STRING, "wobbly")},
                             "llama.cpp knows none, linear, yarn, longrope"),
    "embedding-not-token_embd": ({"llama.embedding_length": (T.UINT32, 16)},
                                 "token_embd.weight is 8 wide"),
    "epsilon-infinite": ({"llama.attention.layer_norm_rms_epsilon": (T.FLOAT32, float("inf"))},
                         "not a finite number"),
    "architecture-a-number": ({"general.architecture": (T.UINT32, 5)},
                              "general.architecture is 5, not a name"),
    "key-with-escapes": ({"evil\x1b[2J\nkey": _nested(3)}, "'evil\\x1b[2J\\nkey'"),
}


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("crafted")
    base = tiny_llama(folder / "tiny.base")
    files = {name: rewrite_kv(base, folder / f"{name}.gguf", changes)  # type: ignore[arg-type]
             for name, (changes, _) in CRAFTED.items()}
    claims = bytearray(base.read_bytes())
    claims[16:24] = struct.pack("<Q", 10**9)  # a billion metadata entries in a few KB
    files["counts-claim-too-much"] = folder / "counts-claim-too-much.gguf"
    files["counts-claim-too-much"].write_bytes(bytes(claims))
    return files


def test_the_crafted_base_file_is_sound(tmp_path: Path) -> None:
    header = read_gguf_header(tiny_llama(tmp_path / "tiny.gguf"))
    assert (header.architecture, header.n_layers, len(header.tensors)) == ("llama", 2, 6)


@pytest.mark.parametrize("name", [*CRAFTED, "counts-claim-too-much"])
def test_bad_metadata_is_one_model_file_error(crafted: dict[str, Path], name: str) -> None:
    with pytest.raises(ModelFileError) as caught:
        read_gguf_header(crafted[name])
    message = caught.value.message
    expected = CRAFTED[name][1] if name in CRAFTED else "more than its"
    assert expected in message and "\n" not in message and "\x1b" not in message, message


@pytest.mark.parametrize("name", ["layers-3e7", "nested-5000-deep", "alignment-fraction",
                                  "layers-nan", "key-with-escapes"])
def test_plan_and_ask_refuse_bad_metadata_in_one_line(crafted: dict[str, Path], name: str,
                                                      kvchat_home: Path) -> None:
    for args in (("plan", str(crafted[name])), ("ask", "hi", "--model", str(crafted[name]))):
        line = one_line_error(run_kvchat(*args, home=kvchat_home, timeout=BOUND_S))
        assert CRAFTED[name][1] in line


def test_models_lists_each_bad_file_as_one_broken_row(crafted: dict[str, Path],
                                                      kvchat_home: Path) -> None:
    folder = next(iter(crafted.values())).parent
    kvchat_home.mkdir(parents=True, exist_ok=True)
    (kvchat_home / "config.toml").write_text(f'[models]\ndirs = ["{folder}"]\n')
    proc = run_kvchat("models", "--json", home=kvchat_home, timeout=BOUND_S)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    rows = {Path(row["path"]).name: row for row in json.loads(proc.stdout)}
    for name in crafted:
        verdict = rows[f"{name}.gguf"]["verdict"]
        assert verdict.startswith("broken: ") and "\n" not in verdict, (name, verdict)


# == 2. Files llama.cpp aborts on ==========================================================

# name -> (metadata changes on the default model, what the one-line error says)
ABORTS: dict[str, tuple[dict[str, object], str]] = {
    "no-layers": ({"llama.block_count": (T.UINT32, 0)}, "llama.block_count is 0"),
    "more-layers-than-tensors": ({"llama.block_count": (T.UINT32, 31)},
                                 "no tensors for layer 30"),
    "experts-used-without-experts": ({"llama.expert_used_count": (T.UINT32, 2)},
                                     "llama.expert_used_count (2)"),
    "unknown-rope-scaling": ({"llama.rope.scaling.type": (T.STRING, "wobbly")},
                             "llama.rope.scaling.type is the text 'wobbly'"),
    "nextn-beyond-layers": ({"llama.nextn_predict_layers": (T.UINT32, 31)},
                            "nextn_predict_layers (31)"),
    "narrower-embedding": ({"llama.embedding_length": (T.UINT32, 512)},
                           "token_embd.weight is 576 wide"),
    "kv-heads-not-dividing": ({"llama.attention.head_count_kv": (T.UINT32, 2)},
                              "(2) does not divide attention.head_count (9)"),
}


@pytest.fixture(scope="module")
def patched(default_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The default model with one value changed, each of which made llama.cpp abort
    (GGML_ASSERT, exit 134) before kvchat checked it."""
    folder = tmp_path_factory.mktemp("patched")
    files = {name: rewrite_kv(default_path, folder / f"{name}.gguf", changes)  # type: ignore[arg-type]
             for name, (changes, _) in ABORTS.items()}
    tokens = gguf.GGUFReader(str(default_path)).fields["tokenizer.ggml.tokens"]
    text = bytes(tokens.parts[tokens.data[1000]]).decode()  # '()', as long as token 1002's
    files["repeated-token"] = patch_gguf(default_path, folder / "repeated-token.gguf",
                                         token_text={1002: text})
    return files


@pytest.mark.parametrize("name", [*ABORTS, "repeated-token"])
def test_ask_refuses_what_llama_cpp_would_abort_on(patched: dict[str, Path], name: str,
                                                   kvchat_home: Path) -> None:
    proc = run_kvchat("ask", "hi", "--model", str(patched[name]), "--max-tokens", "4",
                      home=kvchat_home, timeout=BOUND_S)
    line = one_line_error(proc)
    expected = ABORTS[name][1] if name in ABORTS else "the vocabulary lists the text '()' twice"
    assert expected in line and str(patched[name]) in line


def test_a_file_llama_cpp_refuses_exits_2_as_the_readme_says(
        default_path: Path, tmp_path: Path, kvchat_home: Path) -> None:
    # Rotary dimensions other than a head's pass kvchat's checks (other architectures
    # rotate part of a head); llama.cpp refuses them for a llama with an error.
    odd = rewrite_kv(default_path, tmp_path / "half-rope.gguf",
                     {"llama.rope.dimension_count": (T.UINT32, 32)})
    proc = run_kvchat("ask", "hi", "--model", str(odd), "--max-tokens", "4",
                      home=kvchat_home, timeout=BOUND_S)
    line = one_line_error(proc, code=2)
    assert f"cannot load {odd}" in line and "invalid n_rot" in line


def smollm3_with_half_rope(default_path: Path, path: Path) -> Path:
    """The default model relabelled ``smollm3`` (the same tensors) with rotary
    dimensions of half a head: it passes kvchat's checks and llama.cpp loads it, then
    a GGML_ASSERT of smollm3's graph aborts the process."""
    reader = gguf.GGUFReader(str(default_path))
    changes: dict[str, object] = {"general.architecture": (T.STRING, "smollm3")}
    for key, field in reader.fields.items():
        if key.startswith("llama."):
            changes[key] = None
            value = field.parts[-1][0].item()
            changes["smollm3" + key[len("llama"):]] = (T(field.types[0]), value)
    changes["smollm3.rope.dimension_count"] = (T.UINT32, 32)
    return rewrite_kv(default_path, path, changes)  # type: ignore[arg-type]


async def test_an_abort_in_the_engine_process_is_engine_died(default_path: Path,
                                                            tmp_path: Path) -> None:
    """The app's second line: what slips past the checks kills the engine's process,
    not the app, and says so in one line that names llama.cpp's assertion."""
    odd = smollm3_with_half_rope(default_path, tmp_path / "smollm3-half-rope.gguf")
    read_gguf_header(odd)  # passes kvchat's checks
    engine = ProcessEngine(ModelConfig(path=odd, n_ctx=256), SamplingConfig(max_tokens=4))
    try:
        with pytest.raises(EngineDied) as caught:
            await asyncio.wait_for(engine.start(), BOUND_S)
    finally:
        await engine.close()
    message = caught.value.message
    assert caught.value.code == "engine_died" and "SIGABRT" in message, message
    assert "GGML_ASSERT(n_embd_head == n_rot)" in message and "\n" not in message
    assert "Inferior" not in message and "#0 " not in message  # no debugger's dump


# == 3. Servers that misbehave =============================================================

@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Iterator[HostileServer]:
    chat, models, kvchat = (*request.param, False)[:3] if isinstance(request.param, tuple) \
        else (request.param, 200, False)
    with HostileServer(chat, models, kvchat=kvchat) as server:
        yield server


async def reply_from(server: HostileServer, max_tokens: int = 8,
                     timeout: float = 2.0) -> list[Event]:
    """One reply's events from ``server`` through the OpenAI backend."""
    engine = OpenAIEngine(EndpointConfig(base_url=server.base_url, timeout=timeout,
                                         stats=False),
                          api_key=SecretStr("k"), tiktoken_source=None)
    request = chat_request([ChatMessage(role="user", content="hi")],
                           SamplingConfig(max_tokens=max_tokens, temperature=0.0))

    async def collect() -> list[Event]:
        await engine.start()
        return [event async for event in engine.chat(request)]

    try:
        return await asyncio.wait_for(collect(), BOUND_S)
    finally:
        await engine.close()


# Each also as kvchat serve's own event stream: queued and progress events are its
# keep-alives.
AS_KVCHAT = {"ids": ["openai", "kvchat-serve"], "indirect": True}


@pytest.mark.parametrize("hostile", ["keepalive", ("keepalive", 200, True)], **AS_KVCHAT)
async def test_keep_alives_without_a_token_end_at_the_timeout(hostile: HostileServer) -> None:
    events = await reply_from(hostile, timeout=2.0)
    end = events[-1]
    assert isinstance(end, Error) and end.code == "server_timeout", end
    assert "sent no reply within 2 s" in end.message and "keep-alives do not count" in end.message
    assert hostile.hung_up.wait(10)  # kvchat closed the stream


@pytest.mark.parametrize("hostile", ["token-then-keepalive",
                                     ("token-then-keepalive", 200, True)], **AS_KVCHAT)
async def test_keep_alives_after_a_token_end_at_the_timeout(hostile: HostileServer) -> None:
    events = await reply_from(hostile, timeout=2.0)
    assert [e.text for e in events if isinstance(e, TokenChunk)] == ["ha"]
    end = events[-1]
    assert isinstance(end, Error) and end.code == "server_timeout", end
    assert "sent nothing more of the reply for 2 s" in end.message
    assert "partial reply" in end.message


@pytest.mark.parametrize("hostile", ["overrun", ("overrun", 200, True)], **AS_KVCHAT)
async def test_a_reply_past_max_tokens_is_cut_there(hostile: HostileServer) -> None:
    events = await reply_from(hostile, max_tokens=8)
    end = events[-1]
    assert isinstance(end, Done) and end.finish_reason == "length", end
    assert end.text == "ha" * 8 and end.completion_tokens == 8
    assert hostile.hung_up.wait(10)  # kvchat stopped reading


@pytest.mark.parametrize("hostile", ["endless-line", ("endless-line", 200, True)], **AS_KVCHAT)
async def test_a_line_without_end_is_cut_at_the_line_limit(hostile: HostileServer) -> None:
    end = (await reply_from(hostile, timeout=30.0))[-1]
    assert isinstance(end, Error) and end.code == "server_protocol", end
    assert "sent a line of more than 8388608 characters" in end.message, end.message
    assert hostile.chunks_sent < 1000 and hostile.hung_up.wait(10)  # 64 MiB at most


@pytest.mark.parametrize("hostile", ["keepalive", ("keepalive", 200, True)], **AS_KVCHAT)
def test_ask_ends_a_keep_alive_stream_with_one_line(hostile: HostileServer,
                                                    kvchat_home: Path) -> None:
    kvchat_home.mkdir(parents=True, exist_ok=True)
    (kvchat_home / "config.toml").write_text(
        f'[backend]\nkind = "openai"\n[backend.endpoints.slow]\n'
        f'base_url = "{hostile.base_url}"\ntimeout = 2\nstats = false\n')
    proc = run_kvchat("ask", "hi", home=kvchat_home, timeout=BOUND_S)
    line = one_line_error(proc, code=1)
    assert "sent no reply within 2 s" in line and proc.stdout == ""


@pytest.mark.parametrize("hostile", ["overrun"], indirect=True)
def test_ask_stops_a_server_that_streams_past_max_tokens(hostile: HostileServer,
                                                         kvchat_home: Path) -> None:
    proc = run_kvchat("ask", "hi", "--base-url", hostile.base_url, "--max-tokens", "5",
                      "--events", "jsonl", home=kvchat_home, timeout=BOUND_S)
    assert proc.returncode == 0, proc.stderr
    done = [json.loads(line) for line in proc.stdout.splitlines()][-1]
    assert done["type"] == "done" and done["finish_reason"] == "length"
    assert done["text"] == "ha" * 5


@pytest.mark.parametrize("hostile", [("401", 200), ("401", 401)], indirect=True,
                         ids=["on-chat", "on-models"])
def test_a_refused_key_exits_2_wherever_it_is_refused(hostile: HostileServer,
                                                      kvchat_home: Path) -> None:
    proc = run_kvchat("ask", "hi", "--base-url", hostile.base_url, home=kvchat_home,
                      timeout=BOUND_S)
    line = one_line_error(proc, code=2)  # one line: no blank line before the error
    assert "refused the API key (HTTP 401" in line


# == 4. Secrets ============================================================================

@pytest.mark.parametrize("hostile", [("401", 200)], indirect=True)
def test_a_password_in_the_base_url_is_never_shown_or_stored(hostile: HostileServer,
                                                             kvchat_home: Path) -> None:
    url = hostile.base_url.replace("http://", f"http://me:{PASSWORD}@")
    plain = run_kvchat("ask", "hi", "--base-url", url, home=kvchat_home, timeout=BOUND_S)
    assert "http://***@127.0.0.1" in one_line_error(plain)
    events = run_kvchat("ask", "hi", "--base-url", url, "--events", "jsonl",
                        home=kvchat_home, timeout=BOUND_S)
    loaded = json.loads(events.stdout.splitlines()[0])
    assert loaded["type"] == "model_loaded" and loaded["path"].startswith("http://***@")
    unreachable = run_kvchat("ask", "hi", "--base-url", f"http://me:{PASSWORD}@127.0.0.1:9/v1",
                             home=kvchat_home, timeout=BOUND_S)
    assert "cannot connect to http://***@127.0.0.1:9" in one_line_error(unreachable)
    for proc in (plain, events, unreachable):
        assert PASSWORD not in proc.stdout + proc.stderr
    stored = [p for p in kvchat_home.rglob("*") if p.is_file()]
    assert stored and not any(PASSWORD.encode() in p.read_bytes() for p in stored)


def test_a_key_given_as_api_key_env_is_not_echoed(kvchat_home: Path) -> None:
    key = "sk-live-abc123DEF456"
    proc = run_kvchat("ask", "hi", "--base-url", "http://127.0.0.1:9/v1",
                      "--api-key-env", key, home=kvchat_home, timeout=BOUND_S)
    assert "takes the NAME of an environment variable" in one_line_error(proc)
    kvchat_home.mkdir(parents=True, exist_ok=True)
    (kvchat_home / "config.toml").write_text(
        f'[backend.endpoints.x]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "{key}"\n')
    in_config = run_kvchat("ask", "hi", "--endpoint", "x", home=kvchat_home, timeout=BOUND_S)
    assert "api_key_env" in one_line_error(in_config)
    assert key not in proc.stderr + in_config.stderr


# == 5. Command-line consistency ===========================================================

def test_a_bad_option_value_is_one_line(kvchat_home: Path) -> None:
    proc = run_kvchat("ask", "hi", "--max-tokens", "0", home=kvchat_home, timeout=BOUND_S)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("kvchat ask: error: argument --max-tokens: must be at least 1, "
                           "got 0 (see kvchat ask --help)\n")

