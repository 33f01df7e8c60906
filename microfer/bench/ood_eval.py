"""How well a bundle's OOD score (`microfer.learn.ood`) separates new in-distribution clips from inputs it
should refuse: AUROC per kind of OOD input and the share rejected at the bundle's threshold.

    python -m microfer.bench.ood_eval --model BUNDLE --out DIR [--clips N] [--cgi Megamind.avi]
    python -m microfer.bench.ood_eval --model IMAGE_BUNDLE --images FER2013 --out DIR [--clips N] [--cgi ...]

In distribution: synthetic clips of identities the bundle never saw (`microfer synth --layout
video`, a seed and identity offset of their own) -- new people, the same kind of clip.
Out of distribution, made from those same clips so that only the property under test
changes: upside down, rotated 90 degrees, each frame's background replaced by fresh noise
around the face, strong sensor noise (sigma 40 grey levels), and a CGI face video when given
(cut into 30-frame segments, each a clip).
An input `predict` refuses (no face found) counts as rejected: its score is +inf. Image
bundles get their own inputs (`image_jobs`). Writes ood_eval.json, ood_eval.md (the table)
and ood_scores.png.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from microfer.clip.video import open_frames, read_image
from microfer.errors import MicroferError
from microfer.io import write_json, write_text
from microfer.learn.bundle import load_bundle
from microfer.learn.macro_data import list_images
from microfer.recognise.images import ImagePredictor, is_image_bundle
from microfer.recognise.predict import Predictor
from microfer.synth import generate

NOISE_SIGMA = 40.0
CGI_SEGMENT = 30  # frames: 1.25 s at the 24 fps of Megamind.avi


def upside_down(frame: np.ndarray, rng) -> np.ndarray:
    return cv2.flip(frame, 0)


def rotated_90(frame: np.ndarray, rng) -> np.ndarray:
    return cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE)


def noise_around_face(frame: np.ndarray, rng) -> np.ndarray:
    """The central half of the frame (where synth puts the face) pasted on fresh uniform noise."""
    out = rng.integers(0, 256, frame.shape, dtype=np.uint8)
    h, w = frame.shape[:2]
    box = (slice(h // 8, h - h // 8), slice(w // 4, w - w // 4))
    out[box] = frame[box]
    return out


def sensor_noise(frame: np.ndarray, rng) -> np.ndarray:
    noisy = frame.astype(np.float32) + rng.normal(0, NOISE_SIGMA, frame.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


TRANSFORMS: dict[str, Callable] = {
    "upside down": upside_down,
    "rotated 90 degrees": rotated_90,
    "noise around the face": noise_around_face,
    f"sensor noise sigma {NOISE_SIGMA:g}": sensor_noise,
}


@dataclass
class Scored:
    kind: str  # "in distribution" or the OOD kind
    clip: str
    score: float  # +inf when predict refused the input
    error: str = ""
    # predict's verdict: the score above its threshold, or, for bundles with an input check
    # (`learn.input_ood`), either score above its own; None: the score above the threshold
    flagged: Optional[bool] = None


def read_all_frames(path: Path) -> list[np.ndarray]:
    source = open_frames(path)
    return source.read(list(source.numbers))


def score_input(predictor, clip, kind: str, name: str) -> Scored:
    try:
        p = (
            predictor.predict(clip, name=name)
            if isinstance(predictor, ImagePredictor)
            else predictor.predict(clip)
        )
    except MicroferError as exc:
        return Scored(kind, name, float("inf"), str(exc).splitlines()[0])
    if p.ood_score is None:
        raise MicroferError(
            f"{predictor.bundle.path}: the bundle has no OOD score (trained before it existed)"
        )
    return Scored(kind, name, float(p.ood_score), flagged=bool(p.ood))


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """P(an OOD score > an in-distribution score), ties counted half (= ROC AUC; inf is fine)."""
    a, b = np.asarray(in_scores)[:, None], np.asarray(out_scores)[None, :]
    return float(((b > a).sum() + 0.5 * (b == a).sum()) / (a.size * b.size))


def _rejected(rows: list[Scored], kind: str, threshold: float) -> float:
    return float(
        np.mean(
            [
                r.score > threshold if r.flagged is None else r.flagged
                for r in rows
                if r.kind == kind
            ]
        )
    )


def summarise(rows: list[Scored], threshold: float) -> list[dict]:
    ind = np.array([r.score for r in rows if r.kind == "in distribution"])
    table = [
        {
            "inputs": "in distribution",
            "n": int(ind.size),
            "auroc": None,
            "rejected": _rejected(rows, "in distribution", threshold),
            "score_rejected": float(np.mean(ind > threshold)),
        }
    ]
    for kind in dict.fromkeys(r.kind for r in rows if r.kind != "in distribution"):
        out = np.array([r.score for r in rows if r.kind == kind])
        table.append(
            {
                "inputs": kind,
                "n": int(out.size),
                "auroc": auroc(ind, out),
                "rejected": _rejected(rows, kind, threshold),
                "score_rejected": float(np.mean(out > threshold)),
                "no_face": int(sum(1 for r in rows if r.kind == kind and r.error)),
            }
        )
    return table


def markdown(table: list[dict], threshold: float, bundle: Path) -> str:
    lines = [
        f"OOD score of `{bundle}` (threshold {threshold:.2f}); rejected = predict's `ood` "
        "(the score above it, or the input check's above its own where the bundle has one) "
        "or no face found; the AUROC is the score's alone",
        "",
        "| inputs | n | AUROC vs in-distribution | rejected at threshold | by the score alone | of which no face |",
        "|---|---|---|---|---|---|",
    ]
    for t in table:
        auc = "" if t["auroc"] is None else f"{t['auroc']:.3f}"
        lines.append(
            f"| {t['inputs']} | {t['n']} | {auc} | {t['rejected']:.2f} | {t['score_rejected']:.2f} "
            f"| {t.get('no_face', '')} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[Scored], threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(r.kind for r in rows))
    finite = [r.score for r in rows if np.isfinite(r.score)]
    top = max(finite + [threshold]) * 1.15 if finite else threshold + 1
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.55 * len(kinds)))
    for i, kind in enumerate(kinds):
        s = np.array([r.score for r in rows if r.kind == kind])
        ax.scatter(
            np.where(np.isfinite(s), s, top),
            np.full(s.size, i),
            marker="|",
            s=200,
            color=["tab:red" if not np.isfinite(v) else "tab:blue" for v in s],
        )
    ax.axvline(threshold, color="k", ls="--", label="threshold")
    ax.set_xscale(
        "symlog", linthresh=max(1.0, abs(threshold))
    )  # far inputs score 1000x the threshold
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_xlabel("relative Mahalanobis score, symlog (red, right: no face found)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def clip_jobs(
    out: Path, n_clips: int, cgi: Optional[Path], seed: int, extra: Sequence[Path]
) -> list:
    """(kind, name, make input) for a clip bundle (see the module docstring)."""
    made = generate(
        "video",
        out / "clips",
        subjects=max(1, n_clips // 3),
        clips_per_subject=3,
        seed=seed,
        identity_offset=131,
        progress=False,
    )
    clips = sorted((made.root / "clips").glob("*.mp4"))[:n_clips] + [Path(c) for c in extra]
    rng = np.random.default_rng(seed)
    jobs = [("in distribution", c.name, lambda c=c: c) for c in clips]
    jobs += [
        (kind, c.name, lambda c=c, f=f: [f(fr, rng) for fr in read_all_frames(c)])
        for kind, f in TRANSFORMS.items()
        for c in clips
    ]
    if cgi is not None:  # cut into clips of a micro-expression's length, each predicted on its own
        frames = read_all_frames(Path(cgi))
        jobs += [
            (
                f"CGI face ({Path(cgi).name}, {CGI_SEGMENT}-frame segments)",
                f"{Path(cgi).name}@{i}",
                lambda i=i: frames[i : i + CGI_SEGMENT],
            )
            for i in range(0, len(frames) - CGI_SEGMENT + 1, CGI_SEGMENT)
        ]
    return jobs


def image_jobs(images: Path, n: int, cgi: Optional[Path], seed: int) -> list:
    """(kind, name, make input) for an image bundle: `n` test images of a FER-layout folder
    (ROOT/test/<emotion>/*) in distribution; the same upside down and rotated, 48-px uniform
    noise images (FER's size: taken whole as face crops, so they reach the score), and every
    10th frame of the CGI video."""
    files = list_images(Path(images) / "test", "ROOT/test/<emotion>/*.jpg")
    files = [files[i] for i in np.linspace(0, len(files) - 1, min(n, len(files))).astype(int)]
    rng = np.random.default_rng(seed)
    jobs = [("in distribution", f.name, lambda f=f: read_image(f)) for f in files]
    jobs += [("upside down", f.name, lambda f=f: cv2.flip(read_image(f), 0)) for f in files]
    jobs += [
        (
            "rotated 90 degrees",
            f.name,
            lambda f=f: cv2.rotate(read_image(f), cv2.ROTATE_90_CLOCKWISE),
        )
        for f in files
    ]
    jobs += [
        (
            "uniform noise, 48 px",
            f"noise{i}",
            lambda: rng.integers(0, 256, (48, 48, 3), dtype=np.uint8),
        )
        for i in range(n)
    ]
    if cgi is not None:
        frames = read_all_frames(Path(cgi))
        jobs += [
            (
                f"CGI face ({Path(cgi).name}, every 10th frame)",
                f"{Path(cgi).name}@{i}",
                lambda i=i: frames[i],
            )
            for i in range(0, len(frames), 10)
        ]
    return jobs


def run(
    model: Path,
    out: Path,
    n_clips: int = 9,
    cgi: Optional[Path] = None,
    seed: int = 4242,
    extra: Sequence[Path] = (),
    images: Optional[Path] = None,
) -> list[dict]:
    """`extra`: more in-distribution clips (e.g. the demo's held-out videos); OOD copies are made of them too.
    An image bundle needs `images` (a FER-layout folder); `n_clips` test images of it are used."""
    from tqdm import tqdm

    out = Path(out)
    bundle = load_bundle(model)
    if bundle.ood is None:
        raise MicroferError(
            f"{model}: the bundle has no OOD score (trained before it existed); retrain it"
        )
    if is_image_bundle(bundle):
        if images is None:
            raise MicroferError(
                f"{model}: an image bundle; give --images (a FER-layout folder) for its inputs"
            )
        predictor, jobs = ImagePredictor(bundle), image_jobs(images, n_clips, cgi, seed)
    else:
        predictor, jobs = Predictor(bundle), clip_jobs(out, n_clips, cgi, seed, extra)
    rows = [
        score_input(predictor, make(), kind, name)
        for kind, name, make in tqdm(jobs, desc="ood inputs", unit="input", disable=None)
    ]
    threshold = bundle.ood.threshold
    table = summarise(rows, threshold)
    write_json(
        out / "ood_eval.json",
        {
            "bundle": str(model),
            "threshold": threshold,
            "table": table,
            "inputs": [
                {**asdict(r), "score": r.score if np.isfinite(r.score) else "inf"} for r in rows
            ],
        },
    )
    write_text(out / "ood_eval.md", markdown(table, threshold, Path(model)))
    plot(rows, threshold, out / "ood_scores.png")
    return table


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m microfer.bench.ood_eval", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--model", type=Path, required=True, help="bundle folder from `microfer train`")
    ap.add_argument("--out", type=Path, required=True, help="folder for the clips, table and plot")
    ap.add_argument(
        "--clips", type=int, default=9, help="in-distribution clips or images (each also made OOD)"
    )
    ap.add_argument(
        "--images",
        type=Path,
        default=None,
        help="image bundles: a FER-layout folder (its test split)",
    )
    ap.add_argument("--cgi", type=Path, default=None, help="a CGI face video (e.g. Megamind.avi)")
    ap.add_argument(
        "--extra",
        type=Path,
        nargs="*",
        default=[],
        help="more in-distribution clips, e.g. microfer-demo/heldout/clips/*.mp4",
    )
    args = ap.parse_args(argv)
    run(
        args.model, args.out, n_clips=args.clips, cgi=args.cgi, extra=args.extra, images=args.images
    )
    print((args.out / "ood_eval.md").read_text(encoding="utf-8"), end="")


if __name__ == "__main__":
    main()
