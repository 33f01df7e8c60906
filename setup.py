"""Build hooks only; the project's metadata lives in pyproject.toml.

The top-level protocols/ and data_manifests/ folders are the source of truth. A wheel
(`pip install .`, not editable) gets a copy of them as package data, made at build time
under microfer/_shipped/ (never committed), so an installed microfer finds its protocols
and shipped manifests without the checkout (see microfer.learn.protocols). An editable install
copies nothing: it reads the checkout's folders directly. An sdist carries both folders,
so a wheel built from it gets the same copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
# (source folder, file patterns, destination under the package)
SHIPPED = (
    ("protocols", ("*.yaml",), Path("microfer", "_shipped", "protocols")),
    ("data_manifests", ("*.csv", "README.md"), Path("microfer", "_shipped", "data_manifests")),
)


def _shipped_files():
    """(source file, destination relative to the build folder) pairs; fails when a folder is empty."""
    pairs = []
    for folder, patterns, dest in SHIPPED:
        files = sorted(
            {f for pattern in patterns for f in (ROOT / folder).glob(pattern) if f.is_file()}
        )
        if not files:
            raise SystemExit(
                f"error: {ROOT / folder}: no {' / '.join(patterns)} files to ship in the wheel"
            )
        pairs += [(f, dest / f.name) for f in files]
    return pairs


class BuildPyWithShipped(build_py):
    """build_py, plus the copy of protocols/ and data_manifests/ into microfer/_shipped/."""

    def run(self):
        super().run()
        if self.editable_mode:
            return  # editable: microfer.learn.protocols reads the checkout's folders
        target = Path(self.build_lib, "microfer", "_shipped")
        if target.exists():
            shutil.rmtree(target)  # no stale files from an earlier build
        for src, rel in _shipped_files():
            self.mkpath(str(Path(self.build_lib, rel).parent))
            self.copy_file(str(src), str(Path(self.build_lib, rel)))

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        return outputs + [str(Path(self.build_lib, rel)) for _, rel in _shipped_files()]


class SdistWithShipped(sdist):
    """sdist, plus protocols/ and data_manifests/ (so a wheel built from the sdist ships them)."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        for src, _ in _shipped_files():
            dest = Path(base_dir, src.relative_to(ROOT))
            self.mkpath(str(dest.parent))
            self.copy_file(str(src), str(dest))


setup(cmdclass={"build_py": BuildPyWithShipped, "sdist": SdistWithShipped})
