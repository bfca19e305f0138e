#!/usr/bin/env bash
# Install what bench/compare.py needs (idempotent; safe to re-run):
#   - wrk from Debian, the load generator (C, so the proxies are measured, not the client);
#   - nginx from Debian (only the binary is used: compare.py starts its own instance on
#     loopback with a generated config; the package's own service is stopped and disabled);
#   - the LiteLLM proxy (PyPI `litellm[proxy]`) in its own virtual environment, so none of
#     its ~100 dependencies reach the project's .venv.
#
# Environment:
#   LITELLM_VENV=/opt/gpumux-bench/litellm   where the LiteLLM venv lives
#   LITELLM_VERSION=1.102.4                  the pinned release: the newest whose pins resolve
#                                            from the package mirror here (later ones need a
#                                            newer certifi); 1.107.0 was a compromised
#                                            release and is refused
#   PYTHON=python3                           interpreter for the LiteLLM venv
set -euo pipefail

readonly LITELLM_VENV=${LITELLM_VENV:-/opt/gpumux-bench/litellm}
readonly LITELLM_VERSION=${LITELLM_VERSION:-1.102.4}
readonly PY=${PYTHON:-python3}

log() { printf '==> %s\n' "$*"; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

install_wrk() {
  if command -v wrk >/dev/null; then
    log "wrk present: $(wrk --version 2>&1 | head -1)"
  else
    log "installing wrk (Debian)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends wrk
  fi
}

install_nginx() {
  if command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]]; then
    log "nginx present: $(/usr/sbin/nginx -v 2>&1)"
  else
    log "installing nginx (Debian)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends nginx
  fi
  # The package starts a default site on :80 where an init system runs; the benchmark
  # never uses it, and nothing should listen beyond loopback on its behalf.
  if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
    as_root systemctl disable --now nginx >/dev/null 2>&1 || true
  fi
  if [[ -f /run/nginx.pid ]]; then
    as_root /usr/sbin/nginx -s quit 2>/dev/null || true
  fi
}

install_litellm() {
  if [[ $LITELLM_VERSION == 1.107.0 ]]; then
    echo "setup-compare.sh: litellm 1.107.0 was a compromised release; pick another" >&2
    return 1
  fi
  local have=""
  if [[ -x $LITELLM_VENV/bin/python ]]; then
    have=$("$LITELLM_VENV/bin/python" -c \
      'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null || true)
  fi
  if [[ $have == "$LITELLM_VERSION" && -x $LITELLM_VENV/bin/litellm ]]; then
    log "litellm $have present in $LITELLM_VENV"
    return
  fi
  if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
      python3-venv
  fi
  log "installing litellm[proxy]==$LITELLM_VERSION into $LITELLM_VENV"
  as_root mkdir -p "$(dirname "$LITELLM_VENV")"
  [[ -x $LITELLM_VENV/bin/python ]] || as_root "$PY" -m venv "$LITELLM_VENV"
  as_root "$LITELLM_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "litellm[proxy]==$LITELLM_VERSION"
  "$LITELLM_VENV/bin/litellm" --version >/dev/null 2>&1 || {
    echo "setup-compare.sh: $LITELLM_VENV/bin/litellm does not run" >&2
    return 1
  }
}

install_wrk
install_nginx
install_litellm
log "ready: wrk $(wrk --version 2>&1 | head -1 | cut -d' ' -f2), nginx $(/usr/sbin/nginx -v 2>&1 | sed 's/.*\///'), litellm $LITELLM_VERSION"
