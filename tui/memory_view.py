"""What the memory pane shows, worked out from engine events (no widgets here).

llama.cpp names its buffers ``model CUDA0``, ``model CPU_Mapped``, ``KV CPU``,
``compute CUDA_Host``...; the pane groups them into weights on the GPU, weights on
the CPU, KV cache and compute buffers, and splits the KV cache into the cells that
hold tokens, the cells set aside for the reply in flight, and the idle rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.events import KVUsage, MemorySnapshot, ModelLoaded

CATEGORIES = ("weights-gpu", "weights-cpu", "kv", "compute")
LABELS = {"weights-gpu": "weights GPU", "weights-cpu": "weights CPU", "kv": "KV cache",
          "compute": "compute", "kv-used": "KV used", "kv-reserved": "KV reserved",
          "kv-idle": "KV idle", "free": "free"}

WARN_HEADROOM = 0.10
"""Below this share of the budget free, the bar turns to the warning colour."""
CRITICAL_HEADROOM = 0.03


def _on_cpu(device: str) -> bool:
    # Host buffers (CUDA_Host, Metal's shared pool is reported as its device) live in RAM.
    return device.startswith("CPU") or device.endswith("_Host")


def category(buffer: str) -> str:
    kind, _, device = buffer.partition(" ")
    if kind == "model":
        return "weights-cpu" if _on_cpu(device) else "weights-gpu"
    if kind == "KV":
        return "kv"
    return "compute"


def by_category(buffers: dict[str, int]) -> dict[str, int]:
    totals = dict.fromkeys(CATEGORIES, 0)
    for name, size in buffers.items():
        totals[category(name)] += size
    return totals


@dataclass
class MemoryView:
    """Everything known so far; each event fills in its part."""

    info: ModelLoaded | None = None
    planned: MemorySnapshot | None = None
    measured: MemorySnapshot | None = None
    kv: KVUsage | None = None
    notes: list[str] = field(default_factory=list)

    def add_snapshot(self, snapshot: MemorySnapshot) -> None:
        if snapshot.stage == "planned":
            self.planned = snapshot
        else:
            self.measured = snapshot

    @property
    def buffers(self) -> dict[str, int]:
        """Measured buffers where there are any, else the plan's."""
        if self.measured is not None:
            return self.measured.buffers
        if self.info is not None and self.info.buffers:
            return self.info.buffers
        return self.planned.buffers if self.planned is not None else {}

    @property
    def budget(self) -> int:
        """The budget the plan was made for; without a plan, what is allocated."""
        snap = self.measured or self.planned
        if snap is not None and snap.budget_bytes:
            return snap.budget_bytes
        return sum(self.buffers.values())

    def segments(self) -> list[tuple[str, int]]:
        """(segment, bytes) for the bar, in order, summing to the budget (or more, when
        the allocation overruns it)."""
        cats = by_category(self.buffers)
        kv_total = cats["kv"]
        kv_used = kv_reserved = 0
        if self.kv is not None and kv_total:
            kv_used = min(kv_total, self.kv.used_bytes)
            kv_reserved = min(kv_total - kv_used,
                              self.kv.reserved_cells * self.kv.bytes_per_cell)
        allocated = sum(cats.values())
        return [("weights-gpu", cats["weights-gpu"]), ("weights-cpu", cats["weights-cpu"]),
                ("kv-used", kv_used), ("kv-reserved", kv_reserved),
                ("kv-idle", kv_total - kv_used - kv_reserved), ("compute", cats["compute"]),
                ("free", max(0, self.budget - allocated))]

    @property
    def headroom(self) -> float:
        """Free share of the budget, 0..1."""
        budget = self.budget
        if not budget:
            return 1.0
        return max(0.0, budget - sum(self.buffers.values())) / budget

    @property
    def level(self) -> str:
        """ok, low or critical: how close the allocation is to the budget."""
        fits = all(s.fits for s in (self.planned, self.measured) if s is not None)
        if not fits or self.headroom < CRITICAL_HEADROOM:
            return "critical"
        return "low" if self.headroom < WARN_HEADROOM else "ok"

    def planned_vs_measured(self) -> list[tuple[str, int | None, int | None]]:
        """(category, planned bytes, measured bytes) with a total row."""
        planned = by_category(self.planned.buffers) if self.planned is not None else None
        measured_buffers = (self.measured.buffers if self.measured is not None
                            else self.info.buffers if self.info is not None else {})
        measured = by_category(measured_buffers) if measured_buffers else None
        rows: list[tuple[str, int | None, int | None]] = [
            (LABELS[c], planned[c] if planned else None, measured[c] if measured else None)
            for c in CATEGORIES]
        rows.append(("total", sum(planned.values()) if planned else None,
                     sum(measured.values()) if measured else None))
        return rows


def human_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def shares(sizes: list[int], width: int) -> list[int]:
    """Split ``width`` characters in proportion to ``sizes``: largest remainder, and at
    least one character for every non-zero size, so a small KV cache stays visible."""
    total = sum(sizes)
    if total <= 0 or width <= 0:
        return [0] * len(sizes)
    exact = [s * width / total for s in sizes]
    cells = [max(1, int(e)) if s > 0 else 0 for s, e in zip(sizes, exact, strict=True)]
    while sum(cells) > width:
        i = max(range(len(cells)), key=lambda k: cells[k] - exact[k])
        cells[i] -= 1
    order = sorted(range(len(sizes)), key=lambda k: exact[k] - cells[k], reverse=True)
    for i in order:
        if sum(cells) >= width:
            break
        if sizes[i] > 0:
            cells[i] += 1
    return cells
