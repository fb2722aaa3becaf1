"""Count tokens for budgets: exactly with the loaded model, else a labelled estimate.

With a model loaded, its own tokenizer counts (exact). Before a load, or for a backend
with no local tokenizer, tiktoken is the fast estimator, but only from data already on
this machine: a ``.tiktoken`` file named in the config, or an encoding tiktoken cached
earlier. Nothing is downloaded at run time. With neither, a character-class estimate
is used, and every count says which method produced it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# tiktoken's public encodings: name -> (file URL, split pattern). The URL only names the
# cache entry tiktoken would have written; it is never fetched.
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_KNOWN = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_WORDS = re.compile(r"[A-Za-z]+|\d{1,3}|[^\sA-Za-z\d]")


@dataclass(frozen=True)
class TokenCount:
    tokens: int
    method: str
    """``exact`` (the model's tokenizer), ``tiktoken:<encoding>`` or ``estimate``."""


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: English words run about 1.3 tokens, digits come in
    groups of up to three, punctuation is a token each, and CJK characters about one
    each. Within ~25% of real BPE tokenizers on prose and code."""
    cjk = len(_CJK.findall(text))
    pieces = _WORDS.findall(text)
    words = sum(1 for p in pieces if p.isalpha() and p.isascii())
    long_words = sum(max(0, len(p) - 8) // 6 for p in pieces if p.isalpha() and p.isascii())
    other = len(pieces) - words
    return max(1 if text else 0, round(words * 1.15 + long_words + other + cjk * 0.2))


def tiktoken_cache_path(url: str) -> Path:
    """Where tiktoken keeps a downloaded encoding (it keys the cache by the URL's sha1)."""
    cache = (os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
             or os.path.join(tempfile.gettempdir(), "data-gym-cache"))
    return Path(cache) / hashlib.sha1(url.encode()).hexdigest()


def load_tiktoken(source: str | Path) -> Callable[[str], int] | None:
    """A counter from local tiktoken data: a ``.tiktoken`` file path or the name of a
    public encoding already in tiktoken's cache. None when neither is on this machine."""
    name = str(source)
    path = Path(name).expanduser()
    if name in _KNOWN:
        path = tiktoken_cache_path(_KNOWN[name])
    if not path.is_file():
        return None
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    try:
        ranks = load_tiktoken_bpe(str(path))  # a local path: read, never fetched
    except (OSError, ValueError):
        return None
    encoding = tiktoken.Encoding(name=Path(name).stem, pat_str=_CL100K_PATTERN,
                                 mergeable_ranks=ranks, special_tokens={})

    def count(text: str) -> int:
        return len(encoding.encode_ordinary(text))

    return count


class TokenCounter:
    """Counts with the best method available, saying which."""

    def __init__(self, exact: Callable[[str], int] | None = None,
                 tiktoken_source: str | Path | None = "cl100k_base") -> None:
        self._exact = exact
        self._tiktoken_source = tiktoken_source
        self._tiktoken: Callable[[str], int] | None = None
        self._tiktoken_tried = False

    def count(self, text: str) -> TokenCount:
        if self._exact is not None:
            return TokenCount(self._exact(text), "exact")
        if not self._tiktoken_tried:
            self._tiktoken_tried = True
            if self._tiktoken_source:
                self._tiktoken = load_tiktoken(self._tiktoken_source)
        if self._tiktoken is not None:
            return TokenCount(self._tiktoken(text),
                              f"tiktoken:{Path(str(self._tiktoken_source)).stem}")
        return TokenCount(estimate_tokens(text), "estimate")
