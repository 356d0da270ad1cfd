"""Numba kernels: one scalar definition (scalar.py), thin CPU and CUDA loops around it.

numba's on-disk cache only notices edits to the file that defines a cached
function, not to the functions it calls from other files. Every cached loop
therefore closes over :data:`SOURCE_DIGEST`, a hash of all kernel sources:
numba hashes closure variables into its cache key, so an edit to scalar.py
recompiles the loops instead of silently running stale code.
"""

import hashlib
from pathlib import Path


def _digest() -> str:
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


SOURCE_DIGEST = _digest()
