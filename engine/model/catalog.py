"""The GGUF models that can be run here: found on disk, described from headers only.

Where kvchat looks, in this order: the two bundled models, the ``[models] dirs`` of
the config, LM Studio's model folders, Ollama's store, the Hugging Face hub cache and
llama.cpp's download cache. Finding a file reads no header (:func:`find_models`);
describing it reads the header and plans its memory, never the weights
(:func:`describe_models`). A file that cannot be read is a row marked broken, never
an exception.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ModelFileError

if TYPE_CHECKING:
    from engine.model.gguf_header import GGUFHeader
    from engine.model.memory.budget import Budget

MAX_DEPTH = 8
"""Folders below a search root that are walked; deeper files are not found."""

OLLAMA_REGISTRY = "registry.ollama.ai"
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
SOURCES = ("bundled", "config", "lmstudio", "ollama", "huggingface", "llama.cpp")


@dataclass(frozen=True)
class Found:
    """A model file found on disk, before its header is read."""

    name: str
    source: str
    """One of :data:`SOURCES`."""
    path: Path
    broken: str | None = None
    """Why this entry cannot be run (a manifest naming a missing blob), else None."""


def find_models(dirs: Sequence[str | Path] = (), *, bundled: bool = True) -> list[Found]:
    """Every model file in the known places and ``dirs``, with unique names. A file
    reached twice by the same path (a config dir that is also LM Studio's) is listed
    once, under its first source."""
    found: list[Found] = []
    if bundled:
        found.extend(_bundled())
    for root in dirs:
        found.extend(_walked(Path(root).expanduser(), "config"))
    for root in lmstudio_dirs():
        found.extend(_walked(root, "lmstudio"))
    found.extend(_ollama(ollama_dir()))
    found.extend(_huggingface(hf_hub_dir()))
    found.extend(_walked(llama_cache_dir(), "llama.cpp"))
    return _unique_names(_unique_paths(found))


def lmstudio_dirs() -> list[Path]:
    """``$LMSTUDIO_MODELS`` when set, else LM Studio's current and older folders."""
    env = os.environ.get("LMSTUDIO_MODELS")
    if env:
        return [Path(env).expanduser()]
    return [Path("~/.lmstudio/models").expanduser(),
            Path("~/.cache/lm-studio/models").expanduser()]


def ollama_dir() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or "~/.ollama/models").expanduser()


def hf_hub_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def llama_cache_dir() -> Path:
    return Path(os.environ.get("LLAMA_CACHE") or "~/.cache/llama.cpp").expanduser()


def _bundled() -> list[Found]:
    from engine.model.bundled import BUNDLED, bundled_model_path

    found: list[Found] = []
    for model in BUNDLED:
        try:
            found.append(Found(model.name, "bundled", bundled_model_path(model.name)))
        except ModelFileError as exc:
            found.append(Found(model.name, "bundled", Path(model.file_name), broken=str(exc)))
    return found


def gguf_files(root: Path, max_depth: int = MAX_DEPTH) -> Iterator[Path]:
    """The ``*.gguf`` files under ``root`` down to ``max_depth`` folders, sorted per
    folder, hidden folders skipped, following links to folders but never into the
    same folder twice (a link loop ends there)."""
    seen: set[tuple[int, int]] = set()
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            try:
                if entry.is_dir():
                    if depth < max_depth and not entry.name.startswith("."):
                        subdirs.append((Path(entry.path), depth + 1))
                elif entry.name.lower().endswith(".gguf"):
                    yield Path(entry.path)
            except OSError:
                continue
        stack.extend(reversed(subdirs))


def _walked(root: Path, source: str) -> list[Found]:
    return [Found(path.stem, source, path) for path in gguf_files(root)]


def _ollama(store: Path) -> list[Found]:
    manifests = store / "manifests"
    found = []
    # manifests/<host>/<namespace>/<model>/<tag>
    for path in sorted(manifests.glob("*/*/*/*")):
        if not path.is_file():
            continue
        host, namespace, model, tag = path.relative_to(manifests).parts
        name = f"{namespace}/{model}" if namespace != "library" else model
        if host != OLLAMA_REGISTRY:
            name = f"{host}/{namespace}/{model}"
        name = f"ollama:{name}:{tag}"
        blob, problem = _ollama_blob(store, path)
        if blob is not None or problem is not None:
            found.append(Found(name, "ollama", blob or path, broken=problem))
    return found


