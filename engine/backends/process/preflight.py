"""A model's first load in a child process, for commands that load it in their own.

llama.cpp refuses most broken files with an error, but some it only asserts on, and
a failed ``GGML_ASSERT`` aborts the whole process. ``engine/model/gguf_checks.py``
refuses what kvchat can foresee; what it cannot (assertions particular to an
architecture, a tensor of the wrong shape or type) would end ``kvchat ask`` with a
native abort. So a model is first loaded, and one token decoded, in an engine process
of its own (the app's, :class:`~engine.backends.process.engine.ProcessEngine`): an
abort there ends only that process and becomes a one-line ``ModelFileError``.

That costs a second load and a one-token reply (0.7 to 0.9 s on the default model,
where a two-token ``kvchat ask`` takes 0.85 s in all), so it is paid once: a load that went through
is remembered by the file's path, size and modification time and the settings that
shape the load (``known-loads.json`` in the data dir), and the same file is not
checked again until it changes. The bundled models are not checked at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path

from engine.api import ChatMessage, ChatRequest
from engine.backends.process.engine import ProcessEngine, log
from engine.config import CacheConfig, KVCacheConfig, ModelConfig, SamplingConfig, SpeculativeConfig
from engine.errors import EngineDied, ModelFileError
from engine.events import Error
from engine.files.atomic import atomic_write, private_dir
from engine.model.bundled import is_bundled
from engine.model.gguf_header import read_gguf_header

KNOWN_LOADS = "known-loads.json"
FIRST_TOKEN = ChatRequest(messages=(ChatMessage(role="user", content="Hi"),),
                          sampling=SamplingConfig(max_tokens=1, temperature=0.0))
KEEP = 64
"""Loads remembered, the most recent first."""


def load_key(model: ModelConfig, kv: KVCacheConfig, speculative: SpeculativeConfig,
             path: Path) -> str | None:
    """What identifies a load: the file as it is now and the settings llama.cpp builds
    the model and its graphs from. None when the file cannot be read."""
    try:
        info = path.stat()
        real = path.resolve()
    except OSError:
        return None
    settings = json.dumps([model.model_dump(mode="json", exclude={"path"}),
                           kv.model_dump(mode="json"),
                           speculative.model_dump(mode="json")], sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:16]
    return f"{real}|{info.st_size}|{info.st_mtime_ns}|{digest}"


def known(data_dir: Path, key: str) -> bool:
    return key in _read(data_dir)


def remember(data_dir: Path, key: str) -> None:
    """Add ``key`` to the loads that went through (best effort: a store that cannot be
    written only means the next start checks again)."""
    keys = [key, *(k for k in _read(data_dir) if k != key)][:KEEP]
    with contextlib.suppress(OSError):
        atomic_write(private_dir(data_dir) / KNOWN_LOADS, json.dumps(keys))


def _read(data_dir: Path) -> list[str]:
    try:
        keys = json.loads((data_dir / KNOWN_LOADS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []


async def check_load(model: ModelConfig, kv: KVCacheConfig, speculative: SpeculativeConfig,
                     path: Path, data_dir: Path) -> None:
    """Load ``path`` as ``model`` says in an engine process, unless that went through
    before. Raises ModelFileError when llama.cpp aborts on it, and whatever the load
    itself raises (the same error a load in this process would)."""
    if is_bundled(path):
        return  # shipped with kvchat, and loaded by its tests under every setting
    key = load_key(model, kv, speculative, path)
    if key is None or known(data_dir, key):
        return  # a file that cannot be read: the load says so
    read_gguf_header(path)  # what kvchat's own checks refuse needs no process
    engine = ProcessEngine(model.model_copy(update={"path": path}), kv=kv,
                           speculative=speculative, cache=CacheConfig(enabled=False))
    quiet, log.disabled = log.disabled, True  # its death is told once, below
    try:
        await engine.start()
        async for event in engine.chat(FIRST_TOKEN):  # a decode's graphs, not only the load's
            if isinstance(event, Error) and event.code == EngineDied.code:
                raise EngineDied(event.message)
    except EngineDied:
        raise ModelFileError(f"cannot load {path}: llama.cpp aborted while loading it "
                             f"({_assertion(engine.death)})") from None
    finally:
        log.disabled = quiet
        await engine.close()
    remember(data_dir, key)


def _assertion(death: str) -> str:
    """llama.cpp's failed assertion and where it is, else how the process ended."""
    found = re.search(r"([^/\s]+):(\d+): (GGML_ASSERT\(.*\) failed)", death)
    return f"{found[3]} at {found[1]}:{found[2]}" if found else death or "no message"
