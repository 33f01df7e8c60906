"""Atomic file writes: a reader never sees a half-written file, a crash loses nothing old."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path next to `path`; rename it over `path` only on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is None:
            raise
        raise NotADirectoryError(errno.ENOTDIR, f"{os.strerror(errno.ENOTDIR)} (a file stands where "
                                 f"{path} needs a folder)", str(blocker)) from None
    except OSError as exc:
        _name(exc, path, None)
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should read like any file
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            _name(exc, path, tmp)
        raise


def _name(exc: OSError, path: Path, tmp) -> None:
    """Let an OSError name the file the caller asked for (disk full says no name; a
    refused temporary file names that), so the CLI's one line points at it."""
    if exc.filename is None or exc.filename == tmp or (
            tmp is None and str(exc.filename).startswith(str(path.parent / f".{path.name}."))):
        exc.filename = str(path)
        exc.filename2 = None


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path, df) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")


def file_sha256(path) -> str:
    """SHA-256 hex digest of a file, read in 1 MB chunks (weights, bundles, model files)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
