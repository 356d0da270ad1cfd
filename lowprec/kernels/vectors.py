"""LLVM vector values for numba: ``<8 x double>``, ``<16 x float>`` (one AVX-512 register each) and
``<8 x float>`` (one AVX register): every hand-written vector intrinsic of the tile kernels.

The numba types :data:`f64x8` and :data:`f32x16` and the operations the register-tiled kernels
(linalg_narrow.py) and the vector forms of the arithmetic rules (rules.py) need to move whole vectors:
zero, splat, load a row piece of a 3-D array, store one into a 2-D float64 array, compare lanes (the
arithmetic on them is in rules.py). :data:`f32x8` and the ``v8_*`` operations are the fp32 tile
kernel's (linalg_fp32.py): zero, splat, load/store a row piece of a 2-D float32 array, the float32
multiply-add step (fused or not: IEEE float32 arithmetic is the fp32 accumulation) and NaN
canonicalisation.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

D8 = ir.VectorType(ir.DoubleType(), 8)
Q8 = ir.VectorType(ir.IntType(64), 8)
F16 = ir.VectorType(ir.FloatType(), 16)
W16 = ir.VectorType(ir.IntType(32), 16)
D16 = ir.VectorType(ir.DoubleType(), 16)
I32 = ir.IntType(32)


class F64x8(types.Type):
    """LLVM ``<8 x double>`` as a numba value (one AVX-512 register)."""

    def __init__(self):
        super().__init__(name="f64x8")


class F32x16(types.Type):
    """LLVM ``<16 x float>`` as a numba value (one AVX-512 register)."""

    def __init__(self):
        super().__init__(name="f32x16")


f64x8 = F64x8()
f32x16 = F32x16()


@register_model(F64x8)
class _F64x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, D8)


@register_model(F32x16)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, F16)


def splat(builder, vty, x):
    """(x, ..., x) as the vector type vty (LLVM IR)."""
    n = vty.count
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(I32, n), [0] * n))


def _ptr(context, builder, aryty, arr, idx):
    ary = context.make_array(aryty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)


@intrinsic
def d8_zero(typingctx):
    """(+0, ..., +0) as <8 x double>."""
    def codegen(context, builder, signature, args):
        return ir.Constant(D8, [0.0] * 8)

    return f64x8(), codegen


@intrinsic
def f16_zero(typingctx):
    """(+0, ..., +0) as <16 x float>."""
    def codegen(context, builder, signature, args):
        return ir.Constant(F16, [0.0] * 16)

    return f32x16(), codegen


@intrinsic
def d8_splat(typingctx, x):
    """(x, ..., x) for a float64 x."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return splat(builder, D8, args[0])

    return f64x8(types.float64), codegen


@intrinsic
def f16_splat(typingctx, x):
    """(x, ..., x) for a float32 x."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return splat(builder, F16, args[0])

    return f32x16(types.float32), codegen


def _is3(arr, dtype):
    return isinstance(arr, types.Array) and arr.ndim == 3 and arr.dtype == dtype


@intrinsic
def d8_load(typingctx, arr, p, k, j):
    """arr[p, k, j:j+8] of a 3-D float64 array whose last axis is contiguous (not checked)."""
    if not _is3(arr, types.float64):
        return None

    def codegen(context, builder, signature, args):
        ptr = _ptr(context, builder, signature.args[0], args[0], list(args[1:]))
        return builder.load(builder.bitcast(ptr, D8.as_pointer()), align=8)

    return f64x8(arr, types.intp, types.intp, types.intp), codegen


@intrinsic
def f16_load(typingctx, arr, p, k, j):
    """arr[p, k, j:j+16] of a 3-D float32 array whose last axis is contiguous (not checked)."""
    if not _is3(arr, types.float32):
        return None

    def codegen(context, builder, signature, args):
        ptr = _ptr(context, builder, signature.args[0], args[0], list(args[1:]))
        return builder.load(builder.bitcast(ptr, F16.as_pointer()), align=4)

    return f32x16(arr, types.intp, types.intp, types.intp), codegen


def _is_out(arr):
    return isinstance(arr, types.Array) and arr.ndim == 2 and arr.dtype == types.float64


@intrinsic
def d8_store(typingctx, out, i, j, v):
    """out[i, j:j+8] = v for a 2-D float64 array whose last axis is contiguous (not checked)."""
    if not _is_out(out) or v != f64x8:
        return None

    def codegen(context, builder, signature, args):
        ptr = _ptr(context, builder, signature.args[0], args[0], [args[1], args[2]])
        builder.store(args[3], builder.bitcast(ptr, D8.as_pointer()), align=8)
        return context.get_dummy_value()

    return types.none(out, types.intp, types.intp, f64x8), codegen


@intrinsic
def f16_store(typingctx, out, i, j, v):
    """out[i, j:j+16] = v converted (exactly) to float64, out 2-D float64 with a contiguous last axis."""
    if not _is_out(out) or v != f32x16:
        return None

    def codegen(context, builder, signature, args):
        ptr = _ptr(context, builder, signature.args[0], args[0], [args[1], args[2]])
        builder.store(builder.fpext(args[3], D16), builder.bitcast(ptr, D16.as_pointer()), align=8)
        return context.get_dummy_value()

    return types.none(out, types.intp, types.intp, f32x16), codegen


def qsplat(builder, x):
    """(x, ..., x) as <8 x i64> (LLVM IR)."""
    return splat(builder, Q8, x)


@intrinsic
def d8_any_ge(typingctx, v, x):
    """True when some lane of v is >= x (ordered)."""
    if not (v == f64x8 and x == types.float64):
        return None

    def codegen(context, builder, signature, args):
        ge = builder.fcmp_ordered(">=", args[0], splat(builder, D8, args[1]))
        bits = builder.bitcast(ge, ir.IntType(8))
        return builder.icmp_unsigned("!=", bits, ir.Constant(ir.IntType(8), 0))

    return types.boolean(f64x8, types.float64), codegen


# ----------------------------------------------------------------------------
# <8 x float> (one AVX register): the fp32 tile kernel's vectors (linalg_fp32.py)
# ----------------------------------------------------------------------------
_V8 = ir.VectorType(ir.FloatType(), 8)
_I32 = I32


class F32x8(types.Type):
    """LLVM ``<8 x float>`` as a numba value (kept in registers: one AVX register)."""

    def __init__(self):
        super().__init__(name="f32x8")


f32x8 = F32x8()


@register_model(F32x8)
class _F32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V8)


def _is_f32_2d(arr) -> bool:
    return isinstance(arr, types.Array) and arr.ndim == 2 and arr.dtype == types.float32


@intrinsic
def v8_zero(typingctx):
    """(+0, ..., +0)."""
    def codegen(context, builder, signature, args):
        return ir.Constant(_V8, [0.0] * 8)

    return f32x8(), codegen


@intrinsic
def v8_splat(typingctx, x):
    """(x, ..., x) for a float32 x."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        v = builder.insert_element(ir.Constant(_V8, ir.Undefined), args[0], ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, ir.Constant(_V8, ir.Undefined), ir.Constant(ir.VectorType(_I32, 8), [0] * 8))

    return f32x8(types.float32), codegen


