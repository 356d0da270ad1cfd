"""sum, dot and matmul that follow an :class:`~lowprec.accumulation.Accumulation` exactly.

Every result is a pure function of the inputs, the description and the seed:
the same bits on CPU and CUDA and on any number of threads. BLAS is never
used (its summation order is unspecified). The inputs are first rounded
(nearest-even) to the description's input formats; the result has the dtype
``numpy.result_type(a, b)`` and its values are values of the output format.

Stochastic accumulation draws its random bits from the counter-based
generator (:mod:`lowprec.rng`); rounding event ``slot`` of term ``k`` of the
output element with flat index ``o`` (C order over the output's shape) uses
counter ``offset + (o*K + k)*8 + slot`` (see ``kernels/accum.py``). A call
consumes ``8 * K * output size`` counters, so a :class:`~lowprec.RandomStream`
seed gives fresh, reproducible bits call after call.
"""

from __future__ import annotations

import builtins
from functools import lru_cache

import numpy as np

from .accumulation import ORDERS, Accumulation, get_accumulation
from .core import as_float_input, round_to
from .formats import get_format
from .kernels import accum as _accum
from .kernels import dispatch
from .matrix_units import block_unit_array, get_matrix_unit, is_matrix_unit
from .rng import resolve_seed

__all__ = ["matmul", "dot", "sum", "prepare_matmul", "PreparedMatmul"]


def _as_input(x, name: str) -> np.ndarray:
    """The public API's input policy (core.as_float_input): float32/float64 arrays as they are, numbers,
    lists and integers as float64."""
    return as_float_input(x, name)[0]


def _rounded(x: np.ndarray, fmt, backend: str) -> np.ndarray:
    """x rounded (nearest-even) to its input format, as float64 (exact)."""
    return np.asarray(round_to(x, fmt, backend=backend), dtype=np.float64)


def _kernel_args(acc: Accumulation) -> tuple:
    pacc = acc.acc_format._kernel_params()
    has_prod = acc.product_format is not None
    pprod = acc.product_format._kernel_params() if has_prod else pacc
    pchunk = acc.chunk_format._kernel_params() if acc.chunk_format is not None else pacc
    return (has_prod, pprod, acc.fused, pacc, int(acc.acc_rounding), ORDERS.index(acc.order),
            int(acc.chunk or 0), pchunk, acc.compensated, acc.out_format._kernel_params())


def _check_out(acc: Accumulation, dtype) -> None:
    if not acc.out_format.fits_in(dtype):
        raise ValueError(f"out_format {acc.out_format.name} has values that {np.dtype(dtype).name} cannot hold; "
                         "pass float64 inputs")


def _run(a2, bt2, ia, ib, M, N, K, acc, seed, backend) -> np.ndarray:
    """The flat float64 result of the (batched) product of row blocks ``a2`` and ``bt2``."""
    n_out = ia.size * M * N
    out = np.empty(n_out, dtype=np.float64)
    if acc.is_stochastic:
        k0, k1, off = resolve_seed(seed, n_out * K * _accum.NSLOT)
    else:
        k0 = k1 = off = 0
    if n_out == 0:
        return out
    dispatch.matmul_array(backend, a2, bt2, np.ascontiguousarray(ia, dtype=np.int64),
                          np.ascontiguousarray(ib, dtype=np.int64), out, np.int64(M), np.int64(N), np.int64(K),
                          *_kernel_args(acc), np.uint32(k0), np.uint32(k1), np.int64(off), np.int64(acc.random_bits))
    return out


_FP32 = get_format("fp32")
_F32 = np.dtype(np.float32)


def _rounded32(x: np.ndarray, fmt, backend: str) -> np.ndarray:
    """x rounded (nearest-even) to a format that fits in float32, as float32 (exact)."""
    r = round_to(x, fmt, backend=backend)  # float32 in, float32 out; float64 in: values that float32 holds
    return r if r.dtype == np.float32 else r.astype(np.float32)


