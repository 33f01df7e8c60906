"""Expression motion: landmark displacements -> dense field -> warped frames over time.

An expression is a few FACS-like primitives, each moving a set of the 68 landmarks in a
direction given in face coordinates (x along the eye line, y down the face). The landmark
displacements, with every other landmark held still, are interpolated to a dense field by
Gaussian radial basis functions, so the motion stays local to the moving regions. Over a
clip the field is scaled by a time profile (neutral, raised-cosine rise to the apex, fall to
the offset, neutral) and the frame is warped with cv2.remap; sensor noise, a slow sub-pixel
head drift and a faint illumination flicker are added, as a real camera would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import cv2
import numpy as np

from microfer.errors import MicroferError
from microfer.synth.faces import Identity

# Points the 68 landmarks lack: cheek centres (where AU6 bulges) and the nasolabial folds
# (which AU12/AU10 deepen), indices 68-71, as means of landmarks.
VIRTUAL_POINTS = {68: (1, 31, 40), 69: (15, 35, 47), 70: (31, 48), 71: (35, 54)}
LEFT_CHEEK, RIGHT_CHEEK, LEFT_FOLD, RIGHT_FOLD = 68, 69, 70, 71

# primitive -> (action unit code, [(landmark indices, (dx, dy) in face coordinates)])
# Directions are in the image's sense: x to the image right, y down; "up" is -y.
# dlib 17-21 / 36-41 / 48 are on the image LEFT (the subject's right side).
PRIMITIVES: dict[str, tuple[str, list[tuple[Sequence[int], tuple[float, float]]]]] = {
    "brow_raise": ("1+2", [(range(17, 27), (0.0, -1.0))]),
    "inner_brow_raise": ("1", [((20, 21, 22, 23), (0.0, -1.0)), ((19, 24), (0.0, -0.5))]),
    "brow_lower": ("4", [(range(17, 22), (0.45, 0.85)), (range(22, 27), (-0.45, 0.85))]),
    "brow_raise_together": ("1+2+4", [(range(17, 22), (0.5, -0.8)), (range(22, 27), (-0.5, -0.8))]),
    "jaw_drop": (
        "26",
        [
            ((56, 57, 58, 65, 66, 67), (0.0, 1.0)),
            ((55, 59), (0.0, 0.6)),
            (range(6, 11), (0.0, 1.0)),
        ],
    ),
    "lip_corner_pull": (
        "12",
        [
            ((48, 60), (-0.6, -0.8)),
            ((54, 64), (0.6, -0.8)),
            ((49, 59), (-0.3, -0.4)),
            ((53, 55), (0.3, -0.4)),
            ((LEFT_FOLD,), (-0.3, -0.5)),
            ((RIGHT_FOLD,), (0.3, -0.5)),
        ],
    ),
    "cheek_raise": (
        "6",
        [
            ((LEFT_CHEEK, RIGHT_CHEEK), (0.0, -0.8)),
            ((1, 2, 3, 13, 14, 15), (0.0, -0.3)),
            ((40, 41, 46, 47), (0.0, -0.3)),
        ],
    ),
    "nose_wrinkle": ("9", [((27, 28), (0.0, -0.4)), (range(29, 36), (0.0, -1.0))]),
    "upper_lip_raise": (
        "10",
        [((49, 50, 51, 52, 53, 61, 62, 63), (0.0, -1.0)), ((LEFT_FOLD, RIGHT_FOLD), (0.0, -0.5))],
    ),
    "lip_press": (
        "24",
        [
            ((49, 50, 51, 52, 53, 61, 62, 63), (0.0, 0.8)),
            ((55, 56, 57, 58, 59, 65, 66, 67), (0.0, -1.0)),
        ],
    ),
    "lip_corner_depress": ("15", [((48, 60), (-0.15, 1.0)), ((54, 64), (0.15, 1.0))]),
    "unilateral_corner": ("L14", [((54, 64), (0.75, -0.65)), ((53, 55), (0.35, -0.3))]),
    "lip_stretch": ("20", [((48, 60), (-1.0, 0.25)), ((54, 64), (1.0, 0.25))]),
    "lid_tighten": ("7", [((40, 41, 46, 47), (0.0, -1.0)), ((37, 38, 43, 44), (0.0, 0.35))]),
    "chin_raise": ("17", [((7, 8, 9), (0.0, -1.0)), ((56, 57, 58), (0.0, -0.7))]),
    "lip_pucker": ("18", [((48, 60), (1.0, 0.0)), ((54, 64), (-1.0, 0.0))]),
    "dimpler": ("14", [((48, 60), (-0.8, 0.1)), ((54, 64), (0.8, 0.1))]),
}

# fixed expressions: primitive -> relative weight
FIXED: dict[str, dict[str, float]] = {
    "surprise": {"brow_raise": 1.0, "jaw_drop": 0.8},
    "happiness": {"lip_corner_pull": 1.0, "cheek_raise": 0.5},
    "disgust": {"nose_wrinkle": 1.0, "upper_lip_raise": 0.8},
    "repression": {"lip_press": 1.0},
    "anger": {"brow_lower": 1.0},
    "contempt": {"unilateral_corner": 1.0},
    "sadness": {"inner_brow_raise": 1.0, "lip_corner_depress": 0.8},
    "fear": {"brow_raise_together": 1.0, "lip_stretch": 0.8},
}
FIXED["positive"] = FIXED["happiness"]
# varied expressions: each clip draws one or two of these primitives
VARIED: dict[str, list[str]] = {
    "negative": ["brow_lower", "nose_wrinkle", "upper_lip_raise", "lip_corner_depress"],
    "others": ["lid_tighten", "chin_raise", "lip_pucker", "dimpler"],
}
VARIED["other"] = VARIED["others"]


def canonical_emotion(emotion: str) -> str:
    key = emotion.strip().lower()
    if key not in FIXED and key not in VARIED:
        raise MicroferError(
            f"synth has no motion for emotion {emotion!r}; known: {', '.join(sorted(set(FIXED) | set(VARIED)))}"
        )
    return key


@dataclass(frozen=True)
class Pattern:
    """The landmark motion of one expression instance (directions in face coordinates)."""

    emotion: str
    moves: tuple[tuple[tuple[int, ...], tuple[float, float]], ...]
    primitives: tuple[str, ...] = ()

    @property
    def action_units(self) -> str:
        return "+".join(PRIMITIVES[name][0] for name in self.primitives)

    @property
    def moving_landmarks(self) -> list[int]:
        return sorted({i for idx, _ in self.moves for i in idx})


def draw_pattern(emotion: str, rng: np.random.Generator) -> Pattern:
    """One instance of `emotion`: its primitives with per-clip jitter of weight and direction."""
    key = canonical_emotion(emotion)
    if key in FIXED:
        weights = FIXED[key]
    else:
        pool = VARIED[key]
        k = int(rng.integers(1, 3))
        chosen = rng.choice(len(pool), size=k, replace=False)
        weights = {pool[int(c)]: float(rng.uniform(0.6, 1.0)) for c in sorted(chosen)}
    moves = []
    for name, w in weights.items():
        w = w * float(rng.uniform(0.8, 1.2))
        for idx, (dx, dy) in PRIMITIVES[name][1]:
            angle = float(rng.normal(0, np.deg2rad(6)))
            c, s = np.cos(angle), np.sin(angle)
            moves.append(
                (tuple(int(i) for i in idx), (w * (c * dx - s * dy), w * (s * dx + c * dy)))
            )
    return Pattern(emotion=emotion, moves=tuple(moves), primitives=tuple(weights))


def control_points(landmarks: np.ndarray) -> np.ndarray:
    """(72, 2): the 68 landmarks followed by the virtual points."""
    extra = [landmarks[list(idx)].mean(0) for _, idx in sorted(VIRTUAL_POINTS.items())]
    return np.vstack([landmarks, np.array(extra, dtype=landmarks.dtype)])


def face_axes(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit x (along the eye line) and y (down the face) axes of the face, image coordinates."""
    left, right = landmarks[36:42].mean(0), landmarks[42:48].mean(0)
    x = (right - left) / max(1e-6, float(np.linalg.norm(right - left)))
    return x, np.array([-x[1], x[0]])


