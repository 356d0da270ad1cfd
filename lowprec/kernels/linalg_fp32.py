"""The fp32-accumulator matmul kernel: register-tiled float32, fixed k order (lowprec.linalg's fast path).

Split from linalg_cpu.py so that the float32 tile (training's matmuls) and the
narrow-accumulator kernels can be worked on separately.
"""

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from . import SOURCE_DIGEST

# ----------------------------------------------------------------------------
# fast path: fp32 accumulator, nearest-even, sequential k order
# ----------------------------------------------------------------------------
# IEEE float32 arithmetic *is* this accumulation: fma(a, b, s) rounds the exact a*b + s once
# (fused), s + a*b rounds the product and then the sum (unfused). The kernel keeps a 4 x 16
# tile of accumulators in registers (64 scalar locals, which LLVM turns into 8 AVX vectors)
# and walks k in order 0..K-1 for every output, so the bits equal the scalar path's on any
# thread count and tiling.
TILE_M = 4
TILE_N = 16


@intrinsic
def fma32(typingctx, a, b, c):
    """llvm.fma.f32: a*b + c rounded once (a hardware FMA, or libm's correctly rounded fmaf)."""
    if not (a == types.float32 and b == types.float32 and c == types.float32):
        return None
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


def _tile_source(fused: bool) -> str:
    rows, cols = range(TILE_M), range(TILE_N)
    lines = [
        "def kernel(Ap, Bp, out, K, digest):",
        "    digest  # noqa: B018",
        "    npanel = Bp.shape[0]",
        "    nrow = Ap.shape[0]",
        "    for t in prange(npanel * nrow):",
        "        jb = t // nrow",
        "        ib = t - jb * nrow",
        f"        i0 = ib * {TILE_M}",
    ]
    lines += [f"        c{r}_{c} = np.float32(0.0)" for r in rows for c in cols]
    lines.append("        for k in range(K):")
    lines += [f"            a{r} = Ap[ib, k, {r}]" for r in rows]
    lines += [f"            b{c} = Bp[jb, k, {c}]" for c in cols]
    for r in rows:
        for c in cols:
            if fused:
                lines.append(f"            c{r}_{c} = fma32(a{r}, b{c}, c{r}_{c})")
            else:
                lines.append(f"            c{r}_{c} = c{r}_{c} + a{r} * b{c}")
    lines += [f"        out[i0 + {r}, jb * {TILE_N} + {c}] = c{r}_{c}" for r in rows for c in cols]
    return "\n".join(lines)


def _build_tiles(digest):
    kernels = {}
    for fused in (True, False):
        ns = {"np": np, "prange": prange, "fma32": fma32}
        src = _tile_source(fused)
        exec(compile(src, f"<lowprec fp32 tile kernel fused={fused}>", "exec"), ns)
        kernel = njit(parallel=True, nogil=True)(ns["kernel"])
        # numba leaves LLVM's SLP vectoriser off by default; the 64 scalar accumulators only become
        # 8 AVX vectors with it, so it is switched on while (only) these kernels compile.
        old = numba.config.SLP_VECTORIZE
        numba.config.SLP_VECTORIZE = 1
        try:
            kernel(np.zeros((1, 1, TILE_M), np.float32), np.zeros((1, 1, TILE_N), np.float32),
                   np.zeros((TILE_M, TILE_N), np.float32), 1, digest)
        finally:
            numba.config.SLP_VECTORIZE = old
        kernels[fused] = kernel
    return kernels


_fp32_tiles: dict = {}


def _matmul_fp32_cpu(a, b, fused):
    """C = A @ B for 2-D float32 A (M, K), B (K, N) with an fp32 accumulator (see above)."""
    if not _fp32_tiles:
        _fp32_tiles.update(_build_tiles(SOURCE_DIGEST))
    M, K = a.shape
    N = b.shape[1]
    Mp = -(-M // TILE_M) * TILE_M
    npanel = -(-N // TILE_N)
    apad = np.zeros((Mp, K), dtype=np.float32)
    apad[:M] = a
    Ap = np.ascontiguousarray(apad.reshape(Mp // TILE_M, TILE_M, K).transpose(0, 2, 1))  # 4-row panels
    Bp = np.zeros((npanel, K, TILE_N), dtype=np.float32)  # b packed into contiguous 16-column panels
    bpad = np.zeros((K, npanel * TILE_N), dtype=np.float32)
    bpad[:, :N] = b
    Bp[:] = bpad.reshape(K, npanel, TILE_N).transpose(1, 0, 2)
    out = np.empty((Mp, npanel * TILE_N), dtype=np.float32)
    _fp32_tiles[fused](Ap, Bp, out, K, SOURCE_DIGEST)
    return out[:M, :N]
