"""numba plumbing for every compiled kernel: the decorator, its on-disk cache key, source digests.

Kernel modules decorate their cached entry points with :func:`kernel` and otherwise read as algorithms.
What this module guarantees about numba's on-disk cache:

- **Two kernels that differ in anything never share a cache entry.** numba keys a cached function on
  its bytecode, its closure cells and the argument types, and names its files after the function's
  qualified name and line. A serial and a parallel kernel made from one body (or one closure built for
  two rounding modes whose difference is not a cell) would otherwise share one entry: whichever compiled
  first was loaded for both, in every later process. Here the key also holds the compile options, the
  ``spec`` (the specialisation constants) and a digest of the sources, and the files are named after a
  hash of it: every specialisation has its own index file. That also keeps two processes that compile
  *different* specialisations at once (pytest-xdist workers) from numbering their data files alike.
- **An edit to a kernel source recompiles exactly the kernels that use it.** numba only notices edits to
  the file that defines a cached function. The digest here covers the defining module and every
  ``lowprec.kernels`` module it imports, transitively (found from its globals when it is decorated), so
  editing a leaf module recompiles its own kernels and their callers, nothing else.

Rules for kernel modules (why they exist is above):
- a cached kernel calls other compiled code only through functions that numba inlines
  (``njit(inline="always")``) or through module-level, non-closure functions: two closures with one
  qualified name compile to the same symbol name, and a cached kernel that calls one of them can be
  linked to the other's code when both are loaded from the cache;
- specialisation constants are closure cells *and* the ``spec`` argument (the cells make numba fold them;
  ``spec`` names the file).
"""

from __future__ import annotations

import hashlib
import sys
import threading
import types as _pytypes
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numba
from numba.core.caching import FunctionCache, IndexDataCacheFile
from numba.core.serialize import dumps

__all__ = ["FASTER_INLINING", "Definitions", "entry_point", "is_cached", "kernel", "plain_inlining", "source_digest"]

_PACKAGE = __name__.rsplit(".", 1)[0]  # "lowprec.kernels"


