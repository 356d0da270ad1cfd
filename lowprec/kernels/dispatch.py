"""Picks a backend: the only place that knows both the CPU and the CUDA loops exist."""

from __future__ import annotations

from . import cpu

BACKENDS = ("cpu", "cuda", "auto")


def resolve_backend(backend: str) -> str:
    """'cpu' or 'cuda' for a requested backend; 'auto' takes a real GPU when there is one."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpu":
        return "cpu"
    from . import cuda

    if backend == "cuda":
        if not cuda.is_available():
            raise RuntimeError("backend='cuda' but no CUDA device is available "
                               "(set NUMBA_ENABLE_CUDASIM=1 before importing numba to use the simulator)")
        return "cuda"
    return "cuda" if cuda.is_available() and not cuda.is_simulator() else "cpu"


def _impl(name: str, backend: str):
    if backend == "cpu":
        return getattr(cpu, f"_{name}_cpu")
    from . import cuda

    return getattr(cuda, f"_{name}_cuda")


def round_array(backend, *args):
    _impl("round", resolve_backend(backend))(*args)


def encode_array(backend, *args):
    _impl("encode", resolve_backend(backend))(*args)


def decode_array(backend, *args):
    _impl("decode", resolve_backend(backend))(*args)