def _matmul_fp32(A, B, ia, ib, M, N, K, acc, kind, backend) -> np.ndarray:
    """The register-tiled float32 kernel (kernels/linalg_fp32.py) on the operands A (..., M, K), B (..., K, N),
    batch by batch; same bits as _run. Everything stays float32: the kernel reads both operands as they lie.
    Returns float32 (batches, M, N)."""
    from .kernels import linalg_fp32

    a3 = _rounded32(A, acc.a_format, backend).reshape(-1, M, K)
    b3 = _rounded32(B, acc.b_format, backend).reshape(-1, K, N)
    out = np.empty((ia.size, M, N), dtype=np.float32)
    for bi in range(ia.size):  # (NaNs come back canonical, as the scalar kernels give them)
        out[bi] = linalg_fp32._matmul_fp32_cpu(a3[ia[bi]], b3[ib[bi]], kind == "fma")
    if acc.out_format != _FP32:  # float32 values rounded once (as from float64, where float32 holds the format)
        return round_to(out if acc.out_format.fits_in(np.float32) else out.astype(np.float64), acc.out_format)
    return out


class PreparedMatmul:
    """:func:`matmul` of 2-D float32 operands under one accumulation, with its checks made once.

    Made by :func:`prepare_matmul` (cached). For code that multiplies many small matrices in a loop
    (the training runtime's forward and backward products): the result is ``matmul(a, b,
    accumulation, seed=seed)`` bit for bit, as a C-contiguous float32 (M, N) array.

    Attributes
    ----------
    accumulation : Accumulation
    backend : str
        "cpu" or "cuda".
    kernel : str
        What computes it: "fp32-fma" / "fp32-muladd" (the float32 tile kernel: IEEE float32 arithmetic
        *is* this accumulation; any size), else "general" (the accumulation kernels, as matmul picks them).

    Examples
    --------
    >>> import numpy as np
    >>> from lowprec.linalg import prepare_matmul
    >>> mm = prepare_matmul("fp16-fp32")
    >>> mm.kernel
    'fp32-fma'
    >>> mm(np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)).tolist()[0]
    [3.0, 3.0, 3.0, 3.0]
    """

    __slots__ = ("accumulation", "backend", "kernel", "_fast")

    def __init__(self, accumulation, backend):
        self.accumulation = acc = get_accumulation(accumulation)
        self.backend = dispatch.resolve_backend(backend)
        if not acc.out_format.fits_in(np.float32):
            raise ValueError(f"out_format {acc.out_format.name} has values that float32 cannot hold; "
                             "use matmul with float64 operands")
        self._fast = dispatch.fp32_tile(acc, self.backend)
        self.kernel = f"fp32-{self._fast}" if self._fast else "general"

    def __repr__(self) -> str:
        return f"PreparedMatmul({self.accumulation.name!r}, backend={self.backend!r}, kernel={self.kernel!r})"

    def __call__(self, a, b, *, seed=None, inputs_rounded: bool = False) -> np.ndarray:
        """``a @ b`` for float32 ``a`` (M, K) and ``b`` (K, N), any strides.

        ``inputs_rounded=True``: the caller vouches that the operands' values are already values of the
        accumulation's input formats (rounding them again would change nothing), and the rounding pass
        is skipped. ``seed`` as :func:`matmul` (stochastic accumulation)."""
        for name, x in (("a", a), ("b", b)):
            if type(x) is not np.ndarray or x.dtype != _F32 or x.ndim != 2:
                raise TypeError(f"{name} must be a 2-D float32 ndarray, got "
                                f"{f'{x.ndim}-D {x.dtype}' if isinstance(x, np.ndarray) else type(x).__name__}")
        M, K = a.shape
        if b.shape[0] != K:
            raise ValueError(f"matmul shape mismatch: a has shape {a.shape} and b has shape {b.shape}")
        N = b.shape[1]
        acc = self.accumulation
        if not inputs_rounded:
            a, b = _rounded32(a, acc.a_format, self.backend), _rounded32(b, acc.b_format, self.backend)
        if self._fast is None:
            one = np.zeros(1, dtype=np.int64)
            return _run(a.astype(np.float64), np.ascontiguousarray(b.T, dtype=np.float64), one, one, M, N, K, acc,
                        seed, self.backend).reshape(M, N).astype(np.float32)
        from .kernels import linalg_fp32

        out = linalg_fp32._matmul_fp32_cpu(a, b, self._fast == "fma")  # NaNs canonical, as the scalar kernels give
        if acc.out_format != _FP32:
            return round_to(out.astype(np.float64), acc.out_format).astype(np.float32)
        return out


