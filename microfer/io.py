"""Atomic file writes: a reader never sees a half-written file, a crash loses nothing old."""

from __future__ import annotations

import errno
import hashlib
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
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent
        )
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is None:
            raise
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"{os.strerror(errno.ENOTDIR)} (a file stands where {path} needs a folder)",
            str(blocker),
        ) from None
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


@contextmanager
def atomic_dir(path, is_ours=None, staging=None):
    """Yield an empty temporary folder next to `path`; swap it in for `path` only on success.

    A failure (full disk, an exception, Ctrl-C) leaves `path` as it was. An existing,
    non-empty `path` is replaced only when `is_ours(path)` says it is an output of the same
    kind (e.g. it holds a bundle.json); anything else is refused, so a typo never deletes
    a user's folder.

    `staging` names the folder to build in instead of a fresh temporary one; it may already
    hold work, and a failure keeps it (unless empty), so a resumable job (pretraining
    checkpoints) can continue from it on the next run.
    """
    import shutil

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(errno.EEXIST, "a file stands where an output folder goes", str(path))
    if path.is_dir() and any(path.iterdir()) and not (is_ours and is_ours(path)):
        raise FileExistsError(
            errno.EEXIST, "the folder is not empty and is not an output to replace", str(path)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if staging is not None:
        tmp = Path(staging)
        tmp.mkdir(exist_ok=True)
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        if staging is None:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.is_dir() and not any(tmp.iterdir()):
            tmp.rmdir()
        if isinstance(exc, OSError):
            _name(exc, path, str(tmp))
        raise


def _name(exc: OSError, path: Path, tmp) -> None:
    """Let an OSError name the file the caller asked for (disk full says no name; a
    refused temporary file names that), so the CLI's one line points at it."""
    if (
        exc.filename is None
        or exc.filename == tmp
        or (tmp is None and str(exc.filename).startswith(str(path.parent / f".{path.name}.")))
    ):
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
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def frame_sha256(df, columns) -> str:
    """SHA-256 of a table's `columns` (those present) as CSV text: what a result was computed on."""
    cols = [c for c in columns if c in df.columns]
    text = df[cols].astype(str).to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(text.encode()).hexdigest()


def jpeg_is_complete(data: bytes) -> bool:
    """False for a truncated JPEG file's bytes."""
    # libjpeg decodes a truncated file with only a warning (grey lower half), so look for
    # the End-Of-Image marker; 0xFF is byte-stuffed inside entropy data, so FFD9 near the
    # end can only be a real EOI (some writers pad a few bytes after it).
    return b"\xff\xd9" in data[-64:]


PACKAGE_DIR = Path(__file__).resolve().parent  # microfer/ (a checkout's, or site-packages')
SHIPPED_DIR = "_shipped"  # package data folder inside microfer/ that a wheel carries (see setup.py)


def _data_dir(env: str, name: str) -> Path:
    """The folder `name` (protocols or data_manifests): env var, else checkout, else packaged copy."""
    if os.environ.get(env):
        return Path(os.environ[env])
    package = PACKAGE_DIR
    root = package.parent
    checkout = root / name
    if (root / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout  # running from a checkout (editable install or PYTHONPATH)
    packaged = package / SHIPPED_DIR / name
    if packaged.is_dir() or not (root / "pyproject.toml").is_file():
        return packaged  # an installed wheel (errors name this folder when it is missing)
    return checkout


def protocols_dir() -> Path:
    return _data_dir("MICROFER_PROTOCOLS", "protocols")


def manifests_dir() -> Path:
    return _data_dir("MICROFER_MANIFESTS", "data_manifests")


# what every written result records of its software (results.json, bundles, weights, benches)
VERSIONED = (
    "microfer",
    "numpy",
    "scikit-learn",
    "pandas",
    "torch",
    "timm",
    "safetensors",
    "opencv-contrib-python-headless",
    "dlib-bin",
)


def package_versions() -> dict[str, str]:
    """Python's and the main packages' versions ("not installed" for a missing one)."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in VERSIONED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
