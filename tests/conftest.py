import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# Developer/CI-only real material (annotation files, face photos), beside the checkout.
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real annotation files and faces not available ({SHARED} is absent)")
    return SHARED


@pytest.fixture(scope="session")
def annotations_dir(shared_dir) -> Path:
    return shared_dir / "annotations"


@pytest.fixture(scope="session")
def faces_dir(shared_dir) -> Path:
    return shared_dir / "faces"


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The quick demo (synthetic clips, a cache, LOSO, a bundle, held-out videos), run once."""
    from microfer.bench.demo import run_demo

    return run_demo(tmp_path_factory.mktemp("demo"), quick=True, seed=0, echo=None, progress=False)
