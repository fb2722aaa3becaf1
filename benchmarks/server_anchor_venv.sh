#!/usr/bin/env bash
# The Python for `kvchat bench --parallel --server-python`: a virtual environment under
# .artifacts/ (ignored by git) with llama-cpp-python's `server` extras from the package
# index, and the llama_cpp package kvchat's .venv already has (linked, not rebuilt), so
# the server runs the same llama.cpp build as kvchat. kvchat's .venv is left alone.
#   benchmarks/server_anchor_venv.sh      # prints the Python to pass to --server-python
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="$ROOT/.artifacts/lcp-server"
PY="$DIR/venv/bin/python"
if ! "$PY" -c "import llama_cpp.server.app" 2>/dev/null; then
  mkdir -p "$DIR/pkgs"
  [[ -x "$PY" ]] || "$ROOT/.venv/bin/python" -m venv "$DIR/venv"
  # The extras llama-cpp-python 0.3.36 declares for `server`, and its own needs.
  "$DIR/venv/bin/pip" install -q "uvicorn>=0.22.0" "fastapi>=0.100.0" \
    "pydantic-settings>=2.0.1" "sse-starlette>=1.6.1" "starlette-context<0.4,>=0.3.6" \
    "PyYAML>=5.1" numpy typing-extensions diskcache jinja2 >&2
  pkg=$("$ROOT/.venv/bin/python" -c "import llama_cpp, os; print(os.path.dirname(llama_cpp.__file__))")
  ln -sfn "$pkg" "$DIR/pkgs/llama_cpp"
  site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$DIR/pkgs" > "$site/kvchat_anchor_pkgs.pth"
  "$PY" -c "import llama_cpp.server.app" >&2
fi
echo "$PY"
