"""Circulated derived MEGC2019 composite inputs -> prepare-cache entries of the composite manifest.

A public repository of a published ME method (STSTNet) redistributes, for each MEGC2019
composite sample, two images derived from the licensed videos. This adapter reads that
folder exactly as circulated and writes one `Cache` entry per composite-manifest sample,
so `microfer loso --protocol megc2019-composite --cache CACHE` runs on them unchanged.

Layout under --root:
    combined_3_class2_for_optical_flow.csv   dataset,sub,filename_o,label,apex,imagename,sub_filename
    combined_datasets_whole/<imagename>      the APEX frame, face-cropped, 224x224x3 (grey as 3 equal channels)
    STSNet_whole_norm_u_v_os/<sub>_<filename_o> .png   onset->apex flow image, 28x28x3

Quirks of the circulated files, and what is done with them:
- every flow file name has a SPACE before `.png` (`sub02_EP01_11f .png`); a name without the
  space is accepted as a fallback (a renamed copy), the spaced one is what reports name;
- SMIC apex images carry the unpadded clip after the padded subject (`s01_s1_ne_01.jpg`
  for sub `s01`, clip `s01_ne_01`); the csv's `imagename` is used as given, and names
  built from the other spellings are tried only when it is absent;
- SAMM subjects may lose their padding (`6` for `006`) and CASME II subjects are `sub02`;
  rows are renamed with `megc2019._canonical`, the same rule as the composite manifest
  (smic -> smic_hs, s01 -> s1, s01_ne_01 -> s1_ne_01, 6 -> 006), and file names are
  looked up under the spelling written in the csv first, then the other paddings;
- `apex` and `sub_filename` are empty: onset/apex/offset come from the manifest row
  (-1 where it has none, e.g. SMIC apexes).

Channels of the flow image, found from the data (207 files, read with cv2, i.e. BGR):
    index 0 (B) = optical strain, index 1 (G) = vertical v, index 2 (R) = horizontal u
i.e. the files hold u, v, strain in RGB order. Strain is a non-negative magnitude, so after
the per-image min-max its median sits near 0: the median of per-image medians is 14 for
index 0 against 152 and 124 for indices 1 and 2 (index 0's median is below 64 in all 207
files). u vs v: recomputing strain sqrt(ux^2 + vy^2 + (uy + vx)^2 / 2) from the two other
channels (unknown per-image scale ratio searched) matches the stored strain better with
u = index 2, v = index 1 in 167 of 207 files (mean best correlation 0.87 vs 0.84).
Each channel was min-max scaled to 0..255 PER IMAGE by whoever made the files, so the
entries say flow_units = "minmax_per_image" (values /255, 0..1) and the pixel scale is lost.

A row is excluded, with the reason naming the file, when its apex or flow image is absent,
unreadable or of the wrong shape, or when the csv label disagrees with the manifest's
(a disagreement suggests the row describes another clip, so its images are not trusted);
excluded manifest samples are recorded with `Cache.record_failure`, which is what
`microfer loso` lists as excluded-with-reason. Csv rows that match no manifest sample are
reported in the summary only (there is no sample to attach them to).

Re-running is idempotent: inputs are re-read (milliseconds each) and compared with the
cached entry; an identical entry, or the same failure, is left untouched (feature caches
key on entry mtimes), a different one is rewritten.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from microfer.datasets import megc2019
from microfer.datasets._coding import frame_number, read_manifest, subject_number
from microfer.errors import AnnotationError, ClipError, LayoutError
from microfer.io import jpeg_is_complete, manifests_dir
from microfer.records import PreparedClip

NAME = "composite_inputs"
CSV_NAME = "combined_3_class2_for_optical_flow.csv"
APEX_DIR = "combined_datasets_whole"
FLOW_DIR = "STSNet_whole_norm_u_v_os"
CSV_COLUMNS = ("dataset", "sub", "filename_o", "label", "apex", "imagename", "sub_filename")
MANIFEST_NAME = "megc2019_composite.csv"
APEX_SHAPE = (224, 224, 3)
FLOW_SHAPE = (28, 28, 3)
U_CHANNEL, V_CHANNEL, STRAIN_CHANNEL = (
    2,
    1,
    0,
)  # cv2 (BGR) channel indices; see the module docstring
APEX_SOURCE = "derived_inputs"
LAYOUT = (
    f"{CSV_NAME}  ({','.join(CSV_COLUMNS)}; label 0/1/2)\n"
    f"{APEX_DIR}/sub02_EP01_11f.jpg  apex face crop 224x224; SMIC: s01_s1_ne_01.jpg\n"
    f"{FLOW_DIR}/sub02_EP01_11f .png  (space before .png) 28x28 u,v,strain min-max per image\n"
    f"prepares entries of the MEGC2019 composite manifest (no onset face: apex and flow inputs only)"
)


@dataclass(frozen=True)
class CompositeSettings:
    """What settings.json records for these entries; its hash is the cache folder name."""

    source: str = NAME
    format_version: int = 1  # bump when what an entry holds changes
    flow_units: str = "minmax_per_image"
    representations: tuple[str, ...] = ("apex", "flow")  # what the entries can give the evaluator

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class InputRow:
    """One csv row matched to a composite-manifest sample, with the file names to look for."""

    line: int  # line in the csv (the header is line 1)
    key: str  # dataset/subject/clip in this project's ids
    label: str  # composite class (csv and manifest agree)
    onset: int  # from the manifest; -1 where it has none
    apex: int
    offset: int
    apex_names: tuple[str, ...]  # candidates under APEX_DIR, the expected one first
    flow_names: tuple[str, ...]  # candidates under FLOW_DIR, the expected one first


@dataclass(frozen=True)
class RowProblem:
    """A csv row that gives no entry, and why."""

    line: int
    key: str  # the manifest sample it stands for; "" when it matches none
    stage: str  # csv | manifest | label | inputs
    kind: str  # short reason, for counting
    reason: str  # one line naming the file and what is wrong


@dataclass
class CompositeTable:
    root: Path
    manifest: str  # where the manifest came from, for messages
    rows: list[InputRow]
    problems: list[RowProblem]  # rows excluded before any image is read


def _spellings(
    dataset: str, sub: str, clip: str, subject: str, canonical_clip: str
) -> tuple[list[str], list[str]]:
    """Subject and clip spellings a file name may use: as written in the csv first."""
    n = subject_number(sub)
    subjects = {
        "smic": [sub, subject, f"s{n:02d}"],
        "samm": [sub, subject, str(n)],
        "casme2": [sub, subject],
    }[dataset]
    clips = [clip, canonical_clip]
    if dataset == "smic":
        clips.append(canonical_clip.replace(f"{subject}_", f"s{n:02d}_", 1))
    return list(dict.fromkeys(subjects)), list(dict.fromkeys(clips))


def _candidates(
    dataset: str, sub: str, clip: str, subject: str, canonical_clip: str, imagename: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    subjects, clips = _spellings(dataset, sub, clip, subject, canonical_clip)
    # the circulated apex names join the subject as written with the canonical clip (s01_s1_ne_01)
    stems = (
        [f"{s}_{c}" for s in subjects for c in reversed(clips)]
        if dataset == "smic"
        else [f"{s}_{c}" for s in subjects for c in clips]
    )
    apex = ([imagename] if imagename else []) + [f"{stem}.jpg" for stem in stems]
    flow_stems = [f"{s}_{c}" for s in subjects for c in clips]
    flow = [f"{stem} .png" for stem in flow_stems] + [f"{stem}.png" for stem in flow_stems]
    return tuple(dict.fromkeys(apex)), tuple(dict.fromkeys(flow))


def _frame(value) -> int:
    number = frame_number(value)
    return -1 if number is None else number


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise LayoutError(
            f"{path} is missing; expected the composite inputs csv with columns {','.join(CSV_COLUMNS)}"
        )
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise AnnotationError(
            f"{path} is not a readable csv ({type(exc).__name__}); "
            f"expected columns {','.join(CSV_COLUMNS)}"
        ) from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in CSV_COLUMNS[:4] if c not in df.columns]
    if missing:
        raise AnnotationError(
            f"{path} lacks column(s) {', '.join(missing)}; expected {','.join(CSV_COLUMNS)}"
        )
    return df


def _manifest(manifest) -> tuple[pd.DataFrame, str]:
    if isinstance(manifest, pd.DataFrame):
        return manifest, "the given manifest"
    if manifest is None:
        manifest = manifests_dir() / MANIFEST_NAME
    return read_manifest(manifest), str(manifest)


def _check_layout(root: Path) -> None:
    if not root.is_dir():
        raise LayoutError(
            f"{root}: composite inputs folder not found (expected {CSV_NAME}, {APEX_DIR}/, {FLOW_DIR}/)"
        )
    for sub in (APEX_DIR, FLOW_DIR):
        if not (root / sub).is_dir():
            raise LayoutError(
                f"{root / sub} is missing; expected the composite inputs layout "
                f"({CSV_NAME}, {APEX_DIR}/, {FLOW_DIR}/)"
            )


@dataclass
class _Matcher:
    """Matches csv rows to the manifest samples, remembering which samples were seen."""

    csv_path: Path
    index: dict  # (dataset, subject, clip) -> manifest row
    manifest_name: str
    seen: dict[str, int] = field(default_factory=dict)  # key -> csv line of its first row

    def match(self, line: int, rec: dict) -> InputRow | RowProblem:
        cells = {c: str(rec.get(c, "")).strip() for c in CSV_COLUMNS}
        where = f"{self.csv_path} line {line}"
        ds, sub, clip = cells["dataset"].lower(), cells["sub"], cells["filename_o"]
        if ds not in megc2019.DATASETS:
            return RowProblem(
                line,
                "",
                "csv",
                "unknown dataset",
                f"{where}: dataset {cells['dataset']!r} is not one of smic, casme2, samm",
            )
        try:
            subject, canonical_clip = megc2019._canonical(ds, sub, clip)
        except AnnotationError as exc:
            return RowProblem(line, "", "csv", "bad subject", f"{where}: {exc}")
        dataset = megc2019.DATASETS[ds]
        key = f"{dataset}/{subject}/{canonical_clip}"
        m = self.index.get((dataset, subject, canonical_clip))
        if m is None:
            return RowProblem(
                line,
                "",
                "manifest",
                "not in the composite manifest",
                f"{where}: {ds} {sub} {clip} ({key}) is not a sample of {self.manifest_name}",
            )
        if key in self.seen:
            return RowProblem(
                line,
                "",
                "csv",
                "duplicate row",
                f"{where}: {key} again (first on line {self.seen[key]}); this row is ignored",
            )
        self.seen[key] = line
        label = cells["label"]
        csv_class = megc2019.CLASSES[int(label)] if label in ("0", "1", "2") else None
        if csv_class != str(m["label"]):
            return RowProblem(
                line,
                key,
                "label",
                "label disagrees with the manifest",
                f"{where}: label {label!r} ({csv_class or 'not 0/1/2'}) disagrees with "
                f"the manifest's {m['label']!r} for {key}",
            )
        apex_names, flow_names = _candidates(
            ds, sub, clip, subject, canonical_clip, cells["imagename"]
        )
        return InputRow(
            line=line,
            key=key,
            label=csv_class,
            onset=_frame(m["onset"]),
            apex=_frame(m["apex"]),
            offset=_frame(m["offset"]),
            apex_names=apex_names,
            flow_names=flow_names,
        )


def read_table(root, manifest=None) -> CompositeTable:
    """The csv of `root` matched to the composite manifest (default: the shipped one).

    Only the csv is read here; LayoutError / AnnotationError when the folder itself is not
    the expected layout, RowProblem for single rows.
    """
    root = Path(root)
    _check_layout(root)
    df = _read_csv(root / CSV_NAME)
    mf, mf_name = _manifest(manifest)
    index = {
        (str(r["dataset"]), str(r["subject"]), str(r["clip"])): r for r in mf.to_dict("records")
    }
    matcher = _Matcher(root / CSV_NAME, index, mf_name)
    rows: list[InputRow] = []
    problems: list[RowProblem] = []
    for i, rec in enumerate(df.to_dict("records"), start=2):
        matched = matcher.match(i, rec)
        (rows if isinstance(matched, InputRow) else problems).append(matched)
    return CompositeTable(root, mf_name, rows, problems)


def _find(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    others = f" (nor {', '.join(repr(n) for n in names[1:4])})" if len(names) > 1 else ""
    raise _clip_error(f"{what} missing: {folder / names[0]} does not exist{others}")


def _clip_error(message: str) -> ClipError:
    exc = ClipError(message)
    exc.kind = message.split(":", 1)[0]  # e.g. "flow image missing", for the summary counts
    return exc


def _decode(path: Path, flags: int, what: str) -> np.ndarray:
    import cv2

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _clip_error(f"{what} unreadable: {path}: {exc.strerror or exc}") from None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if image is None:
        raise _clip_error(
            f"{what} unreadable: {path} could not be decoded as an image ({len(data)} bytes)"
        )
    if path.suffix.lower() in (".jpg", ".jpeg") and not jpeg_is_complete(data):
        # libjpeg decodes a truncated file with a warning only (grey lower half)
        raise _clip_error(
            f"{what} unreadable: {path} is truncated (JPEG without end-of-image marker)"
        )
    return image


def read_apex_image(path: Path) -> np.ndarray:
    """The 224x224 apex crop as BGR uint8; ClipError naming the file otherwise."""
    import cv2

    image = _decode(path, cv2.IMREAD_COLOR, "apex image")
    if image.shape != APEX_SHAPE:
        raise _clip_error(
            f"apex image of the wrong shape: {path} is {image.shape}, expected {APEX_SHAPE}"
        )
    return image


def read_flow_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(flow (28, 28, 2) u, v in 0..1, strain (28, 28) in 0..1) float32; ClipError naming the file."""
    import cv2

    # UNCHANGED, not COLOR: a grey or 4-channel file must fail here, not be converted into one
    image = _decode(path, cv2.IMREAD_UNCHANGED, "flow image")
    if image.shape != FLOW_SHAPE or image.dtype != np.uint8:
        raise _clip_error(
            f"flow image of the wrong shape: {path} is {image.shape} {image.dtype}, "
            f"expected {FLOW_SHAPE} uint8"
        )
    x = image.astype(np.float32) / 255.0
    return np.ascontiguousarray(np.stack([x[..., U_CHANNEL], x[..., V_CHANNEL]], axis=2)), x[
        ..., STRAIN_CHANNEL
    ].copy()


