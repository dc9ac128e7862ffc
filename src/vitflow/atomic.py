"""Atomic file output: write to a temporary file beside the target, then rename over it.

A reader never sees a half-written file, and an interrupted run leaves the previous file (or
none) instead of a truncated one.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

# the mode a plain open() would give (0o666 less the umask), read once: os.umask sets as it reads,
# so calling it from writer threads would race
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside ``path`` to write (by any library); renamed over ``path`` when the
    block ends normally, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike, last: str | None = None) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; it takes ``path``'s place (replacing an older
    one) when the block ends normally and is removed when it raises, so ``path`` is either the
    old folder or the new one, whole, never half-written (a run stopped by a signal included).

    An existing ``path`` that holds folders (other outputs nested in it, such as a folder
    argument's images under a file argument's name) is never replaced: the new files are renamed
    into it one by one instead, ``last`` (the file that says the folder is complete) last."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700
        if path.is_dir() and any(p.is_dir() for p in path.iterdir()):
            for file in sorted(tmp.iterdir(), key=lambda p: p.name == last):
                os.replace(file, path / file.name)
            tmp.rmdir()
        elif path.exists():  # a rename cannot replace a folder with files in it: move it aside first
            old = tmp.with_name(tmp.name + ".old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    """``data`` into ``path`` atomically; ``durable``: on the disk before the rename (``fsync``),
    so a power cut cannot leave the new name with no content. Pictures a manifest accounts for
    skip it (the manifest, written last and durably, is what says a bundle is complete), and a run
    of many bundles syncs a whole chunk at once instead (``sync_all``)."""
    with atomic_path(path) as tmp:
        _write(tmp, data, durable, "wb")  # over the empty temporary file mkstemp made
    return Path(path)


def _write(path: str | os.PathLike, data: bytes, durable: bool, mode: str) -> None:
    with open(path, mode) as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


def write_staged(path: str | os.PathLike, data: bytes, durable: bool = False) -> Path:
    """``data`` into a new file of a folder no reader sees yet (an ``atomic_dir`` staging folder,
    renamed into place whole): a plain write, with no temporary file and rename of its own."""
    _write(path, data, durable, "xb")
    return Path(path)


def json_bytes(payload: object) -> bytes:
    """What ``write_json_atomic`` writes: indented, no NaN, a final newline."""
    return (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode()


def write_json_atomic(path: str | os.PathLike, payload: object, durable: bool = True) -> Path:
    return write_bytes_atomic(path, json_bytes(payload), durable=durable)


#: whether ``sync_all`` can make a folder's writes durable at once (not on Windows)
CAN_SYNC_ALL = hasattr(os, "sync")


def sync_all(path: str | os.PathLike) -> None:
    """Everything written so far to the file system holding ``path`` onto the disk: one ``syncfs``
    (Linux; only that file system) or ``sync`` call. Once for a run's chunk of 512 bundles it costs
    0.1-0.2 ms a bundle where an ``fsync`` of each bundle's manifest cost 1.4 ms (ext4), and it
    covers every file, pictures and map shards too. Where ``CAN_SYNC_ALL`` is false it does
    nothing: write durably file by file instead."""
    try:
        syncfs = _syncfs()
        if syncfs is not None:
            fd = os.open(path, os.O_RDONLY)
            try:
                if syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
    except OSError:
        pass
    if CAN_SYNC_ALL:
        os.sync()


@lru_cache(maxsize=1)
def _syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # a C library without syncfs: sync() instead
        return None
