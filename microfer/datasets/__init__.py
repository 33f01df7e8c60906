"""Dataset adapters: each dataset's own coding file (as distributed) -> a manifest table.

    from microfer import datasets
    df = datasets.get("casme2").read(Path("CASME2-coding-20140508.xlsx"))
    df = datasets.read_manifest("data_manifests/casme2.csv")

Tables have exactly `records.MANIFEST_COLUMNS`; what an adapter repaired is in `notes`,
what it dropped in `df.attrs["dropped"]`. Rules shared by all adapters: `_coding`.
"""

from microfer.datasets._coding import CodingWarning, read_manifest, to_samples
from microfer.datasets.registry import Adapter, get, names

__all__ = ["Adapter", "CodingWarning", "get", "names", "read_manifest", "to_samples"]
