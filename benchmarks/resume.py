"""Coming back to a conversation: restored from a saved state, or evaluated again?

For conversations of about ``--sizes`` tokens (prose from docs/, alternating user and
assistant turns) on the default model, each measurement in fresh processes:

- **ram**: one process asks A, then another conversation B (A's state is saved in RAM),
  then A with a new message: time to first token of that reply (the restore included);
- **disk**: one process asks A and closes (A's state goes to disk); a new process, its
  state file dropped from the page cache first (``posix_fadvise``), asks A with the new
  message;
- **eval**: a process without a state cache asks A with the new message: the whole
  conversation is evaluated;
- **regenerate** (``--regen-size``): A, then B, then A's last prompt again (its reply
  regenerated): prompt tokens evaluated before the first new token, cache on and off.

Also the saved state's bytes per token (llama.cpp's state, and the file) against the
memory planner's KV bytes per token. TTFT is the engine's own (``done.ttft_s``: the
request on the engine thread to the first token sampled). Median of ``--reps``.

``--model`` picks a bundled model by name (``smollm2-135m``, ``gemma3-270m``) or a GGUF
file; the default model otherwise.

``--budget RAM,DISK`` (e.g. ``3MiB,8MiB``) measures the budgets instead: ``--conversations``
conversations of different lengths go through one process twice (a first turn each,
then a second), the process closes (RAM goes to disk), and a second process asks each a
third time. The largest bytes each tier held, from the ``state_cache`` events' totals
and from the state files on disk after every turn, against its budget.

    .venv/bin/python benchmarks/resume.py [--model NAME] [--sizes 1000,3000,8000]
        [--reps 3] [--ctx 8448] [--regen-size 3000] [--json FILE]
    .venv/bin/python benchmarks/resume.py --budget 3MiB,8MiB [--conversations 12]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.api import ChatMessage, ChatRequest  # noqa: E402
from engine.backends.local import LocalEngine  # noqa: E402
from engine.config import (  # noqa: E402
    CacheConfig,
    KvchatConfig,
    ModelConfig,
    SamplingConfig,
    budget_bytes,
)
from engine.decode.generator import Generator  # noqa: E402
from engine.events import Done, PromptEvaluated, StateCacheNote  # noqa: E402
from engine.model.bundled import BUNDLED, bundled_model_path, default_model_path  # noqa: E402

SAMPLING = SamplingConfig(temperature=0.0, max_tokens=16, seed=0)
SYSTEM = ChatMessage(role="system", content=KvchatConfig().chat.system_prompt)
OTHER = [SYSTEM, ChatMessage(role="user", content="Write a short poem about rain.")]
NEW = "Summarize what we discussed in one sentence."
TEXTS = "resume-texts.json"
"""Beside each measurement's folder: the prose its conversations are made of."""


def model_path(name: str | None) -> Path:
    """A bundled model by name, or a file; the default model for None."""
    if name is None:
        return default_model_path()
    if any(m.name == name for m in BUNDLED):
        return bundled_model_path(name)
    return Path(name)


def paragraphs() -> list[str]:
    """Prose to fill a conversation with: the docs' paragraphs, in a fixed order. Read
    once by the parent, so every process of a run sees the same text."""
    found = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        found += [p.strip() for p in doc.read_text().split("\n\n") if len(p.strip()) > 200]
    return found


