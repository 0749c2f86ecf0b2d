"""The environment of every child process agentstack starts: an allow-list, never our own environment whole.

Our process holds secrets its children have no use for: `OPENAI_API_KEY`, `COHERE_API_KEY`, a
`AGENTSTACK_POSTGRES_URL` with its password, `PGPASSWORD`, cloud credentials. A model server that logs
its environment, or runs a hub repository's remote code, must not see them; nor should Postgres,
FalkorDB or the watchdog. So a child gets only what programs need to run (where programs and home
are, temporary files, locale and time zone) and the runtime variables of the GPU and ML stack, plus
what the caller adds on purpose: a spec's `env`, the placement's `CUDA_VISIBLE_DEVICES`.

Every child keeps, by name: PATH, HOME, USER, LOGNAME, TMPDIR, TZ, LANG, LANGUAGE, LD_LIBRARY_PATH, and by
prefix LC_* (locale). A model server (`model_server=True`) also keeps XDG_CACHE_HOME (where hub caches
default to), what it needs to download weights on a network with a proxy or its own CA (HTTP_PROXY,
HTTPS_PROXY, NO_PROXY in either case, SSL_CERT_FILE, SSL_CERT_DIR, REQUESTS_CA_BUNDLE), and by prefix:
CUDA_*, NVIDIA_*, NCCL_*, CUBLAS_* (GPU runtime); HF_*, HUGGINGFACE_*, HUGGING_FACE_*, TRANSFORMERS_*,
TOKENIZERS_* (the model hub and its cache: HF_TOKEN is passed to model servers only, since they download
gated weights with it); TORCH_*, PYTORCH_*, TRITON_*, OMP_*, MKL_* (kernels, allocator, threads);
VLLM_*, SGLANG_* (the servers' own). Postgres, FalkorDB and the watchdog get the first list only.

The sandbox that runs agents' code (`agentstack.graphs`) builds a stricter environment still (no GPU
or hub variables at all, its own HOME), so it does not use this allow-list.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["KEPT_NAMES", "KEPT_PREFIXES", "MODEL_SERVER_NAMES", "MODEL_SERVER_PREFIXES", "child_env"]

_PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
KEPT_NAMES: frozenset[str] = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "TZ", "LANG", "LANGUAGE", "LD_LIBRARY_PATH"}
)
KEPT_PREFIXES: tuple[str, ...] = ("LC_",)
MODEL_SERVER_NAMES: frozenset[str] = frozenset(
    {"XDG_CACHE_HOME", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"}
    | {*_PROXIES, *(name.lower() for name in _PROXIES)}
)
MODEL_SERVER_PREFIXES: tuple[str, ...] = (
    "CUDA_",
    "NVIDIA_",
    "NCCL_",
    "CUBLAS_",
    "HF_",
    "HUGGINGFACE_",
    "HUGGING_FACE_",
    "TRANSFORMERS_",
    "TOKENIZERS_",
    "TORCH_",
    "PYTORCH_",
    "TRITON_",
    "OMP_",
    "MKL_",
    "VLLM_",
    "SGLANG_",
)


def child_env(
    extra: Mapping[str, str] | None = None,
    *,
    model_server: bool = False,
    parent: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The allow-listed part of `parent` (default: this process's environment), then `extra` on top.

    `model_server` adds the GPU, hub, proxy and ML runtime variables a model server needs. `extra` is what
    the caller means the child to have (a spec's `env`, `CUDA_VISIBLE_DEVICES`, `LC_ALL=C`), so it is added
    whatever its names.
    """
    source = os.environ if parent is None else parent
    names = KEPT_NAMES | MODEL_SERVER_NAMES if model_server else KEPT_NAMES
    prefixes = KEPT_PREFIXES + MODEL_SERVER_PREFIXES if model_server else KEPT_PREFIXES
    kept = {name: value for name, value in source.items() if name in names or name.startswith(prefixes)}
    return {**kept, **(extra or {})}
