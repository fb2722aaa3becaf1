"""The chart of ``kvchat quality --out``: file size against KL divergence, and against
the code pass rate when it was measured; drawn as ``bench/report.py`` draws its chart
(matplotlib, no display, SVG or PNG by the file's suffix)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from engine.files.atomic import SHARED_FILE, atomic_write

MiB = 1024**2


def write_quality_chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    cands = report["candidates"]
    ref = report["reference"]
    with_code = ref.get("code_pass_rate") is not None
    fig, axes = plt.subplots(1, 2 if with_code else 1, figsize=(10 if with_code else 6, 3.8),
                             squeeze=False)
    ax = axes[0][0]
    sizes = [c["file_bytes"] / MiB for c in cands]
    kls = [max(c["kl_mean"], 1e-6) for c in cands]
    ax.plot(sizes, kls, "o", color="#4c78a8")
    for c, x, y in zip(cands, sizes, kls, strict=True):
        ax.annotate(c["quant"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("mean KL divergence (nats)")
    ax.set_title(f"against {report['reference_label']}", fontsize=9)
    if with_code:
        ax = axes[0][1]
        points = [ref, *cands]
        xs = [p["file_bytes"] / MiB for p in points]
        ys = [100 * (p["code_pass_rate"] or 0.0) for p in points]
        ax.plot(xs[1:], ys[1:], "o", color="#f58518")
        ax.plot(xs[:1], ys[:1], "s", color="#54a24b", label="reference")
        for p, x, y in zip(points, xs, ys, strict=True):
            ax.annotate(p["quant"], (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        ax.set_ylim(-5, 105)
        ax.set_xlabel("file size (MiB)")
        ax.set_ylabel("code tasks passed (%)")
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title("small programming tasks, one greedy attempt", fontsize=9)
    model = Path(ref["name"]).stem
    fig.suptitle(f"{model}: what each quant costs ({report['text']['positions']} positions "
                 f"of {report['text']['name']})", fontsize=10)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format=path.suffix.lstrip(".") or "svg")
    plt.close(fig)
    atomic_write(path, image.getvalue(), mode=SHARED_FILE)