@lru_cache(maxsize=256)
def _prepared_matmul(accumulation, backend) -> PreparedMatmul:
    return PreparedMatmul(accumulation, backend)


def prepare_matmul(accumulation="fp32", backend: str = "auto") -> PreparedMatmul:
    """A :class:`PreparedMatmul` for ``accumulation`` (an Accumulation or a preset name), cached.

    Raises
    ------
    ValueError
        Unknown accumulation or backend; an output format float32 cannot hold.
    """
    return _prepared_matmul(accumulation, backend)


def _batch_index(batch_shape, own_shape) -> np.ndarray:
    n = int(np.prod(own_shape, dtype=np.int64))
    return np.broadcast_to(np.arange(n, dtype=np.int64).reshape(own_shape), batch_shape).ravel()


def _matmul_shapes(a_in: np.ndarray, b_in: np.ndarray):
    """matmul's shape checks: (A, B, M, K, N, batch), the operands as stacks of matrices (a 1-D ``a`` a row,
    a 1-D ``b`` a column) and the broadcast batch shape."""
    if a_in.ndim == 0 or b_in.ndim == 0:
        raise ValueError(f"matmul needs arrays of at least 1 dimension, got a with shape {a_in.shape} "
                         f"and b with shape {b_in.shape}")
    A = a_in[None, :] if a_in.ndim == 1 else a_in
    B = b_in[:, None] if b_in.ndim == 1 else b_in
    M, K = A.shape[-2:]
    Kb, N = B.shape[-2:]
    if K != Kb:
        raise ValueError(f"matmul shape mismatch: a has shape {a_in.shape} and b has shape {b_in.shape}; "
                         f"a's last dimension ({K}) must equal b's {'only' if b_in.ndim == 1 else 'second-to-last'} "
                         f"dimension ({Kb})")
    try:
        batch = np.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    except ValueError:
        raise ValueError(f"matmul batch dimensions do not broadcast: a has shape {a_in.shape} and b has shape "
                         f"{b_in.shape}") from None
    return A, B, M, K, N, batch


def matmul(a, b, accumulation="fp32", *, seed=None, backend: str = "auto", c=None):
    """Matrix product ``a @ b`` (``+ c``) accumulated exactly as ``accumulation`` says.

    Parameters
    ----------
    a : array_like, float32 or float64, shape (..., M, K) or (K,)
    b : array_like, float32 or float64, shape (..., K, N) or (K,)
        Batch dimensions broadcast as in ``numpy.matmul``; a 1-D operand is
        a vector (its dimension is dropped from the result).
    accumulation : Accumulation, MatrixUnit or str
        A description or a preset name (``lowprec.accumulation.PRESETS``, or a
        hardware matrix unit of ``lowprec.matrix_units.PRESETS``).
    seed : None, int, RandomStream or numpy Generator
        Random source for stochastic accumulation (ignored otherwise).
    backend : {"auto", "cpu", "cuda"}
    c : array_like or None
        Addend, broadcast to the result's shape and rounded (nearest-even) to
        the matrix unit's ``c_format``: the result is ``a @ b + c`` as the
        hardware computes ``D = A B + C``. Matrix units only (for now).

    Returns
    -------
    ndarray
        Shape as ``numpy.matmul``; dtype ``numpy.result_type(a, b)``; each
        element a value of the output format.

    Raises
    ------
    TypeError
        Non-float inputs (integer, complex, float16, object), unknown types.
    ValueError
        Mismatched shapes (the message shows both), 0-d operands, an output
        format the result dtype cannot hold.

    Examples
    --------
    >>> import numpy as np
    >>> from lowprec.linalg import matmul
    >>> a = np.array([[1.0, 2.0**-11, 2.0**-11]], dtype=np.float32)
    >>> b = np.ones((3, 1), dtype=np.float32)
    >>> float(matmul(a, b, "fp16")[0, 0]), float(matmul(a, b, "fp16-fp32")[0, 0])
    (1.0, 1.0009765625)
    """
    if is_matrix_unit(accumulation):  # hardware matrix units: lowprec.matrix_units
        return _matmul_matrix_unit(a, b, accumulation, c, backend)
    if c is not None:
        raise ValueError("the addend c is supported with matrix-unit accumulations only "
                         f"(lowprec.matrix_units.PRESETS), got accumulation={accumulation!r}")
    acc = get_accumulation(accumulation)
    backend = dispatch.resolve_backend(backend)
    a_in, b_in = _as_input(a, "a"), _as_input(b, "b")
    A, B, M, K, N, batch = _matmul_shapes(a_in, b_in)
    out_dtype = np.result_type(a_in, b_in)
    _check_out(acc, out_dtype)
    ia, ib = _batch_index(batch, A.shape[:-2]), _batch_index(batch, B.shape[:-2])
    fast = dispatch.fp32_tile(acc, backend) if M * N * K >= dispatch.FP32_TILE_MIN_WORK else None
    if fast is not None:
        out = _matmul_fp32(A, B, ia, ib, M, N, K, acc, fast, backend).reshape(batch + (M, N))
    else:
        a2 = _rounded(A, acc.a_format, backend).reshape(int(np.prod(A.shape[:-1], dtype=np.int64)), K)
        bt2 = np.swapaxes(_rounded(B, acc.b_format, backend), -1, -2).reshape(
            int(np.prod(B.shape[:-2], dtype=np.int64)) * N, K)
        out = _run(a2, bt2, ia, ib, M, N, K, acc, seed, backend).reshape(batch + (M, N))
    return _result(out, a_in, b_in, out_dtype)