@intrinsic
def v8_load(typingctx, arr, i, j):
    """arr[i, j:j+8] of a 2-D float32 array whose last axis is contiguous (not checked)."""
    if not _is_f32_2d(arr):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], args[2]], wraparound=False)
        return builder.load(builder.bitcast(ptr, _V8.as_pointer()), align=4)

    return f32x8(arr, types.intp, types.intp), codegen


@intrinsic
def v8_store(typingctx, arr, i, j, v):
    """arr[i, j:j+8] = v (last axis contiguous, not checked)."""
    if not _is_f32_2d(arr) or v != f32x8:
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], args[2]], wraparound=False)
        builder.store(args[3], builder.bitcast(ptr, _V8.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, types.intp, types.intp, f32x8), codegen


@intrinsic
def v8_store_first(typingctx, arr, i, j, v, n):
    """arr[i, j:j+n] = v[:n], lane by lane, for n < 8 (n <= 0: nothing; n >= 8: all 8): the edges of C."""
    if not _is_f32_2d(arr) or v != f32x8 or not isinstance(n, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        i_, j_, v_, n_ = args[1:]
        for c in range(8):
            with builder.if_then(builder.icmp_signed(">", n_, ir.Constant(n_.type, c))):
                jc = builder.add(j_, ir.Constant(j_.type, c))
                ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [i_, jc], wraparound=False)
                builder.store(builder.extract_element(v_, ir.Constant(_I32, c)), ptr)
        return context.get_dummy_value()

    return types.none(arr, types.intp, types.intp, f32x8, n), codegen


@intrinsic
def v8_step(typingctx, a, b, c, fused):
    """c + a*b per lane. ``fused`` (a compile-time constant): rounded once (llvm.fma.v8f32: vfmadd on
    hardware with FMA); else the product rounded to float32, then the sum (no contraction)."""
    if not (a == f32x8 and b == f32x8 and c == f32x8 and isinstance(fused, types.BooleanLiteral)):
        return None
    fma = fused.literal_value

    def codegen(context, builder, signature, args):
        a_, b_, c_, _ = args
        if fma:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8, [_V8] * 3), "llvm.fma.v8f32")
            return builder.call(fn, [a_, b_, c_])
        return builder.fadd(c_, builder.fmul(a_, b_))

    return f32x8(f32x8, f32x8, f32x8, fused), codegen


@intrinsic
def v8_canon(typingctx, v):
    """v with every NaN lane replaced by the canonical NaN (0x7FC00000)."""
    if v != f32x8:
        return None

    def codegen(context, builder, signature, args):
        x = args[0]
        isnan = builder.fcmp_unordered("uno", x, x)
        nan = ir.Constant(_V8, [float("nan")] * 8)  # float32 NaN with the quiet bit only: 0x7FC00000
        return builder.select(isnan, nan, x)

    return f32x8(f32x8), codegen