def _ollama_blob(store: Path, manifest: Path) -> tuple[Path | None, str | None]:
    """The model blob a manifest names, or why there is none; (None, None) for a
    manifest with no model layer (an adapter, a projector alone)."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        layers = data.get("layers", []) if isinstance(data, dict) else []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"unreadable manifest: {exc}"
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict) or layer.get("mediaType") != OLLAMA_MODEL_LAYER:
            continue
        digest = str(layer.get("digest", ""))
        algo, _, hexdigest = digest.partition(":")
        if algo != "sha256" or not hexdigest.isalnum():
            return None, f"manifest has a bad digest {digest!r}"
        blob = store / "blobs" / f"sha256-{hexdigest}"
        if not blob.is_file():
            return blob, f"blob missing: {blob}"
        return blob, None
    return None, None


def _huggingface(hub: Path) -> list[Found]:
    found = []
    for repo in sorted(hub.glob("models--*")):
        parts = repo.name.split("--", 2)
        if len(parts) != 3:
            continue
        repo_id = f"{parts[1]}/{parts[2]}"
        for snapshot in sorted((repo / "snapshots").glob("*")):
            for path in gguf_files(snapshot):
                relative = path.relative_to(snapshot).as_posix()
                found.append(Found(f"hf:{repo_id}/{relative}", "huggingface", path))
    return found


def _unique_paths(found: list[Found]) -> list[Found]:
    seen: set[str] = set()
    kept = []
    for item in found:
        key = os.path.normcase(os.path.abspath(item.path))
        if key not in seen or item.broken:
            seen.add(key)
            kept.append(item)
    return kept


def _unique_names(found: list[Found]) -> list[Found]:
    """A name two entries share is prefixed with each one's source; a clash left
    after that (two snapshots of one repo) gets ``#2``, ``#3``."""
    counts: dict[str, int] = {}
    for item in found:
        counts[item.name] = counts.get(item.name, 0) + 1
    renamed = []
    for item in found:
        name = item.name
        if counts[name] > 1 and not name.startswith(f"{item.source}:") \
                and not name.startswith(("ollama:", "hf:")):
            name = f"{item.source}:{name}"
        renamed.append(Found(name, item.source, item.path, item.broken))
    taken: dict[str, int] = {}
    unique = []
    for item in renamed:
        taken[item.name] = taken.get(item.name, 0) + 1
        name = item.name if taken[item.name] == 1 else f"{item.name}#{taken[item.name]}"
        unique.append(Found(name, item.source, item.path, item.broken))
    return unique


@dataclass(frozen=True)
class ModelRow:
    """One model as ``kvchat models`` lists it."""

    name: str
    source: str
    path: Path
    architecture: str | None = None
    parameters: int | None = None
    """From the tensors' element counts, else the file's ``general.*`` metadata."""
    quant: str | None = None
    """The file type (``Q4_K_M``), else the tensor type holding the most bytes."""
    file_bytes: int | None = None
    chat_template: bool = False
    verdict: str = ""
    """``fits``, ``N of M layers on GPU``, ``does not fit``, or ``broken: reason``."""

    @property
    def broken(self) -> bool:
        return self.verdict.startswith("broken:")


def describe_models(found: Sequence[Found], budget: Budget | None = None) -> list[ModelRow]:
    """A row per entry, its header read and its memory planned for ``budget``
    (None: no plan, the verdict left empty)."""
    return [describe(item, budget) for item in found]


def describe(item: Found, budget: Budget | None) -> ModelRow:
    from engine.model.gguf_header import read_gguf_header

    if item.broken:
        return ModelRow(item.name, item.source, item.path, verdict=f"broken: {item.broken}")
    try:
        header = read_gguf_header(item.path)
    except (ModelFileError, OSError, ValueError) as exc:
        reason = exc.message if isinstance(exc, ModelFileError) else str(exc)
        return ModelRow(item.name, item.source, item.path, verdict=f"broken: {reason}")
    return ModelRow(item.name, item.source, item.path, architecture=header.architecture,
                    parameters=parameter_count(header), quant=quant_name(header),
                    file_bytes=header.file_bytes,
                    chat_template=header.chat_template is not None,
                    verdict=_verdict(header, budget))


def parameter_count(header: GGUFHeader) -> int | None:
    total = 0
    for tensor in header.tensors:
        n = 1
        for dim in tensor.shape:
            n *= dim
        total += n
    if total:
        return total
    count = header.metadata.get("general.parameter_count")
    if isinstance(count, int) and count > 0:
        return count
    return _from_size_label(header.metadata.get("general.size_label"))


def _from_size_label(label: object) -> int | None:
    """``270M`` or ``8B`` as a count; None for anything else (``8x7B``)."""
    if not isinstance(label, str) or not label:
        return None
    scale = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}.get(label[-1].upper())
    try:
        number = float(label[:-1]) * scale if scale else math.nan
    except ValueError:
        return None
    # "nan", "inf" and "1e400" parse as floats too; none is a size.
    return int(number) if math.isfinite(number) and number > 0 else None


def quant_name(header: GGUFHeader) -> str | None:
    from gguf import LlamaFileType

    file_type = header.metadata.get("general.file_type")
    if isinstance(file_type, int):
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    by_type: dict[str, int] = {}
    for tensor in header.tensors:
        by_type[tensor.type_name] = by_type.get(tensor.type_name, 0) + tensor.n_bytes
    return max(by_type, key=lambda k: by_type[k]) if by_type else None


def _verdict(header: GGUFHeader, budget: Budget | None) -> str:
    from engine.model.memory.planner import plan_memory

    if budget is None:
        return ""
    try:
        plan = plan_memory(header, budget)
    except (ModelFileError, ValueError, KeyError, ZeroDivisionError) as exc:
        return f"cannot plan: {exc}"
    full = plan.n_gpu_layers == plan.n_layers + 1 or plan.pool == "cpu"
    if plan.fits and full:
        return "fits"
    if plan.fits and plan.pool == "gpu":
        return f"{plan.n_gpu_layers} of {plan.n_layers + 1} layers on GPU"
    return "does not fit"
