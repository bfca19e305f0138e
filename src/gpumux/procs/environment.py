"""The environment a backend child process gets.

Owns: the allow-list of variables inherited from gpumux's own environment, and the
rules that keep credentials out of children.
Does not: decide per-model values such as `CUDA_VISIBLE_DEVICES` or
`VLLM_SERVER_DEV_MODE` (the caller passes them in `extra`). Pure: no I/O, no logging.

Order of application:
1. From `parent_env`, keep only allow-listed names, minus anything that looks like a
   credential (`AWS_*`, a name in `secret_names`, or one containing SECRET, PASSWORD
   or TOKEN). So `HF_TOKEN` in gpumux's environment does not reach a child unless the
   caller lists it in `passthrough`.
2. Apply `model_env` (the model's `env` from the config), then `extra`. These win over
   inherited values and may set any name, including one containing TOKEN: the
   operator asked for it explicitly.
3. Except: `AWS_*` and the names in `secret_names` (gpumux's own API keys and admin
   token) are removed even from `model_env`, `extra` and `passthrough`. A backend
   never needs gpumux's object-store credentials or its client secrets, and a config
   typo must not leak them. `rejected_names()` reports such names so the caller can warn.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

ALLOWED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TERM",
        "PYTHONPATH",
        "PYTHONUNBUFFERED",
        "LD_LIBRARY_PATH",
        "XDG_CACHE_HOME",
        "XDG_RUNTIME_DIR",
    }
)

ALLOWED_PREFIXES = (
    "LC_",
    "VLLM_",
    "CUDA_",
    "NCCL_",
    "NVIDIA_",
    "HF_",
    "HUGGING_FACE_",
    "TRANSFORMERS_",
    "TORCH",
    "OMP_",
    "MKL_",
    "KMP_",
    "TRITON_",
    "MOCK_VLLM_",
)

# Substrings (upper-cased comparison) that mark an inherited variable as a credential.
SECRET_MARKERS = ("SECRET", "PASSWORD", "TOKEN")

# Never passed to a child, whatever the source.
FORBIDDEN_PREFIXES = ("AWS_",)


def child_environment(
    parent_env: Mapping[str, str],
    *,
    model_env: Mapping[str, str],
    secret_names: Collection[str],
    extra: Mapping[str, str],
    passthrough: Collection[str] = (),
) -> dict[str, str]:
    """The environment for a backend child (see the module docstring for the rules).

    `passthrough` names are copied from `parent_env` even when they are not on the
    allow-list or look like credentials (e.g. `HF_TOKEN` for gated models), but never
    when forbidden.
    """
    secrets = frozenset(secret_names)
    env = {
        name: value
        for name, value in parent_env.items()
        if _is_allowed(name) and not _looks_secret(name)
    }
    env.update((name, parent_env[name]) for name in passthrough if name in parent_env)
    env.update(model_env)
    env.update(extra)
    return {name: value for name, value in env.items() if not _is_forbidden(name, secrets)}


def rejected_names(names: Iterable[str], *, secret_names: Collection[str]) -> list[str]:
    """Which of `names` (e.g. a model's `env` keys) `child_environment` will drop."""
    secrets = frozenset(secret_names)
    return sorted(name for name in names if _is_forbidden(name, secrets))


def _is_allowed(name: str) -> bool:
    return name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)


def _looks_secret(name: str) -> bool:
    upper = name.upper()
    return any(marker in upper for marker in SECRET_MARKERS)


def _is_forbidden(name: str, secrets: frozenset[str]) -> bool:
    # Upper-cased: some tools accept lower-case spellings of AWS variables.
    return name in secrets or name.upper().startswith(FORBIDDEN_PREFIXES)