def _result(out: np.ndarray, a_in: np.ndarray, b_in: np.ndarray, out_dtype) -> np.ndarray:
    """matmul's (batch..., M, N) product with a 1-D operand's dimension dropped, in the result dtype."""
    if a_in.ndim == 1:
        out = out[..., 0, :]
    if b_in.ndim == 1:
        out = out[..., 0]
    out = out.astype(out_dtype, copy=False)
    return out[()] if out.ndim == 0 else out


def dot(a, b, accumulation="fp32", *, seed=None, backend: str = "auto", c=None):
    """Dot products over the last axis: ``sum_k a[..., k] * b[..., k]`` (``+ c``).

    1-D inputs give a scalar; higher-dimensional inputs broadcast their
    leading dimensions (like ``numpy.vecdot``). Arguments, counters and
    errors as :func:`matmul`; the term order is k = 0, 1, ..., K-1; ``c``
    (matrix units only) broadcasts to the result's shape.

    Examples
    --------
    >>> import numpy as np
    >>> from lowprec.linalg import dot
    >>> x = np.array([2.0**24, 1.0, 1.0])
    >>> float(dot(x, np.ones(3), "fp32")), float(dot(x, np.ones(3), "fp32", backend="cpu"))
    (16777216.0, 16777216.0)
    """
    acc = accumulation if is_matrix_unit(accumulation) else get_accumulation(accumulation)
    backend = dispatch.resolve_backend(backend)
    a_in, b_in = _as_input(a, "a"), _as_input(b, "b")
    if a_in.ndim == 0 or b_in.ndim == 0:
        raise ValueError(f"dot needs arrays of at least 1 dimension, got a with shape {a_in.shape} "
                         f"and b with shape {b_in.shape}")
    if a_in.shape[-1] != b_in.shape[-1]:
        raise ValueError(f"dot shape mismatch: a has shape {a_in.shape} and b has shape {b_in.shape}; "
                         "their last dimensions must be equal")
    try:
        np.broadcast_shapes(a_in.shape[:-1], b_in.shape[:-1])
    except ValueError:
        raise ValueError(f"dot leading dimensions do not broadcast: a has shape {a_in.shape} and b has shape "
                         f"{b_in.shape}") from None
    cm = None if c is None else np.asarray(c)[..., None, None]
    out = matmul(a_in[..., None, :], b_in[..., :, None], acc, seed=seed, backend=backend, c=cm)
    out = out[..., 0, 0]
    return out[()] if out.ndim == 0 else out