def conversation(eng: LocalEngine, texts: list[str], size: int) -> list[ChatMessage]:
    """About ``size`` tokens of history ending with a user message."""
    messages, total = [SYSTEM], 30
    i = 0
    while total < size - 40:
        role = "user" if len(messages) % 2 == 1 else "assistant"
        text = texts[i % len(texts)]
        tokens = eng.count_tokens(text) or 1
        if total + tokens + 5 > size - 20:  # the last one cut to size
            text = text[: max(1, len(text) * (size - 20 - total) // tokens)]
            tokens = eng.count_tokens(text) or 0
        messages.append(ChatMessage(role=role, content=text))
        total += tokens + 5
        i += 1
    if messages[-1].role == "user":
        messages.append(ChatMessage(role="assistant", content="I see."))
    return [*messages, ChatMessage(role="user", content="Go on.")]


async def ask(eng: LocalEngine, messages: list[ChatMessage]) -> dict[str, Any]:
    done, prompt, notes = None, None, []
    async for event in eng.chat(ChatRequest(messages=tuple(messages))):
        if isinstance(event, Done):
            done = event
        elif isinstance(event, PromptEvaluated):
            prompt = event
        elif isinstance(event, StateCacheNote):
            notes.append(event.model_dump(include={"action", "tier", "tokens", "bytes",
                                                   "ms", "reason", "entries", "ram_bytes",
                                                   "disk_bytes"}))
    assert done is not None and prompt is not None, "no reply"
    return {"ttft_s": done.ttft_s, "text": done.text, "prompt_tokens": prompt.prompt_tokens,
            "evaluated_tokens": prompt.evaluated_tokens,
            "restored_tokens": prompt.restored_tokens, "notes": notes}


def follow(history: list[ChatMessage], answer: str) -> list[ChatMessage]:
    return [*history, ChatMessage(role="assistant", content=answer),
            ChatMessage(role="user", content=NEW)]


def planned_bytes(gen: Generator) -> int:
    return gen.lm.bytes_per_cell


async def child(mode: str, size: int, ctx: int, folder: Path, model: Path) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    enabled = mode not in ("eval", "regen-off")
    cache = CacheConfig(enabled=enabled, dir=folder, ram_budget="4GiB", disk_budget="4GiB")
    eng = LocalEngine(ModelConfig(path=model, n_ctx=ctx), SAMPLING, cache=cache)
    await eng.start()
    try:
        texts = json.loads((folder.parent / TEXTS).read_text())
        history = conversation(eng, texts, size)
        answer_file = folder / f"answer-{size}.txt"
        if mode in ("eval", "disk-resume"):
            return await ask(eng, follow(history, answer_file.read_text()))
        first = await ask(eng, history)
        answer_file.write_text(first["text"])
        if mode == "disk-save":
            return first
        await ask(eng, OTHER)
        if mode == "ram":
            result = await ask(eng, follow(history, first["text"]))
        else:
            result = await ask(eng, history)  # regen-on / regen-off: the same prompt again
        per_cell = await eng.run_on_engine_thread(planned_bytes)
        return {**result, "planner_bytes_per_token": per_cell}
    finally:
        await eng.close()


def files_bytes(folder: Path) -> int:
    """What the disk tier's files take, as the file system says."""
    return sum(p.stat().st_size for p in folder.glob("*.kvstate"))


def budget_conversations(eng: LocalEngine, texts: list[str], n: int) -> list[list[ChatMessage]]:
    """``n`` conversations of 80 to 330 tokens, each from another place in the prose."""
    found = []
    for i in range(n):
        shifted = texts[i * 7 % len(texts):] + texts[:i * 7 % len(texts)]
        found.append(conversation(eng, shifted, 80 + 50 * (i % 6)))
    return found


async def budget_child(mode: str, n: int, ctx: int, folder: Path, model: Path,
                       budget: str) -> dict[str, Any]:
    """``budget-1``: a first and a second turn of each conversation; ``budget-2`` (a new
    process): a third. The state files' bytes after every turn and every note."""
    ram, disk = budget.split(",")
    cache = CacheConfig(dir=folder / "states", ram_budget=ram, disk_budget=disk)
    eng = LocalEngine(ModelConfig(path=model, n_ctx=ctx), SAMPLING, cache=cache)
    await eng.start()
    turns, files = [], []
    answers_file = folder / "answers.json"
    try:
        convs = budget_conversations(eng, json.loads((folder.parent / TEXTS).read_text()), n)
        order = list(range(len(convs)))
        # The second round goes back in reverse, so the most recent states come back
        # first (restores) and the oldest are gone (misses); the third, in a new process,
        # starts where the second ended, with what the close wrote to disk.
        if mode == "budget-1":
            answers: list[list[str]] = [[] for _ in convs]
            rounds = [(order, lambda i: convs[i]),
                      (order[::-1], lambda i: follow(convs[i], answers[i][0]))]
        else:
            answers = json.loads(answers_file.read_text())
            rounds = [(order, lambda i: [*follow(convs[i], answers[i][0]),
                                         ChatMessage(role="assistant", content=answers[i][1]),
                                         ChatMessage(role="user", content="And then?")])]
        for which, messages_of in rounds:
            for i in which:
                turn = await ask(eng, messages_of(i))
                answers[i].append(turn["text"])
                turns.append(turn)
                files.append(files_bytes(folder / "states"))
        answers_file.write_text(json.dumps(answers))
    finally:
        await eng.close()
    files.append(files_bytes(folder / "states"))  # after the close wrote RAM out
    return {"turns": [{k: t[k] for k in ("prompt_tokens", "evaluated_tokens",
                                         "restored_tokens", "notes")} for t in turns],
            "files_bytes": files}


def budgets(args: argparse.Namespace, base: Path) -> None:
    """Many conversations through small budgets: the most each tier ever held."""
    ram, disk = (budget_bytes(b) for b in args.budget.split(","))
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        runs = [run_child(mode, 0, Setup(args.ctx, args.model), Path(tmp),
                          ["--conversations", str(args.conversations), "--budget", args.budget])
                for mode in ("budget-1", "budget-2")]
    turns = [t for r in runs for t in r["turns"]]
    notes = [n for t in turns for n in t["notes"]]
    counts: dict[str, int] = {}
    for n in notes:
        name = f"{n['action']} {n['tier'] or ''}".strip()
        counts[name] = counts.get(name, 0) + 1
    result = {
        "model": model_path(args.model).name, "ctx": args.ctx,
        "conversations": args.conversations, "turns": len(turns),
        "ram_budget": ram, "disk_budget": disk,
        "peak_ram_bytes": max((n["ram_bytes"] for n in notes), default=0),
        "peak_disk_bytes": max((n["disk_bytes"] for n in notes), default=0),
        "peak_files_bytes": max(f for r in runs for f in r["files_bytes"]),
        "most_entries": max((n["entries"] for n in notes), default=0),
        "actions": counts,
        "restored_tokens": sum(t["restored_tokens"] for t in turns),
        "evaluated_tokens": sum(t["evaluated_tokens"] for t in turns),
        "prompt_tokens": sum(t["prompt_tokens"] for t in turns),
        "runs": runs,
    }
    print(f"{result['turns']} turns: RAM peak {result['peak_ram_bytes']:,} of {ram:,} B, "
          f"disk peak {result['peak_disk_bytes']:,} (files {result['peak_files_bytes']:,}) "
          f"of {disk:,} B; {counts}", flush=True)
    if result["peak_ram_bytes"] > ram or max(result["peak_disk_bytes"],
                                             result["peak_files_bytes"]) > disk:
        raise SystemExit("a tier held more than its budget")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def drop_page_cache(folder: Path) -> None:
    for path in folder.glob("*.kvstate"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Setup:
    ctx: int
    model: str | None
    """As ``--model`` gives it: passed on to every child process."""

    def args(self) -> list[str]:
        return ["--ctx", str(self.ctx), *(["--model", self.model] if self.model else [])]


def run_child(mode: str, size: int, setup: Setup, folder: Path,
              more: Sequence[str] = ()) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--size", str(size),
                          *setup.args(), "--dir", str(folder), *more],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{mode} {size} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def restored(run: dict[str, Any], tier: str) -> dict[str, Any]:
    notes = [n for n in run["notes"] if n["action"] == "restore"]
    if not notes or notes[0]["tier"] != tier:
        raise SystemExit(f"expected a restore from {tier}, got {run['notes']}")
    return notes[0]


def measure(size: int, reps: int, setup: Setup, base: Path) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"ram": [], "disk": [], "eval": []}
    sizes: dict[str, float] = {}
    for _ in range(reps):
        with tempfile.TemporaryDirectory(dir=base) as tmp:
            folder = Path(tmp)
            runs["ram"].append(run_child("ram", size, setup, folder))
        with tempfile.TemporaryDirectory(dir=base) as tmp:
            folder = Path(tmp)
            run_child("disk-save", size, setup, folder)
            (path,) = folder.glob("*.kvstate")
            file_bytes = path.stat().st_size  # the resumed process saves a longer one
            drop_page_cache(folder)
            runs["disk"].append(run_child("disk-resume", size, setup, folder))
            cells = restored(runs["disk"][-1], "disk")["tokens"]  # the whole saved state
            sizes = {"file_bytes": file_bytes, "file_bytes_per_token": file_bytes / cells}
            runs["eval"].append(run_child("eval", size, setup, folder))
    med = {mode: statistics.median(r["ttft_s"] for r in rs) for mode, rs in runs.items()}
    note = restored(runs["ram"][0], "ram")
    for run in runs["disk"]:  # the whole saved conversation, as from RAM
        if restored(run, "disk")["tokens"] != note["tokens"]:
            raise SystemExit(f"the disk restore kept {restored(run, 'disk')['tokens']} tokens, "
                             f"RAM {note['tokens']}")
    texts = {mode: {r["text"] for r in rs} for mode, rs in runs.items()}
    return {
        "size": size, "prompt_tokens": runs["eval"][0]["prompt_tokens"],
        "restored_tokens": runs["ram"][0]["restored_tokens"],
        "ttft_s": med, "all_ttft_s": {m: [r["ttft_s"] for r in rs] for m, rs in runs.items()},
        "ram_speedup": med["eval"] / med["ram"], "disk_speedup": med["eval"] / med["disk"],
        # Restored cells are the saved ones bit for bit: RAM and disk answer alike.
        "ram_reply_equals_disk": len(texts["ram"] | texts["disk"]) == 1,
        "ram_reply_equals_eval": texts["ram"] == texts["eval"],
        "state_bytes": note["bytes"], "state_bytes_per_token": note["bytes"] / note["tokens"],
        "planner_bytes_per_token": runs["ram"][0]["planner_bytes_per_token"], **sizes,
        "notes": {m: rs[0]["notes"] for m, rs in runs.items()},
    }


def regenerate(size: int, reps: int, setup: Setup, base: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for mode in ("regen-on", "regen-off"):
        rs = []
        for _ in range(reps):
            with tempfile.TemporaryDirectory(dir=base) as tmp:
                rs.append(run_child(mode, size, setup, Path(tmp)))
        found[mode] = {"ttft_s": statistics.median(r["ttft_s"] for r in rs),
                       "prompt_tokens": rs[0]["prompt_tokens"],
                       "evaluated_tokens": rs[0]["evaluated_tokens"],
                       "restored_tokens": rs[0]["restored_tokens"]}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,3000,8000")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ctx", type=int, default=8448)
    parser.add_argument("--regen-size", type=int, default=3000)
    parser.add_argument("--model", help="a bundled model's name or a GGUF file")
    parser.add_argument("--budget", help="RAM,DISK: measure the budgets instead")
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child")
    parser.add_argument("--size", type=int)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    if args.child:
        model = model_path(args.model)
        work = (budget_child(args.child, args.conversations, args.ctx, args.dir, model,
                             args.budget)
                if args.child.startswith("budget") else
                child(args.child, args.size, args.ctx, args.dir, model))
        print(json.dumps(asyncio.run(work)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / TEXTS).write_text(json.dumps(paragraphs()))
        if args.budget:
            budgets(args, base)
        else:
            run(args, base)


def run(args: argparse.Namespace, base: Path) -> None:
    setup = Setup(args.ctx, args.model)
    path = model_path(args.model)
    results: dict[str, Any] = {"model": path.name, "ctx": args.ctx, "reps": args.reps,
                               "sizes": []}
    for size in (int(s) for s in args.sizes.split(",") if s):
        row = measure(size, args.reps, setup, base)
        results["sizes"].append(row)
        t = row["ttft_s"]
        print(f"{row['prompt_tokens']:>6} tokens: ram {t['ram'] * 1000:8.1f} ms  disk "
              f"{t['disk'] * 1000:8.1f} ms  eval {t['eval'] * 1000:8.1f} ms  "
              f"ram {row['ram_speedup']:.1f}x disk {row['disk_speedup']:.1f}x  "
              f"{row['file_bytes_per_token']:.0f} B/token on disk", flush=True)
    if args.regen_size:
        results["regenerate"] = regen = regenerate(args.regen_size, args.reps, setup, base)
        print(f"regenerate {regen['regen-on']['prompt_tokens']} tokens: evaluated "
              f"{regen['regen-on']['evaluated_tokens']} in {regen['regen-on']['ttft_s']:.3f} s "
              f"(cache off: {regen['regen-off']['evaluated_tokens']} in "
              f"{regen['regen-off']['ttft_s']:.3f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