def load_row(root, row: InputRow) -> PreparedClip:
    """One matched row -> the PreparedClip its two images give (ClipError naming the file)."""
    root = Path(root)
    apex_path = _find(root / APEX_DIR, row.apex_names, "apex image")
    flow_path = _find(root / FLOW_DIR, row.flow_names, "flow image")
    apex_face = read_apex_image(apex_path)
    flow, strain = read_flow_image(flow_path)
    side = APEX_SHAPE[0]
    return PreparedClip(
        onset=row.onset,
        apex=row.apex,
        offset=row.offset,
        apex_source=APEX_SOURCE,
        onset_face=np.zeros((0, 0, 3), np.uint8),
        apex_face=apex_face,
        flow=flow,
        strain=strain,
        landmarks=np.zeros((68, 2), np.float32),
        transform=np.eye(2, 3, dtype=np.float32),
        face_box=(0, 0, side, side),
        flow_units="minmax_per_image",
        notes=f"derived inputs ({NAME}): apex {APEX_DIR}/{apex_path.name}, flow {FLOW_DIR}/{flow_path.name} "
        f"(u, v, strain min-max per image); no onset face",
    )


def same_entry(a: PreparedClip, b: PreparedClip) -> bool:
    """Identical content (arrays bit for bit, dtypes included, and every other field)."""
    for f in fields(PreparedClip):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            x, y = np.asarray(x), np.asarray(y)
            if x.dtype != y.dtype or not np.array_equal(x, y):
                return False
        elif (tuple(x) if f.name == "face_box" else x) != (tuple(y) if f.name == "face_box" else y):
            return False
    return True


