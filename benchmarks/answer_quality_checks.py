"""What benchmarks/answer_quality.py counts as a good answer, as plain functions.

Each checker takes the reply's text and the item from answer_quality_data.py and
returns (passed, why): ``why`` says what was missing when it failed. No model here:
tests/test_answer_quality.py proves each checker fails on bad answers.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from engine.structured.checks import find_code_blocks, find_json

Verdict = tuple[bool, str]
PYTHON_TAGS = ("python", "py", "python3", "")
CODE_TIMEOUT_S = 5.0
RUNNER = """import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from solution import {name}
{tests}
"""


def normalize(text: str) -> str:
    """Lower case, NFKC (so full-width digits and ligatures compare as usual)."""
    return unicodedata.normalize("NFKC", text).lower()


def has_phrase(text: str, phrase: str) -> bool:
    """``phrase`` in ``text`` as a whole word or phrase, case-insensitively: '8' is
    not found in '18' nor in '8,000' or '2.8', 'cat' not in 'category'."""
    return re.search(_phrase_pattern(phrase), normalize(text)) is not None


def _phrase_pattern(phrase: str) -> str:
    # A number's digit groups and decimals belong to it: '7' is not in '7,982'.
    return r"(?<![\w])(?<!\d[.,])" + re.escape(normalize(phrase)) + r"(?![\w])(?![.,]\d)"


def words(text: str) -> list[str]:
    return re.findall(r"[\w'’-]+", text)


# -- code --------------------------------------------------------------------------------


def extract_code(reply: str, name: str) -> str:
    """The code a reply defines: the first Python (or untagged) fenced block that
    defines ``name``, else every such block joined, else the whole reply."""
    blocks = [b.code for b in find_code_blocks(reply) if b.language in PYTHON_TAGS]
    for code in blocks:
        if re.search(rf"^\s*def\s+{re.escape(name)}\s*\(", code, re.M):
            return code
    return "\n\n".join(blocks) if blocks else reply


def _limits() -> None:
    """Runs in the child before Python starts: bounded memory and file sizes."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def run_tests(code: str, name: str, tests: str, timeout_s: float = CODE_TIMEOUT_S,
              ) -> Verdict:
    """Run ``tests`` against ``code`` in a fresh ``python -I`` in a temporary folder,
    with a time limit; passed when the process exits 0 (every assert held)."""
    with tempfile.TemporaryDirectory(prefix="aq-") as tmp:
        folder = Path(tmp)
        (folder / "solution.py").write_text(code, encoding="utf-8")
        (folder / "check.py").write_text(RUNNER.format(name=name, tests=tests),
                                         encoding="utf-8")
        try:
            proc = subprocess.run([sys.executable, "-I", "check.py"], cwd=folder,
                                  capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL, preexec_fn=_limits)
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout_s:g} s"
    if proc.returncode == 0:
        return True, ""
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else f"exit status {proc.returncode}"
    if last.strip() == "AssertionError":
        failing = [ln.strip() for ln in lines if ln.strip().startswith("assert ")]
        last = f"AssertionError: {failing[-1]}" if failing else last
    return False, last[:200]


def check_code(reply: str, item: dict[str, Any]) -> Verdict:
    return run_tests(extract_code(reply, item["name"]), item["name"], item["tests"])


# -- question answering --------------------------------------------------------------------


def without_prompt(reply: str, prompt: str) -> str:
    """The reply with every verbatim copy of the prompt taken out: a model that echoes
    the question gets no credit for the question's own words."""
    # Without its end punctuation: an echo cut off by the token limit often lacks it.
    return reply.replace(prompt.strip().rstrip(".?!"), " ")


def check_qa(reply: str, item: dict[str, Any]) -> Verdict:
    reply = without_prompt(reply, item["prompt"])
    if any(has_phrase(reply, answer) for answer in item["answers"]):
        return True, ""
    return False, f"none of {item['answers']} in the reply"


# -- summaries --------------------------------------------------------------------------------


def check_summary(reply: str, item: dict[str, Any]) -> Verdict:
    """Shorter than the source (in words) and every main entity kept (any spelling)."""
    n_reply, n_source = len(words(reply)), len(words(item["source"]))
    if n_reply == 0:
        return False, "empty reply"
    if n_reply >= n_source:
        return False, f"{n_reply} words, not shorter than the source's {n_source}"
    missing = [group[0] for group in item["entities"]
               if not any(has_phrase(reply, name) for name in group)]
    if missing:
        return False, f"missing {', '.join(missing)}"
    return True, ""


# -- chat -------------------------------------------------------------------------------------


def sentences(text: str) -> list[str]:
    """Sentences: split after . ! ? and at line breaks; empty pieces dropped."""
    pieces = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return [p for p in pieces if re.search(r"\w", p)]


def _groups_found(text: str, groups: list[list[str]]) -> int:
    return sum(any(has_phrase(text, w) for w in group) for group in groups)


def _in_order(text: str, items: list[list[str]]) -> bool:
    """Each item (any spelling) found after the one before it."""
    lowered, pos = normalize(text), 0
    for spellings in items:
        hits = [m.end() for w in spellings
                for m in re.finditer(_phrase_pattern(w), lowered)
                if m.start() >= pos]
        if not hits:
            return False
        pos = min(hits)
    return True


def _one_check(reply: str, check: dict[str, Any]) -> Verdict:
    kind = check["kind"]
    if kind == "contains_any":
        ok = any(has_phrase(reply, w) for w in check["words"])
        return ok, "" if ok else f"none of {check['words'][:6]} in the reply"
    if kind == "contains_all":
        missing = [w for w in check["words"] if not has_phrase(reply, w)]
        return not missing, f"missing {missing}" if missing else ""
    if kind == "starts_with_any":
        first = words(reply)[:1]
        ok = bool(first) and normalize(first[0]) in check["words"]
        return ok, "" if ok else f"starts with {first[0] if first else 'nothing'!r}"
    if kind == "distinct_from":
        found = _groups_found(reply, check["groups"])
        return found >= check["n"], f"{found} of the {check['n']} needed"
    if kind == "in_order":
        ok = _in_order(reply, check["items"])
        return ok, "" if ok else "not all in order"
    limits = {"sentences_at_most": sentences, "words_at_most": words,
              "lines_at_most": lambda t: [ln for ln in t.splitlines() if ln.strip()]}
    count = len(limits[kind](reply))
    ok = 0 < count <= check["n"]
    return ok, "" if ok else f"{count} {kind.split('_')[0]}, at most {check['n']} allowed"


def check_chat(reply: str, item: dict[str, Any]) -> Verdict:
    reply = without_prompt(reply, item["prompt"])
    for check in item["checks"]:
        ok, why = _one_check(reply, check)
        if not ok:
            return False, why
    return True, ""


# -- JSON -------------------------------------------------------------------------------------


def check_json(reply: str, item: dict[str, Any]) -> Verdict:
    """The reply's JSON (as the output checker finds it) validates against the schema,
    checked again here with jsonschema (draft 2020-12)."""
    found = find_json(reply)
    if not found.found:
        return False, found.error or "no JSON"
    errors = sorted(Draft202012Validator(item["schema"]).iter_errors(found.value),
                    key=lambda e: list(e.absolute_path))
    if errors:
        where = "$" + "".join(f"[{p!r}]" for p in errors[0].absolute_path)
        return False, f"{where}: {errors[0].message}"[:200]
    return True, ""


CHECKERS = {"code": check_code, "qa": check_qa, "summarize": check_summary,
            "chat": check_chat, "json": check_json}
