"""The supported datasets: name -> Adapter (fps, expected layout, default protocol, reader)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from microfer.datasets import casme2, casme_sq, samm, samm_lv, smic
from microfer.errors import MicroferError


@dataclass(frozen=True)
class Adapter:
    """One dataset: how its coding file and folders become a manifest table."""

    name: str
    title: str
    fps: float
    layout: str  # expected on-disk layout and coding file, for humans
    default_protocol: Optional[str]  # protocols/<name>.yaml the `label` column follows
    coding_required: bool  # False: the clip folders under root can replace the coding file
    _reader: Callable[..., pd.DataFrame] = field(repr=False, compare=False)

    def read(self, coding: Optional[Path], root: Optional[Path] = None) -> pd.DataFrame:
        """Manifest table (records.MANIFEST_COLUMNS) from the coding file, or from `root` where allowed.

        `df.attrs["dropped"]` lists the rows left out, with reasons; `df.attrs["source"]` the input.
        """
        return self._reader(
            Path(coding) if coding is not None else None, Path(root) if root is not None else None
        )


def _smic(camera: smic.Camera) -> Adapter:
    return Adapter(
        camera.name,
        f"SMIC {camera.folder}",
        camera.fps,
        smic.layout(camera),
        camera.default_protocol,
        False,
        partial(smic.read, camera),
    )


_ADAPTERS = {
    a.name: a
    for a in (
        Adapter(
            casme2.NAME,
            "CASME II",
            casme2.FPS,
            casme2.LAYOUT,
            casme2.DEFAULT_PROTOCOL,
            True,
            casme2.read,
        ),
        Adapter(samm.NAME, "SAMM", samm.FPS, samm.LAYOUT, samm.DEFAULT_PROTOCOL, True, samm.read),
        _smic(smic.CAMERAS["smic_hs"]),
        _smic(smic.CAMERAS["smic_vis"]),
        _smic(smic.CAMERAS["smic_nir"]),
        Adapter(
            casme_sq.NAME,
            "CAS(ME)^2",
            casme_sq.FPS,
            casme_sq.LAYOUT,
            casme_sq.DEFAULT_PROTOCOL,
            True,
            casme_sq.read,
        ),
        Adapter(
            samm_lv.NAME,
            "SAMM Long Videos",
            samm_lv.FPS,
            samm_lv.LAYOUT,
            samm_lv.DEFAULT_PROTOCOL,
            True,
            samm_lv.read,
        ),
    )
}


def names() -> list[str]:
    return list(_ADAPTERS)


def get(name: str) -> Adapter:
    try:
        return _ADAPTERS[name]
    except KeyError:
        raise MicroferError(
            f"unknown dataset '{name}'; supported: {', '.join(_ADAPTERS)}"
        ) from None