def sum(x, axis=None, accumulation="fp32", *, seed=None, backend: str = "auto"):  # noqa: A001
    """Sum of ``x`` along ``axis`` (all elements when None), accumulated as described.

    The terms are the elements of ``x`` rounded to ``a_format`` (the product
    with an exact 1; ``b_format`` is not used), in increasing index order
    along the reduced axes (C order when several are reduced).

    Parameters
    ----------
    x : array_like, float32 or float64
    axis : None, int or tuple of ints
    accumulation, seed, backend
        As :func:`matmul`.

    Returns
    -------
    ndarray or numpy scalar
        ``x``'s dtype; the reduced axes removed.

    Examples
    --------
    >>> import numpy as np
    >>> from lowprec.linalg import sum
    >>> x = np.array([1.0, 2.0**-11, 2.0**-11, 2.0**-11], dtype=np.float32)
    >>> float(sum(x, accumulation="fp16")), float(sum(x, accumulation="fp16-pairwise"))
    (1.0, 1.0009765625)
    """
    acc = get_accumulation(accumulation)
    backend = dispatch.resolve_backend(backend)
    xin = _as_input(x, "x")
    _check_out(acc, xin.dtype)
    if axis is None:
        axes = tuple(range(xin.ndim))
    else:
        raw = axis if isinstance(axis, tuple) else (axis,)
        axes = []
        for ax in raw:
            if isinstance(ax, bool) or not isinstance(ax, (int, np.integer)):
                raise TypeError(f"axis must be None, an int or a tuple of ints, got {axis!r}")
            if not -xin.ndim <= ax < builtins.max(xin.ndim, 1):
                raise ValueError(f"axis {ax} is out of bounds for x with shape {xin.shape}")
            axes.append(int(ax) % builtins.max(xin.ndim, 1))
        if len(set(axes)) != len(axes):
            raise ValueError(f"repeated axis in {axis!r}")
        axes = tuple(axes)
    keep = tuple(i for i in range(xin.ndim) if i not in axes)
    moved = np.transpose(xin, keep + axes) if xin.ndim else xin.reshape(())
    out_shape = tuple(xin.shape[i] for i in keep)
    K = int(np.prod([xin.shape[i] for i in axes], dtype=np.int64))
    R = int(np.prod(out_shape, dtype=np.int64))
    a2 = _rounded(moved, acc.a_format, backend).reshape(R, K)
    ones = np.ones((1, K), dtype=np.float64)
    zero = np.zeros(1, dtype=np.int64)
    out = _run(a2, ones, zero, zero, R, 1, K, acc, seed, backend).reshape(out_shape).astype(xin.dtype)
    return out[()] if out.ndim == 0 else out


# -- hardware matrix units (lowprec.matrix_units; kernels/mma.py; dispatch.matrix_unit_array) ---------
def _unit_operand(x: np.ndarray, fmt, truncate: bool) -> np.ndarray:
    """x as the matrix unit reads it, float64: rounded nearest-even to fmt, or (truncate) the float32
    value (float64 inputs rounded to float32 first) with the bits below fmt's mantissa cleared."""
    if not truncate:
        return np.asarray(round_to(x, fmt, backend="cpu"), dtype=np.float64)
    mask = np.uint32((0xFFFFFFFF << (23 - fmt.man_bits)) & 0xFFFFFFFF)
    with np.errstate(over="ignore"):  # float64 beyond float32's range: Inf, as the float32 operand holds it
        x32 = np.ascontiguousarray(x, dtype=np.float32)
    return (x32.view(np.uint32) & mask).view(np.float32).astype(np.float64)


