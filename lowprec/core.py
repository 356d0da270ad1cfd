"""The public array API: round_to, encode, decode.

Inputs are checked once here (kernels never validate); values enter the
kernels as the integer views of their float32/float64 carrier and leave as
representable values (or bit patterns when asked). float64 input goes to
every format directly, never through float32.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .formats import FixedFormat, FloatFormat, get_format
from .kernels import dispatch
from .kernels.jit import entry_point
from .rng import RandomStream, resolve_seed
from .rounding import MAX_RANDOM_BITS, DEFAULT_RANDOM_BITS, Rounding, get_rounding

__all__ = ["round_to", "encode", "decode", "carrier_of", "prepare_rounding", "PreparedRounding"]

_CARRIER = {
    np.dtype(np.float32): (32, 23, 127, np.int32),
    np.dtype(np.float64): (64, 52, 1023, np.int64),
}


_F64 = np.dtype(np.float64)


def carrier_of(dtype) -> tuple:
    """(CW, CM, CB, int view dtype) of a float32/float64 carrier."""
    return _CARRIER[np.dtype(dtype).newbyteorder("=")]


def _python_ints(arr: np.ndarray, name: str) -> np.ndarray:
    """An object array of Python ints and floats (ints beyond int64) as float64, refusing inexact ints."""
    flat = arr.reshape(-1)
    out = np.empty(flat.size, dtype=np.float64)
    for i, v in enumerate(flat.tolist()):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a real float array or numbers, got an element of type {type(v).__name__}")
        try:
            f = float(v)
        except OverflowError:
            raise ValueError(f"{name} holds the integer {v}, beyond float64's range (about 1.8e308)") from None
        if isinstance(v, (int, np.integer)) and int(f) != int(v):
            raise ValueError(f"{name} holds the integer {v}, which float64 cannot represent exactly "
                             f"(nearest float64: {f!r}); convert to float64 first to round that value")
        out[i] = f
    return out.reshape(arr.shape)


def as_float_input(x, name: str = "x") -> tuple:
    """The public API's one input policy: (native float32/float64 array, result dtype, is a scalar).

    float32 and float64 arrays are taken as they are (any layout; byte order made native); Python numbers,
    lists, bool/integer arrays and Python ints of any size become float64, exactly (an integer float64
    cannot hold raises ValueError naming ``name``); anything else (complex, strings, float16, objects)
    raises TypeError naming ``name``."""
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a float array or number, got {type(x).__name__}")
    is_scalar = np.isscalar(x)
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be a float array or number: {exc}") from None
    kind = arr.dtype.kind
    if kind == "f" and arr.dtype.itemsize in (4, 8):
        out_dtype = arr.dtype
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return arr, out_dtype, is_scalar
    if kind in "biu":
        conv = arr.astype(np.float64)
        if arr.size and kind != "b" and np.any(np.abs(conv) >= 2.0 ** 53):  # (2**53 + 1 converts to 2**53)
            bad = conv.astype(arr.dtype) != arr
            if bad.any():
                v = arr[bad].flat[0]
                raise ValueError(f"{name} holds the integer {v}, which float64 cannot represent exactly "
                                 f"(nearest float64: {float(v)!r}); convert to float64 first to round that value")
        return conv, np.dtype(np.float64), is_scalar
    if kind == "O" and (isinstance(x, int) or (isinstance(x, (list, tuple)) and arr.size)):
        return _python_ints(arr, name), np.dtype(np.float64), is_scalar
    if kind == "f":
        raise TypeError(f"{name} must be float32 or float64 (or Python numbers), got {arr.dtype}; "
                        f"convert with {name}.astype(np.float32)")
    raise TypeError(f"{name} must be a real float array (float32/float64), Python numbers or a list of them, "
                    f"got an array of dtype {arr.dtype}")


def _via_float64(fmt, dtype) -> bool:
    """True when float32 holds every value of ``fmt`` but the kernels cannot round to it in float32: they round
    on the carrier's binades, which end at its smallest normal 2**-126, and a format without zero has a normal
    binade below it (E8M0's 2**-127). Such a float32 array is rounded as its (exact) float64 copy and the result,
    a float32 value, converted back exactly."""
    return (np.dtype(dtype) == np.float32 and isinstance(fmt, FloatFormat) and not fmt.has_zero
            and not fmt.fits_in(np.float32) and fmt.man_bits <= 23 and fmt.emax <= 127
            and fmt.emin - fmt.man_bits >= -149)


def _check_fmt_for_dtype(fmt, dtype) -> None:
    if not fmt.fits_in(dtype) and not _via_float64(fmt, dtype):
        raise ValueError(f"fmt {fmt.name} has values that {np.dtype(dtype).name} cannot hold exactly; "
                         "pass float64 input")


def _check_rbits(random_bits) -> int:
    if isinstance(random_bits, bool) or not isinstance(random_bits, (int, np.integer)):
        raise TypeError(f"random_bits must be an int, got {type(random_bits).__name__}")
    if not 1 <= int(random_bits) <= MAX_RANDOM_BITS:
        raise ValueError(f"random_bits must be in 1..{MAX_RANDOM_BITS}, got {random_bits}")
    return int(random_bits)


def _params(fmt, saturate):
    if saturate is None or isinstance(fmt, FixedFormat):
        if saturate is not None and (saturate != fmt.saturate):
            raise ValueError(f"saturate={saturate} conflicts with {fmt.name}'s overflow={fmt.overflow!r}; "
                             "choose the FixedFormat's overflow instead")
        return fmt._kernel_params()
    if not isinstance(saturate, (bool, np.bool_)):
        raise TypeError(f"saturate must be a bool or None, got {type(saturate).__name__}")
    if fmt.nan == "none" and not saturate:
        raise ValueError(f"{fmt.name} has no Inf or NaN: it can only saturate")
    return fmt.replace(saturate=bool(saturate), name=fmt.name)._kernel_params()


def _prepare(x, fmt, rounding, random_bits, saturate):
    fmt = get_format(fmt)
    mode = get_rounding(rounding)
    rbits = _check_rbits(random_bits)
    arr, out_dtype, is_scalar = as_float_input(x)
    _check_fmt_for_dtype(fmt, arr.dtype)
    if _via_float64(fmt, arr.dtype):
        with np.errstate(invalid="ignore"):  # (a signalling NaN converts to a quiet one)
            arr = arr.astype(np.float64)
    p = _params(fmt, saturate)
    flat = np.ascontiguousarray(arr).reshape(-1)
    return fmt, mode, rbits, arr, out_dtype, is_scalar, p, flat


def round_to(x, fmt, rounding="nearest_even", *, seed=None, stream: int = 0, offset: int = 0,
             random_bits: int = DEFAULT_RANDOM_BITS, saturate=None, backend: str = "auto", out=None):
    """Round every element of ``x`` once, exactly, to the format ``fmt``.

    Parameters
    ----------
    x : array_like
        float32 or float64 values of any shape and layout (0-d, empty,
        strided, Fortran order, big-endian). Python numbers, lists and
        integer arrays are taken as float64 (an integer that float64 cannot
        hold exactly raises ValueError).
    fmt : FloatFormat, FixedFormat or str
        Target format or a preset name (``lowprec.preset_names()``).
    rounding : Rounding or str
        ``nearest_even`` (default), ``nearest_away``, ``toward_zero``, ``up``,
        ``down``, ``odd`` or ``stochastic``.
    seed : None, int, RandomStream or numpy Generator
        Random source for ``stochastic`` (ignored otherwise); see
        :mod:`lowprec.rng` for reproducible and fresh streams. A call that
        raises draws nothing (a RandomStream stays where it was).
    stream, offset : int
        Select the random stream and the first counter for an int seed.
    random_bits : int
        r, the number of random bits of stochastic rounding (1..64, default
        32). The magnitude is rounded: with lo <= |x| <= hi its neighbours,
        P(away from zero) = floor(2**r (|x|-lo)/(hi-lo)) / 2**r.
    saturate : bool, optional
        Override the format's saturation (``+-max`` instead of Inf/NaN on overflow).
    backend : {"auto", "cpu", "cuda"}
    out : ndarray, optional
        Where to write the result (then returned): a writable array of the
        result's shape and dtype. It may be ``x`` itself (rounding in place); any other overlap with
        ``x`` is safe too (``x`` is then read from a copy).
        Saves allocating, and first touching, a new array for large inputs.

    Returns
    -------
    ndarray or float
        Same shape and dtype as ``x`` (float64 for Python input); a NumPy
        scalar for scalar input (``out`` itself when given). Each element is a value of ``fmt`` (or
        +-Inf/NaN where the format and mode say so; NaN stays NaN even in
        formats that cannot encode it).

    Raises
    ------
    TypeError
        ``x`` is complex, a string, an object array, float16; wrong argument
        types; ``out`` not an ndarray of the result's dtype.
    ValueError
        Unknown format or rounding; a format float32 cannot hold for float32
        input; bad ``random_bits``/``seed``; ``out`` of another shape or read-only.

    Examples
    --------
    >>> import lowprec
    >>> float(lowprec.round_to(65519.0, "fp16")), float(lowprec.round_to(65520.0, "fp16"))
    (65504.0, inf)
    >>> float(lowprec.round_to(-431.99999999999994, "fp8_e4m3fn"))
    -416.0
    """
    if type(x) is np.ndarray and x.dtype in _CARRIER:  # the common cases, checked cheaply
        arr, out_dtype, is_scalar = x, x.dtype, False
    elif type(x) is float:
        arr, out_dtype, is_scalar = np.array(x), _F64, True
    else:
        arr, out_dtype, is_scalar = as_float_input(x)
    try:
        r = _prepared(fmt, rounding, arr.dtype, random_bits, saturate, backend)
    except TypeError as exc:  # an unhashable argument: prepare_rounding raises the error that names it
        if "unhashable" not in str(exc):
            raise
        r = prepare_rounding(fmt, rounding, arr.dtype, random_bits=random_bits, saturate=saturate, backend=backend)
    one_d = arr.ndim == 1
    if arr.flags.c_contiguous:
        flat = arr if one_d else arr.reshape(-1)
    else:
        flat = np.ascontiguousarray(arr).reshape(-1)
    if out is not None:
        _check_out(out, arr.shape, out_dtype)
        flat = _unshared(flat, out)
    k0, k1, off = resolve_seed(seed, flat.size, stream, offset) if r._stochastic else (0, 0, 0)  # after every check
    direct = out is not None and out.dtype == arr.dtype and out.flags.c_contiguous and out.flags.aligned
    res = out.reshape(-1) if direct else np.empty(flat.size, dtype=arr.dtype)
    (r._run if r._via64 else r._run_carrier)(flat, res, k0, k1, off)
    if out is not None:
        if not direct:
            out[...] = res.reshape(arr.shape)
        return out
    if res.dtype != out_dtype:
        res = res.astype(out_dtype)
    if is_scalar:  # (one element)
        return res[0]
    return res if one_d else res.reshape(arr.shape)


_NO_KEYS = (np.uint32(0), np.uint32(0), np.int64(0))  # the counter arguments of deterministic modes


def _carrier_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in _CARRIER:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


class PreparedRounding:
    """:func:`round_to` with its checks made once: rounding arrays of one dtype to one format and mode.

    Made by :func:`prepare_rounding` (cached on its arguments). Calling it costs what the kernel
    costs plus a few microseconds, for code that rounds many tensors in a loop (the training runtime
    rounds every activation, weight and gradient this way).

    Attributes
    ----------
    fmt, rounding, dtype, random_bits, saturate, backend
        What :func:`prepare_rounding` was given, validated and normalised.

    Examples
    --------
    >>> import numpy as np, lowprec
    >>> r = lowprec.prepare_rounding("bf16", "nearest_even", np.float32)
    >>> r(np.array([1 + 2**-8, 3.0], dtype=np.float32)).tolist()
    [1.0, 3.0]
    """

    __slots__ = ("fmt", "rounding", "dtype", "random_bits", "saturate", "backend", "_p", "_mode", "_carrier",
                 "_stochastic", "_cpu", "_choices", "_via64", "_entries")

    def __init__(self, fmt, rounding, dtype, random_bits, saturate, backend):
        self.fmt = get_format(fmt)
        self.rounding = get_rounding(rounding)
        self.random_bits = _check_rbits(random_bits)
        self.dtype = dt = _carrier_dtype(dtype)
        _check_fmt_for_dtype(self.fmt, dt)
        self._p = _params(self.fmt, saturate)
        self.saturate = bool(self._p[7]) if self._p[0] == 0 else self.fmt.saturate
        self.backend = dispatch.resolve_backend(backend)
        self._mode = int(self.rounding)
        self._via64 = _via_float64(self.fmt, dt)
        self._carrier = _CARRIER[np.dtype(np.float64) if self._via64 else dt]
        self._stochastic = self.rounding is Rounding.STOCHASTIC
        self._cpu = self.backend == "cpu"
        ity = self._carrier[3]
        self._choices = tuple(dispatch.element_choice("round", self._p, self._mode, self.random_bits, parallel, ity, ity)
                              for parallel in (False, True)) if self._cpu else None
        self._entries = {}  # loop -> its compiled entry for this rounding's argument types (jit.entry_point)

    def __repr__(self) -> str:
        return (f"PreparedRounding({self.fmt.name!r}, {self.rounding.name.lower()!r}, {self.dtype.name}, "
                f"random_bits={self.random_bits}, saturate={self.saturate}, backend={self.backend!r})")

    def __call__(self, x, *, seed=None, out=None) -> np.ndarray:
        """Round the ndarray ``x`` (of this rounding's dtype, any shape and layout); arguments as :func:`round_to`.

        ``seed`` is used by stochastic rounding only (a RandomStream advances by ``x.size``)."""
        if type(x) is not np.ndarray or x.dtype != self.dtype:
            raise TypeError(f"x must be a numpy ndarray of dtype {self.dtype}, got "
                            f"{x.dtype if isinstance(x, np.ndarray) else type(x).__name__}")
        flat = x.reshape(-1) if x.flags.c_contiguous else np.ascontiguousarray(x).reshape(-1)
        n = flat.size
        if out is not None:
            _check_out(out, x.shape, self.dtype)
            flat = _unshared(flat, out)
        direct = out is not None and out.flags.c_contiguous and out.flags.aligned
        res = out.reshape(-1) if direct else np.empty(n, dtype=self.dtype)
        if self._stochastic:
            k0, k1, off = seed.take(n) if type(seed) is RandomStream else resolve_seed(seed, n)
        else:
            k0 = k1 = off = 0
        (self._run if self._via64 else self._run_carrier)(flat, res, k0, k1, off)
        if out is not None:
            if not direct:
                out[...] = res.reshape(x.shape)
            return out
        return res.reshape(x.shape)

    def _run(self, flat, res, k0, k1, off) -> None:
        """Round the flat array ``flat`` into ``res`` (both of this dtype) with counters from (k0, k1, off)."""
        if self._via64:
            wide = np.empty(flat.size, dtype=np.float64)
            with np.errstate(invalid="ignore"):  # (a signalling NaN converts to a quiet one: the result is NaN)
                wide_in = flat.astype(np.float64)
            self._run_carrier(wide_in, wide, k0, k1, off)
            res[...] = wide.astype(res.dtype)  # exact: every value of the format is a float32 value
            return
        self._run_carrier(flat, res, k0, k1, off)

    def _run_carrier(self, flat, res, k0, k1, off) -> None:
        n = flat.size
        CW, CM, CB, ity = self._carrier
        keys = (np.uint32(k0), np.uint32(k1), np.int64(off)) if self._stochastic else _NO_KEYS
        if not self._cpu:
            dispatch.round_array(self.backend, flat.view(ity), res.view(ity), CW, CM, CB, self._p, self._mode, *keys,
                                 self.random_bits)
            return
        loop = self._choices[n >= dispatch.PARALLEL_FROM].pick(n)
        entry = self._entries.get(loop)
        if entry is not None and flat.flags.aligned:  # (flat: 1-D, C-contiguous; res: new or C-contiguous)
            entry(dispatch.ROUND, flat, res, CW, CM, CB, self._p, self._mode, *keys, self.random_bits)
            return
        args = (dispatch.ROUND, flat.view(ity), res.view(ity), CW, CM, CB, self._p, self._mode, *keys, self.random_bits)
        loop(*args)
        if flat.flags.aligned and res.flags.aligned and len(self._entries) < 8:
            self._entries[loop] = entry_point(loop, args)


@lru_cache(maxsize=512, typed=True)  # typed: True and 1 are different arguments (one of them is invalid)
def _prepared(fmt, rounding, dtype, random_bits, saturate, backend) -> PreparedRounding:
    return PreparedRounding(fmt, rounding, dtype, random_bits, saturate, backend)


def prepare_rounding(fmt, rounding="nearest_even", dtype=np.float32, *, random_bits: int = DEFAULT_RANDOM_BITS,
                     saturate=None, backend: str = "auto") -> PreparedRounding:
    """A :class:`PreparedRounding`: ``round_to(x, fmt, rounding, ...)`` for ``dtype`` arrays, checked once.

    Cached on its (hashable) arguments: asking twice returns the same object.

    Raises
    ------
    TypeError, ValueError
        As :func:`round_to` for the same arguments; ``dtype`` other than float32/float64.
    """
    try:
        return _prepared(fmt, rounding, _carrier_dtype(dtype), random_bits, saturate, backend)
    except TypeError as exc:
        if "unhashable" not in str(exc):
            raise
        return PreparedRounding(fmt, rounding, dtype, random_bits, saturate, backend)


def _check_out(out, shape, dtype) -> None:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy ndarray, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"out must have the result's dtype {np.dtype(dtype)}, got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"out must have the result's shape {tuple(shape)}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")


def _unshared(flat: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``flat`` (the input, flattened), copied when it overlaps ``out`` other than element for element.

    Rounding in place (``out`` is the input itself) reads each element before writing it. Any other
    overlap (``out=buf[1:]`` for ``x=buf[:-1]``) would read elements the loop has already overwritten."""
    if np.may_share_memory(flat, out):
        same = (flat.__array_interface__["data"][0] == out.__array_interface__["data"][0]
                and out.flags.c_contiguous and out.dtype == flat.dtype)
        if not same:
            return flat.copy()
    return flat


def _pattern_dtype(bits: int):
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if bits <= np.dtype(dt).itemsize * 8:
            return np.dtype(dt)
    raise ValueError(bits)  # pragma: no cover - formats are at most 64 bits


def encode(x, fmt, rounding="nearest_even", *, seed=None, stream: int = 0, offset: int = 0,
           random_bits: int = DEFAULT_RANDOM_BITS, saturate=None, backend: str = "auto"):
    """Round ``x`` to ``fmt`` and return the bit patterns, in the smallest unsigned dtype.

    Float formats give ``sign | exponent | mantissa`` in the low ``fmt.bits``
    bits; fixed formats give the two's complement (or unsigned) integer in
    ``fmt.bits`` bits. Arguments as :func:`round_to`.

    Raises
    ------
    ValueError
        NaN input for a format without a NaN encoding (fp6/fp4, fixed point).

    Examples
    --------
    >>> import lowprec
    >>> hex(int(lowprec.encode(1.0, "fp16"))), hex(int(lowprec.encode(-1.0, "int8")))
    ('0x3c00', '0xff')
    """
    fmt, mode, rbits, arr, out_dtype, is_scalar, p, flat = _prepare(x, fmt, rounding, random_bits, saturate)
    if not fmt.has_nan and flat.size and np.isnan(flat).any():
        raise ValueError(f"x contains NaN but {fmt.name} has no NaN encoding; "
                         f"{int(np.isnan(flat).sum())} NaN value(s) cannot be encoded")
    dispatch.resolve_backend(backend)  # (a bad name raises here, before the random stream moves)
    # the random stream moves only once every check has passed
    key = resolve_seed(seed, flat.size, stream, offset) if mode is Rounding.STOCHASTIC else (0, 0, 0)
    CW, CM, CB, ity = carrier_of(arr.dtype)
    codes = np.empty(flat.size, dtype=_pattern_dtype(fmt.bits))
    dispatch.encode_array(backend, flat.view(ity), codes, CW, CM, CB, p, int(mode),
                          np.uint32(key[0]), np.uint32(key[1]), np.int64(key[2]), rbits)
    out = codes.reshape(arr.shape)
    return out[()] if is_scalar else out


def decode(bits, fmt, dtype=np.float64, *, backend: str = "auto"):
    """The values of bit patterns of ``fmt`` as a float64 (or float32) array.

    Parameters
    ----------
    bits : array_like of non-negative ints
        Patterns as :func:`encode` returns them; values must be below ``2**fmt.bits``.
    fmt : format or name
    dtype : float64 (default) or float32 (only if the format fits in float32)

    Examples
    --------
    >>> import numpy as np, lowprec
    >>> lowprec.decode(np.array([0x7E, 0x7F, 0x01], dtype=np.uint8), "fp8_e4m3fn").tolist()
    [448.0, nan, 0.001953125]
    """
    fmt = get_format(fmt)
    is_scalar = np.isscalar(bits) and not isinstance(bits, (str, bytes))
    b = np.asarray(bits)
    if b.dtype.kind not in "iu":
        raise TypeError(f"bits must be an integer array of bit patterns, got dtype {b.dtype}")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    _check_fmt_for_dtype(fmt, dtype)
    if _via_float64(fmt, dtype):
        return decode(bits, fmt, np.float64, backend=backend).astype(np.float32)
    if b.size:
        if b.dtype.kind == "i" and b.min() < 0:
            raise ValueError(f"bits must be non-negative patterns, got {b.min()}")
        if int(b.max()) >= 1 << fmt.bits:
            raise ValueError(f"bits must be below 2**{fmt.bits} for {fmt.name}, got {int(b.max())}")
    flat = np.ascontiguousarray(b, dtype=b.dtype.newbyteorder("=")).reshape(-1)  # (its own integer type)
    CW, CM, CB, ity = carrier_of(dtype)
    out = np.empty(flat.size, dtype=dtype)
    dispatch.decode_array(backend, flat, out.view(ity), CW, CM, CB, fmt._kernel_params(), fmt.bits)
    out = out.reshape(b.shape)
    return out[()] if is_scalar else out