# ---------------------------------------------------------------------------------------------------
# compile time of inlined code
# ---------------------------------------------------------------------------------------------------
def _faster_inlining() -> bool:
    """Make numba's ``inline="always"`` inlining of lowprec's functions linear instead of quadratic.

    The kernels inline scalar.py's definitions (nested several levels deep), and about 80% of a
    specialised loop's compile time went into numba's inliner (InlineInlinables; LLVM took ~3%):

    - it copies the callee's IR one block at a time with ``copy.deepcopy``, each with its own memo, so
      the function's scope (every variable of the flattened callee) is copied once *per block*;
    - it copies the callee a second time ("an unmutated copy to return") that every caller discards;
    - it runs the frontend (bytecode to IR, and the callee's own inlining, recursively) again at every
      call site of the same function.

    Here, for callees defined in lowprec only: the blocks of one copy share one copy of the scope; the
    second copy is the first; a function's untyped IR is built once per (function, pipeline, flags,
    contexts) and handed to the inliner, which copies it before it changes anything (as numba already
    does for ``overload(inline="always")`` templates, whose IR it caches). The compiled code is the same:
    the assembly of a specialised round loop is identical but for numba's process-wide version counters
    in symbol names (tests/test_kernel_cache.py compares it). A specialised stochastic round loop: 32 s
    -> 9 s of CPU. Other numba code in the process is not affected. ``LOWPREC_NUMBA_INLINING=plain``
    turns this off. Returns whether it is on.
    """
    import copy
    import os
    from collections import OrderedDict

    if os.environ.get("LOWPREC_NUMBA_INLINING", "") == "plain":
        return False
    try:
        from numba.core import inline_closurecall as icc
        from numba.core import ir
        worker = icc.InlineWorker
        inline_ir, run_untyped = worker.inline_ir, worker.run_untyped_passes
    except (ImportError, AttributeError):
        return False
    if getattr(inline_ir, "_lowprec", False) or getattr(icc, "copy", None) is not copy:
        return getattr(inline_ir, "_lowprec", False)

    root = _PACKAGE.split(".")[0] + "."
    seeds: list = []  # per inline_ir call of a lowprec callee: {id(scope): (scope, its one copy)}

    class _Copy:
        """The ``copy`` module as inline_closurecall sees it (its only use: deepcopy of IR blocks)."""

        def __getattr__(self, name):
            return getattr(copy, name)

        @staticmethod
        def deepcopy(x, memo=None):
            if memo is None and seeds and isinstance(x, ir.Block):
                mine = seeds[-1]
                if any(copied is x.scope for _, copied in mine.values()):
                    return x  # the second, discarded copy: a block of the first copy
                entry = mine.get(id(x.scope))
                if entry is None:
                    entry = mine[id(x.scope)] = (x.scope, copy.deepcopy(x.scope))
                memo = {id(x.scope): entry[1]}
            return copy.deepcopy(x, memo)

    def _ours(func) -> bool:
        return _FASTER_INLINING_ON[0] and (getattr(func, "__module__", None) or "").startswith(root)

    def patched_inline_ir(self, caller_ir, block, i, callee_ir, *args, **kwargs):
        if not _ours(getattr(callee_ir.func_id, "func", None)):
            return inline_ir(self, caller_ir, block, i, callee_ir, *args, **kwargs)
        seeds.append({})
        try:
            return inline_ir(self, caller_ir, block, i, callee_ir, *args, **kwargs)
        finally:
            seeds.pop()

    untyped: OrderedDict = OrderedDict()  # bounded: lowprec has a few hundred inlined functions

    def patched_run_untyped(self, func, enable_ssa=False):
        if not _ours(func):
            return run_untyped(self, func, enable_ssa)
        self.flags.enable_ssa = enable_ssa  # (numba sets it on the shared flags too)
        try:
            key = (func, type(self.pipeline), self.typingctx, self.targetctx, self.flags.copy(), enable_ssa)
            hash(key)
        except TypeError:
            return run_untyped(self, func, enable_ssa)
        got = untyped.get(key)
        if got is None:
            got = untyped[key] = run_untyped(self, func, enable_ssa)
            if len(untyped) > 2048:
                untyped.popitem(last=False)
        else:
            untyped.move_to_end(key)
        return got

    patched_inline_ir._lowprec = True
    worker.inline_ir = patched_inline_ir
    worker.run_untyped_passes = patched_run_untyped
    icc.copy = _Copy()
    return True


_FASTER_INLINING_ON = [True]
FASTER_INLINING = _faster_inlining()


@contextmanager
def plain_inlining():
    """Compile with numba's own inliner inside this block (to compare the code both make)."""
    old = _FASTER_INLINING_ON[0]
    _FASTER_INLINING_ON[0] = False
    try:
        yield
    finally:
        _FASTER_INLINING_ON[0] = old


@lru_cache(maxsize=None)
def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _kernel_modules(module_name: str, seen: set) -> None:
    """Add ``module_name`` and the lowprec.kernels modules it imports (transitively) to ``seen``."""
    if module_name in seen or not module_name.startswith(_PACKAGE):
        return
    mod = sys.modules.get(module_name)
    if mod is None or not getattr(mod, "__file__", None):
        return
    seen.add(module_name)
    for value in list(vars(mod).values()):
        if isinstance(value, _pytypes.ModuleType):
            _kernel_modules(value.__name__, seen)
        else:
            owner = getattr(getattr(value, "py_func", value), "__module__", None)
            if isinstance(owner, str):
                _kernel_modules(owner, seen)


def source_digest(module_name: str) -> str:
    """sha256 over the sources of ``module_name`` and the kernel modules it imports, transitively."""
    seen: set = set()
    _kernel_modules(module_name, seen)
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(name.encode())
        h.update(_file_digest(sys.modules[name].__file__).encode())
    return h.hexdigest()


