"""What a quant costs: the same tokens through a reference and each candidate.

The reference's log-probabilities of every scored position are kept in a temporary
file (float32, one row per position: 0.4 GB for the bundled SmolLM2 at 4,000 tokens),
then each candidate is run over the same chunks and compared row by row: perplexity,
KL divergence of the next-token distributions (mean, 99th percentile), top-1
agreement, plus its file size and a short greedy decode's speed. Candidates whose
vocabulary differs from the reference's are refused before anything runs.
"""

from __future__ import annotations

import datetime
import hashlib
import platform
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals

from engine.config import usable_cores
from engine.errors import ConfigError, ModelLoadError
from engine.model import llama_log
from engine.model.gguf_header import GGUFHeader, read_gguf_header
from engine.model.quant_costs import (
    QuantCost,
    model_identity,
    quant_name,
    record_costs,
    reference_label,
)
from engine.quant.metrics import Tally, compare_rows, reference_rows
from engine.quant.scoring import Scorer

TEXT = Path(__file__).with_name("texts") / "lighthouse.txt"
"""The default text (original prose written for kvchat; see its first lines)."""
DEFAULT_CTX = 512

Progress = Callable[[str], None]


@dataclass
class ModelScore:
    path: str
    name: str
    quant: str
    file_bytes: int
    positions: int
    ppl: float | None
    kl_mean: float | None = None
    kl_p99: float | None = None
    kl_max: float | None = None
    top1: float | None = None
    tokens_per_s: float | None = None
    code_pass_rate: float | None = None
    code: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class QualityReport:
    text: dict[str, Any]
    n_ctx: int
    threads: int
    reference: ModelScore
    reference_label: str
    candidates: list[ModelScore]
    machine: str = field(default_factory=platform.platform)
    measured_at: str = field(default_factory=lambda: datetime.datetime.now(
        datetime.UTC).isoformat(timespec="seconds"))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_text() -> tuple[str, str]:
    """(name, text) of the text that ships with kvchat, its header comment removed."""
    lines = TEXT.read_text(encoding="utf-8").splitlines()
    body = [ln for ln in lines if not ln.startswith("#")]
    return TEXT.name, "\n".join(body).strip() + "\n"


def vocabulary(path: Path) -> tuple[int, str]:
    """(size, digest of every token's text), from a vocabulary-only load."""
    llama_log.install()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    try:
        model = _internals.LlamaModel(path_model=str(path), params=params, verbose=True)
    except ValueError:
        raise ModelLoadError(f"cannot read the vocabulary of {path}: "
                             f"{llama_log.recent_errors() or 'llama.cpp refused it'}") from None
    try:
        digest = hashlib.sha256()
        for token in range(model.n_vocab()):
            digest.update(model.token_get_text(token).encode("utf-8", "replace") + b"\0")
        return model.n_vocab(), digest.hexdigest()
    finally:
        model.close()


def check_vocabularies(ref: Path, candidates: list[Path]) -> None:
    """ConfigError for the first candidate whose tokens are not the reference's."""
    size, digest = vocabulary(ref)
    for path in candidates:
        n, d = vocabulary(path)
        if d != digest:
            what = f"{n} tokens against {size}" if n != size else "same size, other tokens"
            raise ConfigError(f"{path.name}: its vocabulary differs from {ref.name}'s ({what}):"
                              " KL divergence compares distributions over the same tokens")


