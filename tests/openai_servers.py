"""Real HTTP servers on 127.0.0.1 for the OpenAI backend's tests.

``LlamaCppServer``: llama-cpp-python's own OpenAI-compatible server on the bundled
model, as a subprocess. ``ScriptedServer``: a small stdlib HTTP server for what a
healthy server never does (stall mid-reply), answering the model list like any
OpenAI server. ``HostileServer``: what a broken or hostile one does (keep-alives and
no token, tokens past max_tokens, a refused key). All listen on loopback only and
stop by themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

import httpx

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class LlamaCppServer:
    """``python -m llama_cpp.server`` on one model; ``base_url`` ends in /v1."""

    def __init__(self, model: Path, log: Path, api_key: str | None = None,
                 n_ctx: int = 1024) -> None:
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}/v1"
        self.log = log
        self.api_key = api_key
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
               "--host", HOST, "--port", str(self.port), "--n_ctx", str(n_ctx),
               "--n_threads", "2", "--n_threads_batch", "2", "--chat_format", "gemma"]
        if api_key is not None:
            cmd += ["--api_key", api_key]
        # Passive OpenMP threads: spinning ones would slow every other process here.
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     env=env)

    def wait_ready(self, timeout: float = 120.0) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base_url}/models", headers=headers,
                             timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("llama_cpp.server did not start in time")

    def log_text(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: the connection drops with no goodbye, as when a server crashes."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()


class ScriptedServer:
    """Answers /v1/models; /v1/chat/completions sends its first chunk then stalls for
    ``stall_s`` (bounded) before finishing. Counts the chat requests it got."""

    def __init__(self, stall_s: float = 4.0) -> None:
        self.stall_s = stall_s
        self.chat_requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [
                        {"id": "stalling-model", "object": "model", "owned_by": "test"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                if self.path != "/v1/chat/completions":
                    self._json(404, {"error": {"message": "not found"}})
                    return
                server.chat_requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                first = {"choices": [{"index": 0, "delta": {"content": "Hello"},
                                      "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(first)}\n\n".encode())
                self.wfile.flush()
                time.sleep(server.stall_s)
                with contextlib.suppress(OSError):  # the client gave up, as it should
                    self.wfile.write(b"data: [DONE]\n\n")

            def _json(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://{HOST}:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class HostileServer:
    """A server that misbehaves on purpose, each ``chat`` mode one way a real server
    (or a hostile one) can: ``keepalive`` sends SSE comments and never a token;
    ``token-then-keepalive`` sends one token, then only comments; ``overrun`` streams
    tokens without end, whatever max_tokens says; ``endless-line`` starts a line and never
    ends it, sending bytes as fast as it can; ``401`` refuses the key. ``models``
    is the status of the model list (401: the key refused there already). With
    ``kvchat``, it passes for ``kvchat serve`` (``/kvchat/v1/info``) and misbehaves the
    same ways in its typed events on ``/kvchat/v1/chat``: ``queued`` and ``progress``
    events stand for the keep-alives. Every loop ends by itself after ``give_up_s``, or
    when the client hangs up; ``chunks_sent`` and ``hung_up`` say which."""

    def __init__(self, chat: str, models: int = 200, give_up_s: float = 60.0,
                 kvchat: bool = False) -> None:
        self.chat, self.models, self.give_up_s = chat, models, give_up_s
        self.kvchat = kvchat
        self.chunks_sent = 0
        self.hung_up = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/kvchat/v1/info" and server.kvchat:
                    self._json(200, KVCHAT_INFO)
                elif self.path != "/v1/models":
                    self._json(404, {"error": {"message": "not found"}})
                elif server.models != 200:
                    self._json(server.models, {"error": {"message": "invalid api key"}})
                else:
                    self._json(200, {"object": "list", "data": [
                        {"id": "hostile-model", "object": "model", "owned_by": "test"}]})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if server.chat == "401":
                    self._json(401, {"error": {"message": "invalid api key"}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    server.stream(self.wfile)
                except OSError:  # the client hung up, as it should
                    server.hung_up.set()

            def _json(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://{HOST}:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def stream(self, out: IO[bytes]) -> None:
        until = time.monotonic() + self.give_up_s
        chunk = {"choices": [{"index": 0, "delta": {"content": "ha"}, "finish_reason": None}]}
        token, keepalive = f"data: {json.dumps(chunk)}\n\n".encode(), b": keep-alive\n\n"
        if self.kvchat:  # one JSON event a line, as kvchat serve writes them
            token = b'{"type": "token", "text": "ha", "token_ids": [7]}\n'
            keepalive = (b'{"type": "queued", "position": 1, "queued": 1, "in_flight": 1}\n'
                         b'{"type": "progress", "completion_tokens": 1, "tokens_per_s": 1.0}\n')
        if self.chat == "token-then-keepalive":
            out.write(token)
            self.chunks_sent += 1
        if self.chat == "endless-line":
            out.write(b'{"type": "token", "text": "' if self.kvchat else b"data: x")
        while time.monotonic() < until:
            if self.chat == "endless-line":
                out.write(b"x" * 65536)
                self.chunks_sent += 1
            elif self.chat == "overrun":
                out.write(token)
                self.chunks_sent += 1
                time.sleep(0.005)
            else:
                out.write(keepalive)
                time.sleep(0.2)
            out.flush()

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


KVCHAT_INFO = {"model": "hostile-model", "memory": [], "model_loaded": {
    "type": "model_loaded", "path": "hostile.gguf", "name": "hostile-model",
    "architecture": "llama", "description": "a hostile kvchat serve", "n_params": None,
    "file_bytes": None, "weights_bytes": None, "n_vocab": None, "n_ctx": 512,
    "n_ctx_train": None, "n_layers": None, "n_gpu_layers": None, "backend": "CPU",
    "chat_format": "gguf-template", "kv_bytes": None, "load_s": 0.0}}
"""What ``/kvchat/v1/info`` answers when the server passes for kvchat serve."""
