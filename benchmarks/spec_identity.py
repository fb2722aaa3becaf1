"""Is greedy output with speculation token-for-token the output without it, here?

For each prompt: a greedy reply with speculation off, then with the given drafter, in
one process on one model; prints where they first differ (if they do), the acceptance
and the speed ratio. ``--drafter self`` drafts with a second copy of the target model:
every draft is what the target's one-token path chooses, so the rounds are long and
any difference is the batched kernels' doing (a strict test of batch invariance).

    python benchmarks/spec_identity.py [MODEL.gguf] [--gpu-layers N] [--tokens 200]
        [--drafter prompt-lookup|self] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "Write a long story about a lighthouse keeper and the sea.",
    "Explain how a hash map works, with an example in Python.",
    "List the planets of the solar system with one fact about each.",
    "Repeat this sentence five times: the quick brown fox jumps over the lazy dog.",
]


async def reply(engine: object, prompt: str, tokens: int) -> tuple[list[int], dict]:
    from engine.api import ChatMessage, ChatRequest

    out: list[int] = []
    done: dict = {}
    request = ChatRequest(messages=(ChatMessage(role="user", content=prompt),),
                          ignore_eos=True)
    async for event in engine.chat(request):  # type: ignore[attr-defined]
        if event.type == "token":
            out.extend(event.token_ids)
        elif event.type == "done":
            done = event.model_dump()
        elif event.type == "error":
            raise RuntimeError(event.message)
    return out, done


async def run(args: argparse.Namespace) -> dict:
    from engine.backends.local import LocalEngine
    from engine.config import KVCacheConfig, ModelConfig, SamplingConfig, SpeculativeConfig
    from engine.model.bundled import bundled_model_path

    path = Path(args.model) if args.model else bundled_model_path("gemma3-270m")
    model = ModelConfig(path=path, n_ctx=args.ctx, n_gpu_layers=args.gpu_layers,
                        greedy_in_graph=args.greedy_in_graph)
    sampling = SamplingConfig(temperature=0.0, max_tokens=args.tokens)
    modes = {"off": SpeculativeConfig(mode="off")}
    if args.drafter == "self":
        modes["spec"] = SpeculativeConfig(mode="draft", draft_model=path,
                                          max_draft=args.max_draft, adaptive=False)
    else:
        modes["spec"] = SpeculativeConfig(mode="prompt-lookup", max_draft=args.max_draft)
    results: dict[str, dict] = {}
    engines = {}
    for name, spec in modes.items():
        engines[name] = LocalEngine(model, sampling, KVCacheConfig(), spec)
        await engines[name].start()
    try:
        for prompt in PROMPTS:
            plain, pd = await reply(engines["off"], prompt, args.tokens)
            spec_out, sd = await reply(engines["spec"], prompt, args.tokens)
            first = next((i for i, (a, b) in enumerate(zip(plain, spec_out, strict=False))
                          if a != b), None)
            results[prompt] = {
                "identical": plain == spec_out, "first_difference": first,
                "plain_tok_s": round(pd["tokens_per_s"], 2),
                "spec_tok_s": round(sd["tokens_per_s"], 2),
                "ratio": round(sd["tokens_per_s"] / pd["tokens_per_s"], 3),
                "drafted": sd["drafted_tokens"], "accepted": sd["accepted_tokens"]}
            print(json.dumps({"prompt": prompt[:40], **results[prompt]}), file=sys.stderr)
    finally:
        for engine in engines.values():
            await engine.close()
    return {"model": str(path), "gpu_layers": args.gpu_layers, "drafter": args.drafter,
            "greedy_in_graph": args.greedy_in_graph,
            "tokens": args.tokens, "max_draft": args.max_draft, "prompts": results,
            "all_identical": all(r["identical"] for r in results.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--gpu-layers", type=int, default=0)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--max-draft", type=int, default=8)
    parser.add_argument("--drafter", choices=["prompt-lookup", "self"], default="prompt-lookup")
    parser.add_argument("--greedy-in-graph", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print(json.dumps({k: v for k, v in report.items() if k != "prompts"}))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