def measure(ref: Path, candidates: list[Path], text: str, text_name: str, *,
            n_ctx: int = DEFAULT_CTX, threads: int | None = None,
            decode_tokens: int = 64, progress: Progress | None = None) -> QualityReport:
    """Score ``text`` with the reference and every candidate (see the module's doc)."""
    say = progress or (lambda _msg: None)
    headers = [read_gguf_header(p) for p in (ref, *candidates)]
    check_vocabularies(ref, candidates)
    threads = threads or usable_cores()
    with tempfile.TemporaryDirectory(prefix="kvchat-quality-") as tmp, \
            Scorer(ref, n_ctx, threads) as scorer:
        tokens = scorer.tokenize(text)
        if len(tokens) < 2 * n_ctx:
            raise ConfigError(f"the text is {len(tokens)} tokens: --ctx {n_ctx} needs at least "
                              f"{2 * n_ctx} (two chunks); give a longer text or a smaller --ctx")
        n_chunks = len(tokens) // n_ctx
        rows = n_ctx - 1 - n_ctx // 2
        store = np.lib.format.open_memmap(Path(tmp) / "ref.npy", mode="w+", dtype=np.float32,
                                          shape=(n_chunks * rows, scorer.n_vocab))
        say(f"reference {ref.name}: {len(tokens)} tokens, {n_chunks} chunks of {n_ctx}")
        tally = Tally()
        for i, (logits, targets) in enumerate(scorer.chunks(tokens)):
            logp, nll = reference_rows(logits, targets)
            store[i * rows:(i + 1) * rows] = logp
            tally.add(nll)
        reference = _score(headers[0], tally, scorer.decode_speed(decode_tokens))
        scores = []
        for header in headers[1:]:
            say(f"candidate {header.path.name}")
            scores.append(_candidate(header, text, tokens, store, rows, n_ctx, threads,
                                     decode_tokens))
    return QualityReport(
        text={"name": text_name, "chars": len(text), "tokens": len(tokens),
              "chunks": n_chunks, "positions": n_chunks * rows},
        n_ctx=n_ctx, threads=threads, reference=reference,
        reference_label=reference_label(headers[0]), candidates=scores)


def _candidate(header: GGUFHeader, text: str, tokens: list[int], store: np.ndarray,
               rows: int, n_ctx: int, threads: int, decode_tokens: int) -> ModelScore:
    with Scorer(header.path, n_ctx, threads) as scorer:
        if scorer.tokenize(text) != tokens:
            raise ConfigError(f"{header.path.name} tokenizes the text differently from the "
                              "reference: KL divergence needs the same tokens")
        tally = Tally()
        for i, (logits, targets) in enumerate(scorer.chunks(tokens)):
            tally.add(*compare_rows(store[i * rows:(i + 1) * rows], logits, targets))
        return _score(header, tally, scorer.decode_speed(decode_tokens))


def _score(header: GGUFHeader, tally: Tally, tokens_per_s: float) -> ModelScore:
    s = tally.summary()
    return ModelScore(path=str(header.path), name=header.path.name, quant=quant_name(header),
                      file_bytes=header.file_bytes, positions=int(s["positions"] or 0),
                      ppl=_f(s["ppl"]), kl_mean=_f(s["kl_mean"]), kl_p99=_f(s["kl_p99"]),
                      kl_max=_f(s["kl_max"]), top1=_f(s["top1"]),
                      tokens_per_s=round(tokens_per_s, 1))


def _f(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def record(report: QualityReport) -> tuple[Path | None, list[str]]:
    """Add each candidate of the reference's model to the costs table; (the table's
    path, the names of candidates left out because they are another model)."""
    ref = read_gguf_header(report.reference.path)
    identity = model_identity(ref)
    costs, skipped = [], []
    for c in report.candidates:
        header = read_gguf_header(c.path)
        if model_identity(header) != identity or c.kl_mean is None:
            skipped.append(c.name)
            continue
        costs.append(QuantCost(
            identity=identity, model=ref.name, quant=c.quant, reference=report.reference_label,
            file_bytes=c.file_bytes, kl_mean=c.kl_mean, kl_p99=c.kl_p99 or 0.0,
            top1=c.top1 or 0.0, ppl=c.ppl or 0.0, ppl_reference=report.reference.ppl or 0.0,
            tokens=c.positions, text=report.text["name"], code_pass_rate=c.code_pass_rate,
            measured_at=report.measured_at))
    return (record_costs(costs) if costs else None), skipped
