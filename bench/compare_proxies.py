"""The proxies `bench/compare.py` puts beside gpumux: nginx and the LiteLLM proxy.

Owns: starting each in front of one backend port on loopback with a generated config
(nginx: Debian's binary, one worker, `proxy_buffering off` for SSE, upstream keep-alive;
LiteLLM: `litellm --config` from its own venv, one worker, the backend declared as an
OpenAI-compatible `hosted_vllm/` model), waiting until it answers, and stopping it.
Does not: measure anything or install them (`bench/setup-compare.sh` does).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.support.ports import free_port

MODEL = "m"
LITELLM_VENV = Path(os.environ.get("LITELLM_VENV", "/opt/gpumux-bench/litellm"))
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
READY_TIMEOUT_SECS = 90.0


def wait_http(url: str, timeout: float = READY_TIMEOUT_SECS) -> None:
    """Poll `url` until it answers 2xx, or raise after `timeout`."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 300:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout:g}s ({last})")


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 32m;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


@contextmanager
def nginx(backend_port: int, tmp: Path) -> Iterator[tuple[str, int]]:
    """nginx in front of the backend; yields (base URL, pid of its worker)."""
    port = free_port()
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, backend=backend_port, port=port))
    log = (tmp / "nginx.out").open("wb")
    process = subprocess.Popen(
        [NGINX, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


LITELLM_CONF = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: hosted_vllm/{model}
      api_base: http://127.0.0.1:{backend}/v1
      api_key: unused
litellm_settings:
  drop_params: true
  telemetry: false
  num_retries: 0
  request_timeout: 600
general_settings:
  disable_spend_logs: true
"""


@contextmanager
def litellm(backend_port: int, tmp: Path) -> Iterator[tuple[str, int]]:
    """The LiteLLM proxy in front of the backend; yields (base URL, its pid)."""
    program = LITELLM_VENV / "bin" / "litellm"
    if not program.exists():
        raise SystemExit(f"{program} is missing: run bench/setup-compare.sh first")
    port = free_port()
    (tmp / "litellm.yaml").write_text(LITELLM_CONF.format(model=MODEL, backend=backend_port))
    env = {
        "PATH": f"{LITELLM_VENV / 'bin'}:{os.environ.get('PATH', '')}",
        "HOME": str(tmp),
        # Offline: the bundled model-cost map, no telemetry, no update checks.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "DISABLE_SCHEMA_UPDATE": "True",
    }
    log = (tmp / "litellm.out").open("wb")
    process = subprocess.Popen(
        [
            str(program),
            "--config",
            str(tmp / "litellm.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
            "--telemetry",
            "False",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/health/liveliness")
        except RuntimeError:
            log.flush()
            sys.stderr.write((tmp / "litellm.out").read_text(errors="replace")[-3000:])
            raise
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def versions() -> dict[str, str]:
    found = {"nginx": "?", "litellm": "?"}
    with suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, timeout=10).stderr
        found["nginx"] = out.strip().rsplit("/", 1)[-1]
    with suppress(OSError, subprocess.SubprocessError):
        found["litellm"] = subprocess.run(
            [
                str(LITELLM_VENV / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
    return found