def _stable_text(value) -> str:
    """A closure cell's content as text that is the same in every process: compiled functions (and
    lowprec's ParallelKernel wrappers) by their qualified names, numbers and strings by their repr.
    numba's own key pickles the cells, and a pickled dispatcher holds a per-process uuid: a kernel that
    closes over a compiled function then missed the cache in every new process (and added a data file)."""
    f = getattr(value, "py_func", None)
    if f is not None:
        return f"compiled:{f.__module__}.{f.__qualname__}"
    if isinstance(value, _pytypes.FunctionType):
        return f"function:{value.__module__}.{value.__qualname__}"
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_stable_text(v) for v in value) + ")"
    if isinstance(value, (bool, int, float, str, bytes, type(None))) or type(value).__module__ == "numpy":
        return f"{type(value).__name__}:{value!r}"
    return "pickle:" + hashlib.sha256(dumps(value)).hexdigest()


class _KeyedCache(FunctionCache):
    """numba's function cache with ``key`` added to every index key and to the file names, and closure cells
    keyed by a process-independent text (:func:`_stable_text`)."""

    def __init__(self, py_func, key: str):
        self._extra_key = key
        super().__init__(py_func)
        self._cache_file = IndexDataCacheFile(cache_path=self._cache_path,
                                              filename_base=f"{self._impl.filename_base}-{key[:16]}",
                                              source_stamp=self._impl.locator.get_source_stamp())

    def _index_key(self, sig, codegen):
        f = self._py_func
        cells = "|".join(_stable_text(c.cell_contents) for c in (f.__closure__ or ()))
        return (sig, codegen.magic_tuple(), (hashlib.sha256(f.__code__.co_code).hexdigest(),
                                             hashlib.sha256(cells.encode()).hexdigest()), self._extra_key)


_LAUNCH_LOCK = threading.Lock()
_SERIAL: list = []  # [True/False] once known: whether parallel launches must be serialised


def _serialise() -> bool:
    """True when numba's threading layer is 'workqueue', which is not thread-safe: two Python threads
    launching parallel kernels at the same time abort the process. Known without a launch: the layer is
    loaded (numba picks tbb, then omp, then workqueue unless NUMBA_THREADING_LAYER names one)."""
    if not _SERIAL:
        try:
            from numba.np.ufunc import parallel as _parallel

            _parallel._launch_threads()
            _SERIAL.append(numba.threading_layer() == "workqueue")
        except Exception:  # an unknown numba internal: serialise, which is always safe
            _SERIAL.append(True)
    return _SERIAL[0]


class ParallelKernel:
    """A parallel kernel as Python calls it: the numba dispatcher, launched under a process-wide lock when
    the threading layer is 'workqueue' (see :func:`_serialise`), so that lowprec may be called from several
    Python threads on any layer (the same bits; with workqueue, one parallel kernel runs at a time).
    Every other attribute is the dispatcher's."""

    __slots__ = ("dispatcher",)

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher

    def __call__(self, *args):
        if _SERIAL[0] if _SERIAL else _serialise():
            with _LAUNCH_LOCK:
                return self.dispatcher(*args)
        return self.dispatcher(*args)

    def __getattr__(self, name):
        return getattr(self.dispatcher, name)

    def __repr__(self) -> str:
        return f"ParallelKernel({self.dispatcher!r})"


def kernel(fn=None, *, parallel: bool = False, spec=(), error_model: str = "python", cache: bool = True):
    """Compile ``fn`` as a cached numba kernel (``nogil``), keyed on everything that makes it differ.

    Parameters
    ----------
    parallel : bool
        ``prange`` loops run on numba's thread pool.
    spec : tuple
        The specialisation constants ``fn`` closes over (ints, strings, bools): part of the cache key
        and of the cache file names.
    error_model : "python" or "numpy"
        numba's division semantics ("numpy": x/0 gives Inf/NaN, as IEEE and CUDA do).
    cache : bool
        Keep compiled code on disk (False: compile in every process; for code that is not worth a file).

    Used as ``@kernel`` or ``@kernel(parallel=True, spec=(...))``. A parallel kernel comes back as a
    :class:`ParallelKernel` (call it from Python, not from other compiled code).
    """
    def wrap(f):
        d = numba.njit(parallel=parallel, nogil=True, error_model=error_model)(f)
        if cache:
            key = hashlib.sha256(repr((f.__module__, f.__qualname__, bool(parallel), error_model, tuple(spec),
                                       source_digest(f.__module__))).encode()).hexdigest()
            d._cache = _KeyedCache(f, key)
        return ParallelKernel(d) if parallel else d

    return wrap if fn is None else wrap(fn)