def _matmul_matrix_unit(a, b, accumulation, c, backend):
    """matmul under a MatrixUnit (see matmul): the operands as the unit reads them, then
    dispatch.matrix_unit_array."""
    unit = get_matrix_unit(accumulation)
    backend = dispatch.resolve_backend(backend)
    a_in, b_in = _as_input(a, "a"), _as_input(b, "b")
    A, B, M, K, N, batch = _matmul_shapes(a_in, b_in)
    out_dtype = np.result_type(a_in, b_in)
    final = batch + ((M,) if a_in.ndim > 1 else ()) + ((N,) if b_in.ndim > 1 else ())
    if c is None:
        C = np.zeros(batch + (M, N))
    else:
        c_in = _as_input(c, "c")
        try:
            c_in = np.broadcast_to(c_in, final)
        except ValueError:
            raise ValueError(f"c with shape {c_in.shape} does not broadcast to the result's shape {final}") from None
        C = _unit_operand(np.array(c_in), unit.c_format, False)  # (a writable copy: one compiled signature)
        C = C.reshape(batch + (M, N))
    ia, ib = _batch_index(batch, A.shape[:-2]), _batch_index(batch, B.shape[:-2])
    if unit.block_format is not None:
        out = _matmul_block_unit(A, B, C, c is not None, ia, ib, unit, backend).reshape(batch + (M, N))
        return _result(out, a_in, b_in, out_dtype)
    Ar = _unit_operand(A, unit.a_format, unit.truncate_inputs)
    Br = _unit_operand(B, unit.b_format, unit.truncate_inputs)
    A3 = Ar.reshape(int(np.prod(A.shape[:-2], dtype=np.int64)), M, K)
    B3 = Br.reshape(int(np.prod(B.shape[:-2], dtype=np.int64)), K, N)
    C3 = np.broadcast_to(C, batch + (M, N)).reshape(ia.size, M, N)
    out = dispatch.matrix_unit_array(backend, A3, B3, C3, ia, ib, unit._kernel_params()).reshape(batch + (M, N))
    return _result(out, a_in, b_in, out_dtype)


def _block_quantized(x: np.ndarray, bf, axis: int):
    """x block-quantized along ``axis`` (lowprec.block): (element x block scale as float64, the block scales as
    float64 values, the per-tensor scale or None). The per-tensor scale is not folded into the values."""
    from . import block
    from .core import decode

    enc = block.encode(x, bf, axis=axis, packed=False)
    q = np.asarray(decode(enc.elements, bf.element), dtype=np.float64)
    sv = np.asarray(decode(enc.scales, bf.scale), dtype=np.float64)
    n = x.shape[axis]
    full = np.repeat(sv, bf.block[0], axis=axis).take(np.arange(n), axis=axis)
    ts = None if enc.tensor_scale is None else float(enc.tensor_scale)
    return q * full, sv, ts


def _matmul_block_unit(A, B, C, has_c, ia, ib, unit, backend) -> np.ndarray:
    """matmul under a block-scaled unit: a quantized along K (its last axis), b along K (axis -2) with the unit's
    block formats, then the block-scaled chain (matrix_units.block_unit_array). A per-tensor scale (NVFP4) stays outside the
    instruction: the chain runs from c = 0 and the result is ``fp32(alpha * D + c)`` with ``alpha =
    fp32(s_a * s_b)``, one rounding (a GEMM epilogue's fused multiply-add)."""
    from .ops import fma

    M, K = A.shape[-2:]
    N = B.shape[-1]
    Av, SA, ta = _block_quantized(A, unit.operand_block_format("a"), -1)
    Bv, SB, tb = _block_quantized(B, unit.operand_block_format("b"), -2)
    Ta, Tb, nb = int(np.prod(A.shape[:-2], dtype=np.int64)), int(np.prod(B.shape[:-2], dtype=np.int64)), SA.shape[-1]
    A3, B3 = Av.reshape(Ta, M, K), Bv.reshape(Tb, K, N)
    SA3, SB3 = SA.reshape(Ta, M, nb), SB.reshape(Tb, nb, N)
    T = ia.size
    C3 = np.ascontiguousarray(C).reshape(T, M, N)
    if ta is None and tb is None:
        return block_unit_array(A3, SA3, B3, SB3, C3, ia, ib, unit, backend)
    D = block_unit_array(A3, SA3, B3, SB3, np.zeros((T, M, N)), ia, ib, unit, backend)
    alpha = np.float32(np.float64(1.0 if ta is None else ta) * np.float64(1.0 if tb is None else tb))
    with np.errstate(all="ignore"):
        out = np.asarray(fma(np.full(D.shape, float(alpha)), D, C3 if has_c else np.zeros(D.shape),
                             "fp32"), dtype=np.float64)
    return out
