"""Where memory goes: the budget bar, the layer split, planned against measured."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Static

from engine.events import KVUsage, MemorySnapshot, ModelLoaded
from tui.memory_view import LABELS, MemoryView, human_bytes
from tui.safe_text import visible_fields
from tui.widgets.live_text import LiveText
from tui.widgets.segment_bar import SegmentBar


class MemoryPane(Vertical):
    """Fed by model_loaded, memory and kv events; shows nothing it was not told."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.view = MemoryView()
        self.border_title = "Memory"
        self._legend_key: tuple[object, ...] | None = None

    def compose(self) -> ComposeResult:
        yield LiveText("waiting for the model…", id="mem-headline")
        yield SegmentBar(id="mem-bar")
        yield LiveText(id="mem-legend")
        yield Static(id="mem-layers")
        yield Static(id="mem-table")

    def on_resize(self) -> None:
        self._refresh_bar()

    def reset(self, headline: str) -> None:
        """Forget the model shown (another one is loading): ``headline`` until the
        next one's events come."""
        self.view = MemoryView()
        self._legend_key = None
        self.query_one(SegmentBar).segments = ()
        self.query_one("#mem-legend", LiveText).show("")
        for part in ("#mem-layers", "#mem-table"):
            self.query_one(part, Static).update("")
        self.query_one("#mem-headline", LiveText).show(headline)

    def show_model(self, info: ModelLoaded) -> None:
        self.view.info = visible_fields(info)  # names and notes from the model file
        self._refresh_view()

    def show_snapshot(self, snapshot: MemorySnapshot) -> None:
        self.view.add_snapshot(snapshot)
        self._refresh_view()

    def show_kv(self, kv: KVUsage) -> None:
        self.view.kv = kv
        # Only the bar and the headline move with the cache; the table stays.
        self._refresh_bar()

    def _refresh_view(self) -> None:
        self._refresh_bar()
        self._refresh_layers()
        self._refresh_table()

    def _refresh_bar(self) -> None:
        # Called for every KV sample the reply brings (several a second): work only
        # where what the pane shows has changed, and build the legend as plain text
        # (a Rich table costs milliseconds a render, and it is rendered twice).
        view = self.view
        segments = tuple(view.segments())
        self.query_one(SegmentBar).segments = segments
        used = sum(size for name, size in segments if name != "free")
        snap = view.measured or view.planned
        where = f" {snap.pool} ({snap.device})" if snap is not None else ""
        self.query_one("#mem-headline", LiveText).show(
            f"{human_bytes(used)} of {human_bytes(view.budget)}{where} · "
            f"{view.headroom:.0%} free")
        level = f"-{view.level}"
        if not self.has_class(level):  # a class change restyles the pane: only on change
            for name in ("-ok", "-low", "-critical"):
                self.set_class(name == level, name)
        # Two columns, so that a label never wraps away from its size.
        # A hidden pane has no width yet; showing it resizes it, which comes back here.
        width = self.query_one("#mem-legend", LiveText).size.width or 40
        columns = 2 if self.size.width >= 46 else 1
        # With a cache, its used and reserved shares are listed from the start, at
        # 0 B before the first reply: the legend keeps its height when they fill, and
        # the screen needs no layout as a reply's first tokens come in.
        has_kv = any(size for name, size in segments if name.startswith("kv-"))
        cells = tuple((name, f"{LABELS[name]} {human_bytes(size)}")
                      for name, size in segments
                      if size or (has_kv and name in ("kv-used", "kv-reserved")))
        key = (cells, columns, width, self.app.theme, level)
        if key == self._legend_key:
            return
        self._legend_key = key
        self.query_one("#mem-legend", LiveText).show(self._legend(cells, columns, width))

    def _legend(self, cells: tuple[tuple[str, str], ...], columns: int, width: int) -> Text:
        bar = self.query_one(SegmentBar)
        cell_width = max(4, width // columns)
        legend = Text(no_wrap=True, overflow="ellipsis")
        for i, (name, label) in enumerate(cells):
            if i and i % columns == 0:
                legend.append("\n")
            legend.append("■ ", bar.segment_style(name))
            label = label[:cell_width - 3]
            last = (i + 1) % columns == 0 or i == len(cells) - 1
            legend.append(label if last else label.ljust(cell_width - 2))
        return legend

    def _refresh_layers(self) -> None:
        info = self.view.info
        if info is None:
            return
        if info.n_layers is None:  # a server that does not say how the model is split
            self.query_one("#mem-layers", Static).update(Content(
                f"layers unknown · {info.backend} (served by {info.remote or 'a server'})"))
            return
        gpu = set(info.gpu_layers) if info.n_gpu_layers else set()
        bar = self.query_one(SegmentBar)
        gpu_style = bar.segment_style("weights-gpu")
        cpu_style = bar.segment_style("weights-cpu")
        text = Text(f"layers {info.n_layers}: {len(gpu)} GPU / {info.n_layers - len(gpu)} "
                    f"CPU · {info.backend} · KV {info.kv_type}"
                    f"{' · batch-invariant' if info.batch_invariant else ''}\n")
        for layer in range(info.n_layers):
            text.append("▮", gpu_style if layer in gpu else cpu_style)
        text.append(" output " + ("GPU" if info.output_on_gpu else "CPU"))
        if info.quant:  # what this quant was measured to cost, where kvchat quality ran
            text.append(f"\nweights {info.quant} · {info.quant_cost or 'quality not measured'}")
        if info.chat_format_note:  # the model's template failed: the user should know why
            text.append(f"\nchat format {info.chat_format}: {info.chat_format_note}")
        self.query_one("#mem-layers", Static).update(text)

    def _refresh_table(self) -> None:
        rows = self.view.planned_vs_measured()
        table = Table(box=None, padding=(0, 1), show_edge=False, expand=True)
        table.add_column("")
        table.add_column("planned", justify="right")
        table.add_column("measured", justify="right")
        table.add_column("", justify="right")
        for label, planned, measured in rows:
            ratio = f"{measured / planned:.2f}×" if planned and measured else ""
            table.add_row(label, human_bytes(planned), human_bytes(measured), ratio)
        snap = self.view.measured
        if snap is not None and snap.rss_bytes:
            table.add_row("process RSS", "", human_bytes(snap.rss_bytes), "")
        self.query_one("#mem-table", Static).update(table)