def is_cached(dispatcher, *args) -> bool:
    """True when ``dispatcher`` has code for these arguments' types in this process or on disk.

    Lets a caller choose a kernel that costs no compilation (a runtime-argument kernel) while the
    specialised one is not yet available."""
    dispatcher = getattr(dispatcher, "dispatcher", dispatcher)
    sig = tuple(numba.typeof(a) for a in args)
    if any(tuple(o) == sig for o in dispatcher.overloads):
        return True
    cache = dispatcher._cache
    if not isinstance(cache, _KeyedCache):
        return False
    try:
        codegen = dispatcher.targetctx.codegen()
        return cache._index_key(sig, codegen) in cache._cache_file._load_index()
    except Exception:  # an unreadable index is a miss, not an error
        return False


class Definitions:
    """Scalar definitions compiled two ways from one source: inlined, or called.

    Used as the decorator of a module's scalar functions (``_def = Definitions()``, ``@_def``): the
    decorated name is numba's inlined version (``inline="always"``), which vector loops need: every
    call site is expanded and specialised on its constant arguments. :meth:`called` returns the same
    functions compiled as ordinary calls, each calling the others' called versions: runtime-argument
    kernels built on those compile in a fraction of the time (each function is typed once, not once per
    call site) and run at scalar speed. Both are the module's own source: the called copies are the
    same code objects with a namespace in which the decorated names are bound to the called versions.
    (The interpreter runs the same source too: kernels/plain.py's ``twin``.)
    """

    def __init__(self):
        self._py = {}
        self._called = None

    def __call__(self, f):
        self._py[f.__name__] = f
        return numba.njit(nogil=True, inline="always")(f)

    def called(self) -> _pytypes.ModuleType:
        """A module object whose attributes are the called versions (built on first use)."""
        if self._called is None:
            first = next(iter(self._py.values()))
            namespace = dict(first.__globals__)
            mod = _pytypes.ModuleType(first.__module__ + "<called>")
            for name, f in self._py.items():
                copy = _pytypes.FunctionType(f.__code__, namespace, name, f.__defaults__, f.__closure__)
                copy.__qualname__ = f.__qualname__ + "<called>"
                copy.__module__ = f.__module__
                namespace[name] = numba.njit(nogil=True)(copy)
                setattr(mod, name, namespace[name])
            self._called = mod
        return self._called


def entry_point(loop, args):
    """The compiled entry of ``loop`` for exactly these arguments' types, or None (not a compiled dispatcher,
    not compiled for them yet, or a numba without the attributes).

    Calling it skips the dispatcher's type resolution (~1 us of a small call's ~3). Its argument
    unboxing checks an array's item size, not its dtype, so an element loop's entry for ``int32`` carrier
    arrays also takes the ``float32`` arrays themselves (same item size, same bytes): no ``view`` per call.
    Only for arguments of exactly the types given here: the same scalar types, and arrays of the same item
    size, number of dimensions, layout (C-contiguous) and alignment (numba compiled the loop for them; the
    caller checks) -- anything else goes through the dispatcher. Serial loops only: a parallel kernel is launched
    through its wrapper, which serialises launches where numba's threading layer needs it."""
    if isinstance(loop, ParallelKernel):  # (its launches may need jit.ParallelKernel's lock: keep the wrapper)
        return None
    try:
        sig = tuple(numba.typeof(a) for a in args)
        overload = loop.overloads.get(sig)
        return None if overload is None else overload.entry_point
    except Exception:  # not a numba dispatcher (the interpreted loop), or another numba
        return None