def landmark_displacements(landmarks: np.ndarray, pattern: Pattern) -> np.ndarray:
    """(72, 2) displacement of each control point (image coordinates, unnormalised); still ones 0."""
    ax, ay = face_axes(landmarks)
    disp = np.zeros((68 + len(VIRTUAL_POINTS), 2), np.float64)
    for idx, (dx, dy) in pattern.moves:
        disp[list(idx)] += dx * ax + dy * ay
    return disp


@dataclass
class Field:
    """A dense displacement field on a region of the frame (forward: content moves by it)."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the region it covers
    dx: np.ndarray  # (y1-y0, x1-x0) float32
    dy: np.ndarray

    @property
    def magnitude(self) -> np.ndarray:
        return np.hypot(self.dx, self.dy)

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        """(H, W) magnitude on the whole frame."""
        out = np.zeros(shape, np.float32)
        x0, y0, x1, y1 = self.box
        out[y0:y1, x0:x1] = self.magnitude
        return out


def dense_field(
    identity: Identity,
    pattern: Pattern,
    amplitude_px: float,
    sigma_frac: float = 0.07,
    ridge: float = 0.05,
) -> Field:
    """Gaussian-RBF interpolation of the landmark displacements, peak magnitude = amplitude_px.

    Every landmark is a centre; still landmarks pin the field to zero, which keeps e.g. the
    eyes still while the brows rise. The ridge term keeps close, differently moving points
    (inner/outer lip) from producing overshoots.
    """
    pts = control_points(identity.landmarks.astype(np.float64))
    sigma = sigma_frac * identity.face_width
    values = landmark_displacements(pts, pattern)
    if not np.any(values):
        raise MicroferError(f"expression {pattern.emotion!r} moves no landmark")
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    kernel = np.exp(-d2 / (2 * sigma**2))
    weights = np.linalg.solve(kernel + ridge * np.eye(len(pts)), values)
    h, w = identity.image.shape[:2]
    pad = 4 * sigma
    x0, y0 = np.maximum(0, np.floor(pts.min(0) - pad)).astype(int)
    x1 = int(min(w, np.ceil(pts[:, 0].max() + pad)))
    y1 = int(min(h, np.ceil(pts[:, 1].max() + pad)))
    xs = np.arange(x0, x1, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)
    # separable Gaussian: exp(-(dx^2+dy^2)/2s^2) = gx * gy, one (N, W) and one (N, H) table
    gx = np.exp(-((xs[None, :] - pts[:, :1].astype(np.float32)) ** 2) / np.float32(2 * sigma**2))
    gy = np.exp(-((ys[None, :] - pts[:, 1:].astype(np.float32)) ** 2) / np.float32(2 * sigma**2))
    wx = weights[:, 0].astype(np.float32)
    wy = weights[:, 1].astype(np.float32)
    fx = (gy * wx[:, None]).T @ gx
    fy = (gy * wy[:, None]).T @ gx
    peak = float(np.hypot(fx, fy).max())
    scale = np.float32(amplitude_px / peak)
    return Field(
        box=(int(x0), int(y0), x1, y1),
        dx=(fx * scale).astype(np.float32),
        dy=(fy * scale).astype(np.float32),
    )


def warp_by_field(frame: np.ndarray, fields: Sequence[tuple[Field, float]]) -> np.ndarray:
    """`frame` with its content moved by the sum of amount x field (a real video's frame, whose
    own head pose is already in it: no head transform, unlike `iter_frames`). Only the
    fields' boxes are resampled, with the same backward map and interpolation as
    `iter_frames`: output(y) = frame(y - D(y))."""
    out = frame.copy()
    if not fields:
        return out
    x0 = min(f.box[0] for f, _ in fields)
    y0 = min(f.box[1] for f, _ in fields)
    x1 = max(f.box[2] for f, _ in fields)
    y1 = max(f.box[3] for f, _ in fields)
    map_x = np.repeat(np.arange(x0, x1, dtype=np.float32)[None, :], y1 - y0, axis=0)
    map_y = np.repeat(np.arange(y0, y1, dtype=np.float32)[:, None], x1 - x0, axis=1)
    for f, a in fields:
        bx0, by0, bx1, by1 = f.box
        sub = (slice(by0 - y0, by1 - y0), slice(bx0 - x0, bx1 - x0))
        map_x[sub] -= np.float32(a) * f.dx
        map_y[sub] -= np.float32(a) * f.dy
    out[y0:y1, x0:x1] = cv2.remap(
        frame, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
    return out


def time_profile(n_frames: int, onset: int, apex: int, offset: int) -> np.ndarray:
    """Expression intensity per frame index: 0 up to onset, raised-cosine rise to 1 at the
    apex, fall to 0 at the offset, 0 after. Indices are 0-based positions in the clip."""
    if not (0 <= onset < apex < offset < n_frames):
        raise MicroferError(
            f"need 0 <= onset < apex < offset < n_frames, got {onset}, {apex}, {offset}, {n_frames}"
        )
    i = np.arange(n_frames, dtype=np.float64)
    p = np.zeros(n_frames)
    rise = (i > onset) & (i <= apex)
    p[rise] = 0.5 * (1 - np.cos(np.pi * (i[rise] - onset) / (apex - onset)))
    fall = (i > apex) & (i < offset)
    p[fall] = 0.5 * (1 + np.cos(np.pi * (i[fall] - apex) / (offset - apex)))
    return p


@dataclass(frozen=True)
class Event:
    """One expression inside a recording (indices are 0-based positions in the recording)."""

    pattern: Pattern
    onset: int
    apex: int
    offset: int
    amplitude_px: float


@dataclass(frozen=True)
class Camera:
    """The nuisances a real recording has; zeros give a clean, exactly-known rendering."""

    noise_sigma: float = 2.0  # grey levels, per pixel and channel
    drift_px: float = 0.3  # largest head translation (per axis) over the recording
    drift_deg: float = 0.1  # largest in-plane rotation over the recording (~0.2 px at the jaw)
    flicker: float = 0.004  # relative illumination change (std)


@dataclass
class RenderedClip:
    frames: list[np.ndarray]
    fields: list[Field]
    profiles: np.ndarray  # (n_events, n_frames)
    displacement_peak: np.ndarray  # (n_frames,) max field magnitude per frame, px


def _smooth_walk(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """A slow random curve starting at 0 whose largest excursion is 30-100 % of `scale`
    (a ramp plus two low-frequency sinusoids: drift, not jitter)."""
    t = np.linspace(0, 1, n)
    curve = rng.uniform(-1, 1) * t + sum(
        rng.uniform(-0.3, 0.3) * np.sin(np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 2 * np.pi))
        for _ in range(2)
    )
    curve = curve - curve[0]
    peak = float(np.abs(curve).max())
    return curve * (scale * rng.uniform(0.3, 1.0) / peak) if peak > 0 else curve


def iter_frames(
    identity: Identity,
    events: Sequence[Event],
    n_frames: int,
    rng: np.random.Generator,
    camera: Camera = Camera(),
    fields: Sequence[Field] | None = None,
    head: np.ndarray | None = None,
) -> Iterator[np.ndarray]:
    """Frames of one recording, rendered one at a time (long recordings stay out of memory).

    `head`: (n_frames, 3) head movement added to the camera's drift: x, y translation (px)
    and in-plane rotation (degrees) per frame (long videos: the subject looks away, nods).
    """
    base = identity.image
    h, w = base.shape[:2]
    if fields is None:
        fields = [dense_field(identity, e.pattern, e.amplitude_px) for e in events]
    profiles = [time_profile(n_frames, e.onset, e.apex, e.offset) for e in events]
    centre = identity.landmarks.mean(0)
    tx = _smooth_walk(rng, n_frames, camera.drift_px)
    ty = _smooth_walk(rng, n_frames, camera.drift_px)
    rot = _smooth_walk(rng, n_frames, camera.drift_deg)
    if head is not None:
        tx, ty, rot = tx + head[:, 0], ty + head[:, 1], rot + head[:, 2]
    gain = (
        1
        + _smooth_walk(rng, n_frames, camera.flicker)
        + rng.normal(0, camera.flicker / 3, n_frames)
    )
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)
    for t in range(n_frames):
        # output(y) = base(H_t^-1(y - D(y))): the expression's backward map, then the head's
        inv = cv2.invertAffineTransform(
            cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(rot[t]), 1.0)
            + np.array([[0, 0, tx[t]], [0, 0, ty[t]]])
        ).astype(np.float32)
        map_x = (inv[0, 0] * xs)[None, :] + (inv[0, 1] * ys + inv[0, 2])[:, None]
        map_y = (inv[1, 0] * xs)[None, :] + (inv[1, 1] * ys + inv[1, 2])[:, None]
        for f, p in zip(fields, profiles):
            if p[t] > 0:
                x0, y0, x1, y1 = f.box
                a = np.float32(p[t])
                map_x[y0:y1, x0:x1] -= a * (inv[0, 0] * f.dx + inv[0, 1] * f.dy)
                map_y[y0:y1, x0:x1] -= a * (inv[1, 0] * f.dx + inv[1, 1] * f.dy)
        frame = cv2.remap(base, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        out = frame.astype(np.float32)
        if gain[t] != 1:
            out *= np.float32(gain[t])
        if camera.noise_sigma > 0:
            # one noise plane for the three channels: demosaicing correlates a sensor's channels
            out += (rng.standard_normal((h, w), dtype=np.float32) * np.float32(camera.noise_sigma))[
                ..., None
            ]
        np.rint(out, out=out)
        np.clip(out, 0, 255, out=out)
        yield out.astype(np.uint8)


def render_clip(
    identity: Identity,
    events: Sequence[Event],
    n_frames: int,
    rng: np.random.Generator,
    camera: Camera = Camera(),
) -> RenderedClip:
    """All frames of a short clip in memory, with the fields and profiles that made them."""
    fields = [dense_field(identity, e.pattern, e.amplitude_px) for e in events]
    profiles = np.stack([time_profile(n_frames, e.onset, e.apex, e.offset) for e in events])
    peaks = [float(f.magnitude.max()) for f in fields]
    frames = list(iter_frames(identity, events, n_frames, rng, camera, fields))
    disp_peak = (profiles * np.array(peaks)[:, None]).max(0)
    return RenderedClip(
        frames=frames, fields=fields, profiles=profiles, displacement_peak=disp_peak
    )


def make_clip_frames(
    identity: Identity,
    emotion: str,
    n_frames: int,
    onset: int,
    apex: int,
    offset: int,
    amplitude: float,
    rng: np.random.Generator,
    camera: Camera = Camera(),
) -> list[np.ndarray]:
    """One expression clip in memory: `n_frames` BGR frames, onset/apex/offset as 0-based indices."""
    pattern = draw_pattern(emotion, rng)
    return render_clip(
        identity, [Event(pattern, onset, apex, offset, amplitude)], n_frames, rng, camera
    ).frames
