"""How close microfer's circulated-style flow (`prepare --flow-format minmax28`) comes to the
recipe of the circulated STSTNet files (clip/circulated.py), and where their crop lies.

    python -m microfer.bench.circulated crop [ROOT]      landmarks on the circulated apex crops
    python -m microfer.bench.circulated agreement [N]    N synthetic clips, both computed
    python -m microfer.bench.circulated synth BUNDLE DIR labels and OOD flags of a bundle
                                                         on a `microfer synth` output

`agreement` renders synthetic clips (shipped faces, the synth motion model, the default
camera: noise, drift, flicker) and computes, from the same onset and apex frames:
  recipe  the published pipeline written out independently: the face cut to the
          circulated crop geometry (eyes and mouth where the circulated crops have them,
          from the synth's landmarks), 224x224, grey, OpenCV TV-L1 between onset and apex,
          strain, area resize to 28x28, min-max per channel to 0..255;
  truth   the same recipe on the synth's TRUE displacement at the apex instead of TV-L1;
  microfer prepare_clip with flow_format "minmax28" (its own face detection, alignment
          and crop box), with flow "tvl1" and with the default "dis".
Per channel (u, v, strain) it reports the Pearson correlation over the 28x28 pixels and
the mean absolute difference in grey levels (0..255), means over the clips.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

import microfer.clip.circulated as circ
from microfer.clip.circulated import circulated_image, minmax_uint8
from microfer.clip.face import CANONICAL_POINTS, alignment_points, detect_faces, fit_landmarks
from microfer.clip.motion import optical_flow, optical_strain
from microfer.clip.one_clip import PrepareSettings, prepare_clip
from microfer.recognise.predict import Predictor
from microfer.synth.faces import load_identities
from microfer.synth.motion import Event, draw_pattern, render_clip

CROP_SIDE = 224
# medians of the 207 circulated apex crops (`crop` below), fractions of the side
EYE_X, EYE_Y, MOUTH_Y = (0.231, 0.757), 0.286, 0.744
CHANNELS = ("u", "v", "strain")


def crop_landmarks(root: Path) -> str:
    """Where dlib puts microfer's alignment points on the circulated apex crops."""

    files = sorted((Path(root) / "combined_datasets_whole").glob("*"))
    pts = []
    for f in files:
        image = cv2.imread(str(f))
        boxes = detect_faces(image, 1, 640) if image is not None else []
        if boxes:
            pts.append(alignment_points(fit_landmarks(image, boxes[0])) / image.shape[1])
    pts = np.array(pts)
    lines = [f"{len(files)} apex crops, face found in {len(pts)}"]
    for name, p, lo, hi, ours in zip(
        CANONICAL_POINTS,
        np.median(pts, 0),
        np.percentile(pts, 25, 0),
        np.percentile(pts, 75, 0),
        CANONICAL_POINTS.values(),
    ):
        lines.append(
            f"{name:12s} median x {p[0]:.3f} y {p[1]:.3f} (IQR x {lo[0]:.3f}-{hi[0]:.3f}, "
            f"y {lo[1]:.3f}-{hi[1]:.3f}); microfer's aligned face {ours}"
        )
    eye = np.hypot(*(pts[:, 1] - pts[:, 0]).T)
    lines.append(
        f"eye distance / side: median {np.median(eye):.3f} "
        f"(IQR {np.percentile(eye, 25):.3f}-{np.percentile(eye, 75):.3f}); microfer 0.36"
    )
    return "\n".join(lines)


def circulated_crop(landmarks: np.ndarray) -> np.ndarray:
    """(2, 3) affine frame -> 224x224 crop with the eyes and mouth where the circulated
    crops have them (axis-aligned, stretched: the circulated crops are)."""

    p = alignment_points(landmarks)
    sx = CROP_SIDE * (EYE_X[1] - EYE_X[0]) / (p[1, 0] - p[0, 0])
    eye_y, mouth_y = p[:2, 1].mean(), p[3:, 1].mean()
    sy = CROP_SIDE * (MOUTH_Y - EYE_Y) / (mouth_y - eye_y)
    tx = EYE_X[0] * CROP_SIDE - sx * p[0, 0]
    ty = EYE_Y * CROP_SIDE - sy * eye_y
    return np.array([[sx, 0, tx], [0, sy, ty]], np.float32)


def recipe_image(flow: np.ndarray) -> np.ndarray:
    """The published recipe from a crop-resolution flow: strain, 28x28 area, min-max."""

    strain = optical_strain(flow)
    chans = [flow[..., 0], flow[..., 1], strain]
    return np.stack(
        [minmax_uint8(cv2.resize(c, (28, 28), interpolation=cv2.INTER_AREA)) for c in chans], 2
    )


