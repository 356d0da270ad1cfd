"""Checkpoint files of :func:`lowprec.train.train`: atomic writes, checked reads.

A checkpoint holds a tree of nested dicts/lists of JSON values and numpy
arrays. On disk: magic bytes | payload length (8 bytes, big-endian) |
sha256(payload) | payload, where the payload is an ``.npz`` archive holding
the arrays and the tree (as JSON, with each array replaced by
``{"__array__": key}``).

Examples
--------
>>> import os, tempfile
>>> import numpy as np
>>> with tempfile.TemporaryDirectory() as d:
...     save_checkpoint(os.path.join(d, "checkpoint.ckpt"), {"epoch": 3, "w": [np.float32([1.5, -2.0])]})
...     state = load_checkpoint(d)  # a run directory: its checkpoint.ckpt
>>> state["epoch"], state["w"][0].dtype.name, state["w"][0].tolist()
(3, 'float32', [1.5, -2.0])
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError"]

_MAGIC = b"LOWPRECCKPT\x01"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or not a lowprec checkpoint."""


def _to_tree(obj, arrays: dict):
    """``obj`` with every ndarray moved into ``arrays`` and replaced by ``{"__array__": key}``."""
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__array__": key}
    if isinstance(obj, dict):
        return {k: _to_tree(v, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_tree(v, arrays) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _from_tree(obj, arrays):
    """The inverse of :func:`_to_tree` (tuples come back as lists)."""
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        return {k: _from_tree(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_tree(v, arrays) for v in obj]
    return obj


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` (nested dicts/lists of JSON values and numpy arrays) atomically.

    The bytes go to a temporary file in the same directory, which is
    flushed, fsync'ed and then renamed over ``path`` with ``os.replace``:
    a crash leaves either the old checkpoint or the new one, never a torn file.
    The temporary is ``.NAME.tmp<pid>``; one left by a writer that was killed
    (its process no longer runs on this machine) is removed by the next save
    in that directory, and a write that fails removes its own.
    """
    path = os.fspath(path)
    arrays: dict = {}
    meta = json.dumps(_to_tree(state, arrays)).encode()
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(meta, dtype=np.uint8), **arrays)
    payload = buf.getvalue()
    blob = _MAGIC + len(payload).to_bytes(8, "big") + hashlib.sha256(payload).digest() + payload
    directory = os.path.dirname(os.path.abspath(path))
    _remove_stale_temporaries(directory, os.path.basename(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:  # a failed write leaves no temporary behind (a killed one does: the next save removes it)
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine); unknown counts as alive."""
    if pid == os.getpid():
        return False  # our own temporary: a write of this process that failed
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists under another user, or cannot tell: keep its file
    return True


def _remove_stale_temporaries(directory: str, name: str) -> list:
    """Remove ``.NAME.tmp<pid>`` files in ``directory`` left by writers that are no longer running.

    A writer killed between writing and renaming leaves its temporary file
    (as large as a checkpoint). A live writer's file is never touched. Returns
    the removed paths.
    """
    prefix = f".{name}.tmp"
    removed = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        if not entry.startswith(prefix) or not entry[len(prefix):].isdigit():
            continue
        if _pid_alive(int(entry[len(prefix):])):
            continue
        full = os.path.join(directory, entry)
        try:
            os.remove(full)
            removed.append(full)
        except OSError:
            pass
    return removed


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    ``path`` may also be a run directory: its ``checkpoint.ckpt`` is read.

    Raises
    ------
    FileNotFoundError
        No such file.
    CheckpointError
        Not a lowprec checkpoint, truncated, bytes appended, or the checksum does not match.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.ckpt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        blob = f.read()
    head = len(_MAGIC) + 8 + 32
    if not blob.startswith(_MAGIC[:len(blob)]) or len(blob) < len(_MAGIC):
        raise CheckpointError(f"{path} is not a lowprec checkpoint (bad magic bytes)")
    if not blob.startswith(_MAGIC):
        raise CheckpointError(f"{path} is not a lowprec checkpoint (bad magic bytes)")
    if len(blob) < head:
        raise CheckpointError(f"checkpoint {path} is truncated: {len(blob)} bytes, shorter than its "
                              f"{head}-byte header")
    n = int.from_bytes(blob[len(_MAGIC):len(_MAGIC) + 8], "big")
    payload = blob[head:]
    if len(payload) < n:
        raise CheckpointError(f"checkpoint {path} is truncated: header announces {n} bytes of data, "
                              f"the file holds {len(payload)}")
    if len(payload) > n:
        raise CheckpointError(f"checkpoint {path} has {len(payload) - n} extra bytes appended after its "
                              f"{n} bytes of data (the file was written to after the checkpoint was saved)")
    if hashlib.sha256(payload).digest() != blob[len(_MAGIC) + 8:head]:
        raise CheckpointError(f"checkpoint {path} is corrupt: checksum mismatch")
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    return _from_tree(meta, arrays)