# ---------------------------------------------------------------------------- cache driver
@dataclass
class CompositeSummary:
    settings_key: str
    cache_dir: Path
    csv_rows: int = 0
    written: int = 0  # entries written (new or changed) in this run
    unchanged: int = 0  # entries already there and identical
    failed: list[RowProblem] = field(
        default_factory=list
    )  # manifest samples excluded, with reasons
    unmatched: list[RowProblem] = field(
        default_factory=list
    )  # csv rows standing for no manifest sample
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return self.written + self.unchanged

    def text(self) -> str:
        lines = [
            f"prepare {NAME}: {self.csv_rows} csv rows -> {self.cache_dir}",
            f"  ok: {self.ok} (written now {self.written}, already cached {self.unchanged}) "
            f"in {self.seconds:.1f} s",
            f"  failed: {len(self.failed)}",
        ]
        for kind, n in sorted(Counter(p.kind for p in self.failed).items()):
            lines.append(f"    {n:4d}  {kind}")
        lines += [f"    {p.key}: {p.reason}" for p in self.failed[:20]]
        if len(self.failed) > 20:
            lines.append(f"    ... {len(self.failed) - 20} more in {self.cache_dir / 'index.csv'}")
        lines.append(f"  csv rows not used: {len(self.unmatched)}")
        lines += [f"    {p.reason}" for p in self.unmatched[:20]]
        if len(self.unmatched) > 20:
            lines.append(f"    ... {len(self.unmatched) - 20} more")
        return "\n".join(lines)
