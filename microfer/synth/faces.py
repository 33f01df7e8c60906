"""Synthetic identities: real face photos composed onto a dataset-sized canvas.

Each subject of a synthetic dataset is one identity: a photo (with its 68 dlib landmarks)
scaled, rotated and placed on a canvas the size of the dataset's frames. When more subjects
are asked for than there are usable photos, extra identities are variants of the photos
(flip, in-plane rotation, scale, colour gain, slight blur), drawn deterministically from the seed.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from microfer.clip import face as clip_face
from microfer.errors import MicroferError

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
MIN_FACE_WIDTH = 64  # px in the photo: smaller faces upscale into a blur no aligner can use

# dlib 68-point index of each point's mirror image (left/right swapped), used after a flip.
MIRROR_68 = np.array(
    list(range(16, -1, -1))  # jaw
    + list(range(26, 21, -1))
    + list(range(21, 16, -1))  # brows
    + [27, 28, 29, 30]
    + [35, 34, 33, 32, 31]  # nose
    + [45, 44, 43, 42, 47, 46]
    + [39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65],  # inner lips
    dtype=np.int64,
)


@dataclass(frozen=True)
class Identity:
    """One synthetic subject: a neutral base frame and its landmarks (canvas coordinates)."""

    name: str  # photo stem + variant, e.g. "grace_hopper/v0"
    image: np.ndarray  # (H, W, 3) uint8 BGR, the neutral frame
    landmarks: np.ndarray  # (68, 2) float32

    @property
    def face_width(self) -> float:
        return float(np.linalg.norm(self.landmarks[16] - self.landmarks[0]))

    @property
    def face_box(self) -> tuple[int, int, int, int]:
        """Box around the landmarks, grown upwards to include the forehead."""
        x0, y0 = self.landmarks.min(0)
        x1, y1 = self.landmarks.max(0)
        h, w = self.image.shape[:2]
        top = y0 - 0.25 * (y1 - y0)
        return (
            max(0, int(x0)),
            max(0, int(top)),
            min(w, int(np.ceil(x1)) + 1),
            min(h, int(np.ceil(y1)) + 1),
        )


@dataclass(frozen=True)
class FacePhoto:
    path: Path
    landmarks: np.ndarray  # (68, 2) float32, photo coordinates

    @property
    def name(self) -> str:
        return self.path.stem


def default_faces_dir() -> Path:
    """The public-domain faces shipped with microfer."""
    return Path(str(importlib.resources.files("microfer") / "assets" / "faces"))


def find_face_photos(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively), in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MicroferError(
            f"faces folder {folder} does not exist (expected a folder of face photos)"
        )
    return sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


@lru_cache(maxsize=256)
def _detect_cached(path: str, mtime_ns: int, size: int) -> np.ndarray | None:
    image = read_photo(Path(path))
    if image is None:
        return None
    found = clip_face.detect_landmarks(image)
    if found is None:
        return None
    pts = found.points
    h, w = image.shape[:2]
    # a face cut by the photo border cannot be composed into a whole face
    if pts[:, 0].min() < 0 or pts[:, 1].min() < 0 or pts[:, 0].max() >= w or pts[:, 1].max() >= h:
        return None
    if np.linalg.norm(pts[16] - pts[0]) < MIN_FACE_WIDTH:
        return None
    return pts.astype(np.float32)


def read_photo(path: Path) -> np.ndarray | None:
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return image


def usable_photos(folder: Path | None = None, limit: int | None = None) -> list[FacePhoto]:
    """Photos with one whole, large-enough face (the largest face when several).

    Landmarks are cached per file within the process, so a second layout of the same run
    does not detect again. Stops after `limit` usable photos.
    """
    folder = default_faces_dir() if folder is None else Path(folder)
    found: list[FacePhoto] = []
    for path in find_face_photos(folder):
        st = path.stat()
        pts = _detect_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)
        if pts is not None:
            found.append(FacePhoto(path=path, landmarks=pts))
            if limit is not None and len(found) >= limit:
                break
    if not found:
        raise MicroferError(
            f"no usable face in {folder}: expected jpg/png photos with one whole frontal face "
            f"at least {MIN_FACE_WIDTH} px wide"
        )
    return found


@dataclass(frozen=True)
class Augment:
    """How a photo is turned into one identity (all drawn from the seed)."""

    flip: bool = False
    rotation_deg: float = 0.0
    face_width_px: float = 240.0
    offset: tuple[float, float] = (0.0, 0.0)  # of the face centre from the canvas centre, px
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)  # B, G, R
    blur_sigma: float = 0.0

    def describe(self) -> str:
        parts = [f"w{self.face_width_px:.0f}"]
        if self.flip:
            parts.append("flip")
        if abs(self.rotation_deg) > 1e-6:
            parts.append(f"rot{self.rotation_deg:+.1f}")
        if self.blur_sigma > 0:
            parts.append(f"blur{self.blur_sigma:.1f}")
        if any(abs(g - 1) > 1e-6 for g in self.gain):
            parts.append("gain" + "/".join(f"{g:.2f}" for g in self.gain))
        return ",".join(parts)


def draw_augment(
    rng: np.random.Generator,
    variant: int,
    face_width: tuple[float, float],
    frame_size: tuple[int, int],
) -> Augment:
    """Variant 0 keeps the photo as it is (only size and place); later variants change it."""
    w, h = frame_size
    width = float(rng.uniform(*face_width))
    offset = (float(rng.uniform(-0.04, 0.04) * w), float(rng.uniform(-0.04, 0.02) * h))
    if variant == 0:
        return Augment(face_width_px=width, offset=offset, rotation_deg=float(rng.uniform(-2, 2)))
    return Augment(
        flip=variant % 2 == 1,
        rotation_deg=float(rng.uniform(-8, 8)),
        face_width_px=width,
        offset=offset,
        gain=tuple(float(g) for g in rng.uniform(0.85, 1.15, size=3)),
        blur_sigma=float(rng.choice([0.0, rng.uniform(0.5, 1.2)])),
    )


def compose(
    photo_image: np.ndarray, photo_landmarks: np.ndarray, aug: Augment, frame_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Place the face on a canvas of `frame_size` (W, H); returns (canvas, landmarks).

    Outside the photo the canvas is a flat background of the photo's border colour,
    feathered in, so no mirrored copy of the face appears (it would be a second face).
    """
    image = photo_image
    pts = photo_landmarks.astype(np.float64)
    if aug.flip:
        image = image[:, ::-1].copy()
        pts = pts.copy()
        pts[:, 0] = image.shape[1] - 1 - pts[:, 0]
        pts = pts[MIRROR_68]
    w, h = frame_size
    face_w = np.linalg.norm(pts[16] - pts[0])
    scale = aug.face_width_px / face_w
    centre = pts.mean(0)
    target = np.array([w / 2 + aug.offset[0], h / 2 + aug.offset[1]])
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), aug.rotation_deg, scale)
    m[:, 2] += target - centre
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    background = np.median(border, axis=0)
    canvas = cv2.warpAffine(
        image,
        m,
        (w, h),
        flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REPLICATE,
    ).astype(np.float32)
    mask = cv2.warpAffine(
        np.ones(image.shape[:2], np.float32),
        m,
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    mask = cv2.GaussianBlur(mask * mask, (0, 0), sigmaX=max(2.0, 0.02 * w))[..., None]
    canvas = canvas * mask + background[None, None, :] * (1 - mask)
    if aug.blur_sigma > 0:
        canvas = cv2.GaussianBlur(canvas, (0, 0), sigmaX=aug.blur_sigma)
    canvas = canvas * np.array(aug.gain, np.float32)[None, None, :]
    out_pts = pts @ m[:, :2].T + m[:, 2]
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), out_pts.astype(np.float32)


def load_identities(
    n: int,
    *,
    faces: Path | None = None,
    frame_size: tuple[int, int] = (640, 480),
    face_width: tuple[float, float] = (200, 280),
    seed: int = 0,
    offset: int = 0,
) -> list[Identity]:
    """`n` identities; subject i uses photo (i + offset) mod P, variant (i + offset) // P.

    `offset` lets datasets generated together start from different photos.
    """
    photos = usable_photos(faces)
    out: list[Identity] = []
    for i in range(n):
        k = i + offset
        photo = photos[k % len(photos)]
        variant = k // len(photos)
        rng = np.random.default_rng([seed, 7919, i, offset])
        aug = draw_augment(rng, variant, face_width, frame_size)
        image = read_photo(photo.path)
        canvas, pts = compose(image, photo.landmarks, aug, frame_size)
        out.append(
            Identity(name=f"{photo.name}/v{variant}:{aug.describe()}", image=canvas, landmarks=pts)
        )
    return out