def _clip(identity, rng):
    """(frames, onset, apex, true apex displacement on the frame (H, W, 2))."""

    emotion = str(rng.choice(["happiness", "surprise", "disgust"]))
    n, onset, apex = 20, 3, 11
    event = Event(draw_pattern(emotion, rng), onset, apex, 18, float(rng.uniform(1.5, 3.0)))
    clip = render_clip(identity, [event], n, rng)
    h, w = identity.image.shape[:2]
    field = np.zeros((h, w, 2), np.float32)
    f, a = clip.fields[0], float(clip.profiles[0, apex])
    x0, y0, x1, y1 = f.box
    field[y0:y1, x0:x1, 0], field[y0:y1, x0:x1, 1] = a * f.dx, a * f.dy
    return clip.frames, onset, apex, field


def _compare(a: np.ndarray, b: np.ndarray) -> list[tuple[float, float]]:
    out = []
    for k in range(3):
        x, y = a[..., k].astype(np.float64).ravel(), b[..., k].astype(np.float64).ravel()
        r = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
        out.append((r, float(np.abs(x - y).mean())))
    return out


def agreement(n_clips: int = 12, seed: int = 0) -> str:

    rng = np.random.default_rng(seed)
    pairs: dict[str, list] = {}
    for identity in load_identities(n_clips, seed=seed):
        frames, onset, apex, field = _clip(identity, rng)
        M = circulated_crop(identity.landmarks)
        crop = [cv2.warpAffine(frames[i], M, (CROP_SIDE, CROP_SIDE)) for i in (onset, apex)]
        recipe = recipe_image(optical_flow(crop[0], crop[1], "tvl1"))
        true = cv2.warpAffine(field, M, (CROP_SIDE, CROP_SIDE)) * np.diag(M[:, :2])
        truth = recipe_image(true.astype(np.float32))
        images = {"truth": truth}
        for method in ("tvl1", "dis"):
            s = PrepareSettings(flow=method, flow_format="minmax28")
            p = prepare_clip(frames, onset, apex, len(frames) - 1, s, strict_apex=True)
            x = np.concatenate([p.flow, p.strain[..., None]], axis=2)
            images[f"microfer {method}"] = np.rint(x * 255).astype(np.uint8)
        for name, img in images.items():
            if name != "truth":
                pairs.setdefault(f"{name} vs recipe", []).append(_compare(img, recipe))
                pairs.setdefault(f"{name} vs truth", []).append(_compare(img, truth))
        pairs.setdefault("recipe vs truth", []).append(_compare(recipe, truth))
        # the same recipe through microfer's code (circulated_image) on the crop: exact?
        pairs.setdefault("circulated_image vs recipe (same crop)", []).append(
            _compare(_uncropped(circulated_image, crop), recipe)
        )
    return _table(pairs, n_clips)


def _uncropped(fn, crop):
    """circulated_image on a flow already at the circulated crop (its own box turned off)."""

    flow = optical_flow(crop[0], crop[1], "tvl1")
    saved, circ.CIRCULATED_CROP = circ.CIRCULATED_CROP, (0.0, 0.0, 1.0, 1.0)
    try:
        return fn(flow, optical_strain(flow))
    finally:
        circ.CIRCULATED_CROP = saved


def _table(pairs: dict, n_clips: int) -> str:
    head = f"{n_clips} synthetic clips; per channel: Pearson r over 28x28 / mean |diff| grey levels"
    lines = [head, f"{'':44s}" + "".join(f"{c:>18s}" for c in CHANNELS)]
    for name, rows in pairs.items():
        a = np.array(rows)  # (clips, 3, 2)
        cells = "".join(
            f"   r {np.nanmean(a[:, k, 0]):.3f} / {np.nanmean(a[:, k, 1]):5.1f}" for k in range(3)
        )
        lines.append(f"{name:44s}{cells}")
    return "\n".join(lines)


def synth_predictions(bundle: Path, root: Path) -> str:
    """A bundle on synthetic clips (synth_truth.csv of `microfer synth`), true frames given."""
    import pandas as pd

    predictor = Predictor(bundle)
    truth = pd.read_csv(Path(root) / "synth_truth.csv", dtype=str, keep_default_na=False)
    lines, right, classed, flagged = [], 0, 0, 0
    for r in truth.to_dict("records"):
        marks = {k: int(r[k]) for k in ("onset", "apex", "offset")}
        p = predictor.predict(Path(root) / r["frame_dir"], **marks)
        classed += bool(r["class3"])
        right += p.label == r["class3"]
        flagged += bool(p.ood)
        lines.append(
            f"{r['clip']:10s} truth {r['class3'] or '-':9s} predicted {p.label:9s} "
            f"ood score {p.ood_score:.2f}{'  FLAGGED' if p.ood else ''}"
        )
    lines.append(
        f"{len(truth)} clips: {right} of the {classed} with a class labelled right, "
        f"{flagged} flagged OOD (threshold {predictor.bundle.ood.threshold:.2f})"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    what = argv[0] if argv else "agreement"
    if what == "crop" and len(argv) == 2:
        print(crop_landmarks(Path(argv[1])))
    elif what == "agreement":
        print(agreement(int(argv[1]) if len(argv) > 1 else 12))
    elif what == "synth" and len(argv) == 3:
        print(synth_predictions(Path(argv[1]), Path(argv[2])))
    else:
        raise SystemExit(
            "usage: python -m microfer.bench.circulated crop ROOT | agreement [N] | synth BUNDLE DIR"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
