"""The OOD checks of a bundle trained on circulated inputs: false alarms on real held-out
subjects, and flags on synthetic clips and moving non-face textures.

    python -m microfer.bench.input_ood_eval --model B --cache C --out DIR
        [--prepared P ...] [--textures 16] [--seed 7]
    python -m microfer.bench.input_ood_eval --families --cache C --out DIR --prepared P_DEV
        [--textures 16] [--seed 5]

`--families` is how the statistics were chosen, on development data: each candidate set
(flow statistics, teacher logits, teacher pooled features, grey levels, combinations) and
each percentile, fitted on the real rows, against the development synthetic clips and textures.

B: a bundle from `microfer train` on the composite cache C (`prepare composite_inputs`).
Real: each subject of C is left out once; both checks -- the feature score (`learn.ood`) and
the input check (`learn.input_ood`) -- are fitted on the other subjects, each with its
threshold from THEIR held-out scores (as `train` does), and the left-out rows are scored:
the share flagged is the false-alarm rate on new real people. Also per half of the subjects
(`metrics.halves`) and with a whole dataset left out (a new lab).
Synthetic: every entry of the caches P (`microfer prepare ... --flow tvl1 --flow-format
minmax28` on `microfer synth` data), scored by the bundle as predict scores a clip.
Non-face: textures (1/f noise, stripes, blobs, uniform noise) moved by a smooth
micro-displacement, made into the representation as prepare makes it from an aligned face
(TV-L1, strain, circulated crop, 28 px, min-max), the texture as the apex "face".
"Before" is the feature score alone (what bundles flagged until the input check); "after"
is either score above its threshold (what predict's `ood` now says). Writes
input_ood_eval.json and input_ood_eval.md.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from microfer.clip.cache import open_cache
from microfer.clip.circulated import circulated_flow
from microfer.clip.motion import optical_flow, optical_strain
from microfer.errors import MicroferError
from microfer.io import write_json, write_text
from microfer.learn.input_ood import (
    FLOW_STATS,
    apex_grey,
    fit_input_check,
    held_out_input_scores,
    input_statistics,
)
from microfer.learn.ood import fit_ood
from microfer.learn.protocol_samples import load_samples
from microfer.models.fer_teacher import numpy_features, teacher_numpy_state
from microfer.recognise.predict import Predictor
from microfer.records import PreparedClip

TEXTURES = ("1/f noise", "stripes", "blobs", "uniform noise")
FACE = 128  # side of the texture "face", microfer's aligned face size
AMPLITUDE = 2.0  # px at the displacement's peak: a micro-expression's size


def texture(kind: str, rng) -> np.ndarray:
    """(FACE, FACE) float32 grey texture in 20..220."""
    y, x = np.mgrid[:FACE, :FACE].astype(np.float64)
    if kind == "1/f noise":
        f = np.sqrt(np.fft.fftfreq(FACE)[:, None] ** 2 + np.fft.fftfreq(FACE)[None] ** 2)
        spec = rng.normal(size=(FACE, FACE)) + 1j * rng.normal(size=(FACE, FACE))
        t = np.real(np.fft.ifft2(spec / np.maximum(f, 1.0 / FACE)))
    elif kind == "stripes":
        t = np.sin(x * rng.uniform(0.1, 0.5) + 3 * np.sin(y * rng.uniform(0.02, 0.1)))
        t = t + 0.2 * rng.normal(size=t.shape)
    elif kind == "blobs":
        t = cv2.GaussianBlur(rng.normal(size=(FACE, FACE)), (0, 0), rng.uniform(2, 6))
    elif kind == "uniform noise":
        t = rng.uniform(size=(FACE, FACE))
    else:
        raise MicroferError(f"unknown texture {kind!r}; expected one of {', '.join(TEXTURES)}")
    return ((t - t.min()) / (t.max() - t.min() + 1e-9) * 200 + 20).astype(np.float32)


def moving_texture(kind: str, rng) -> PreparedClip:
    """A texture moved by a smooth bump of AMPLITUDE px, as a prepared minmax28 clip."""
    onset = texture(kind, rng)
    y, x = np.mgrid[:FACE, :FACE].astype(np.float32)
    cy, cx = rng.uniform(30, 100, 2)
    bump = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * rng.uniform(8, 20) ** 2))
    angle = rng.uniform(0, 2 * np.pi)
    dx, dy = AMPLITUDE * np.cos(angle) * bump, AMPLITUDE * np.sin(angle) * bump
    apex = cv2.remap(
        onset,
        (x - dx).astype(np.float32),
        (y - dy).astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )

    def frame(a):  # sensor noise, as a camera gives
        grey = np.clip(a + rng.normal(0, 2, a.shape), 0, 255).astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)

    on, ap = frame(onset), frame(apex)
    flow = optical_flow(on, ap, "tvl1")
    small, strain = circulated_flow(flow, optical_strain(flow))
    return PreparedClip(
        onset=0,
        apex=1,
        offset=1,
        apex_source="annotated",
        onset_face=on,
        apex_face=ap,
        flow=small,
        strain=strain,
        landmarks=np.zeros((68, 2), np.float32),
        transform=np.eye(2, 3, dtype=np.float32),
        face_box=(0, 0, FACE, FACE),
        flow_units="minmax_per_image",
    )


@dataclass
class Flags:
    inputs: str
    n: int
    before: float  # share flagged by the feature score alone
    after: float  # share flagged by either score
    input_only: float  # share flagged by the input check alone

    def row(self) -> str:
        return f"| {self.inputs} | {self.n} | {self.before:.2f} | {self.input_only:.2f} | {self.after:.2f} |"


def flags(name: str, feature_flag: np.ndarray, input_flag: np.ndarray) -> Flags:
    f, i = np.asarray(feature_flag, bool), np.asarray(input_flag, bool)
    return Flags(name, int(f.size), float(f.mean()), float((f | i).mean()), float(i.mean()))


def held_out_flags(F, S, y, groups, left_out) -> tuple[np.ndarray, np.ndarray]:
    """(feature flag, input flag) per row, each row scored by checks fitted without its
    `left_out` group (a subject, or a dataset), thresholds from the rest's subjects."""
    feat, inp = np.zeros(len(y), bool), np.zeros(len(y), bool)
    for g in np.unique(left_out):
        test = left_out == g
        ood = fit_ood(F[~test], y[~test], groups[~test])
        check = fit_input_check(S[~test], groups[~test])
        feat[test] = ood.is_ood(F[test])
        inp[test] = check.score(S[test]) > check.threshold
    return feat, inp


def run(
    model: Path, cache, out: Path, prepared: Sequence = (), n_textures: int = 16, seed: int = 7
) -> list[Flags]:
    from tqdm import tqdm

    predictor = Predictor(model)
    bundle = predictor.bundle
    if bundle.ood is None or bundle.input_ood is None:
        raise MicroferError(
            f"{model}: the bundle has no {'OOD score' if bundle.ood is None else 'input check'}; "
            "train it on a composite_inputs cache with this microfer"
        )
    teacher = teacher_numpy_state()
    real = open_cache(cache)
    rows = _real_rows(real, bundle.class_names)
    clips = [real.load(k) for k in tqdm(rows["key"], desc="real rows", disable=None)]
    F = np.concatenate([predictor.features(c) for c in clips])
    S = input_statistics(clips, teacher)
    y, groups, datasets = (rows[c].to_numpy() for c in ("y", "group", "dataset"))
    table = []
    feat, inp = held_out_flags(F, S, y, groups, groups)
    table.append(flags("real, each subject left out", feat, inp))
    names = sorted(set(groups))  # the fixed halves of `learn.evaluate.subject_halves`
    for half, members in (("A", names[0::2]), ("B", names[1::2])):
        part = np.isin(groups, members)
        table.append(flags(f"real, half {half}", feat[part], inp[part]))
    feat, inp = held_out_flags(F, S, y, groups, datasets)
    for d in sorted(set(datasets)):
        rows = datasets == d
        table.append(flags(f"real {d}, its dataset left out (a new lab)", feat[rows], inp[rows]))

    def bundle_flags(name, made):
        feats = np.concatenate([predictor.features(c) for c in made])
        stats = input_statistics(made, teacher)
        table.append(
            flags(
                name,
                bundle.ood.is_ood(feats),
                bundle.input_ood.score(stats) > bundle.input_ood.threshold,
            )
        )

    for p in prepared:
        c = open_cache(p)
        idx = c.index()
        idx = idx[idx["status"] == "ok"] if "status" in idx else idx
        bundle_flags(f"synthetic clips ({Path(p).name})", [c.load(k) for k in sorted(idx["key"])])
    rng = np.random.default_rng(seed)
    if n_textures:
        made = [moving_texture(TEXTURES[i % len(TEXTURES)], rng) for i in range(n_textures)]
        bundle_flags("non-face moving textures", made)
    _write(out, model, bundle, table)
    return table


CANDIDATES = (
    ("flow",),
    ("logits",),
    ("grey",),
    ("pooled",),
    ("flow", "logits"),
    ("flow", "logits", "grey"),
    ("flow", "pooled"),
)
PERCENTILES = (90.0, 95.0, 97.5, 99.0)


def candidate_statistics(clips, teacher) -> dict[str, np.ndarray]:
    """The candidate statistics of clips: the input check's flow statistics and teacher
    logits, and the teacher's pooled map and the apex crop's grey mean and spread."""

    stats = input_statistics(clips, teacher)
    greys = np.stack([apex_grey(c) for c in clips]).astype(np.float32)
    fmap, _ = numpy_features(teacher, ((greys / 255.0 - 0.5) * 2.0)[:, None])
    return {
        "flow": stats[:, : len(FLOW_STATS)],
        "logits": stats[:, len(FLOW_STATS) :],
        "pooled": fmap.mean(axis=(2, 3)),
        "grey": np.stack([greys.mean(axis=(1, 2)), greys.std(axis=(1, 2))], axis=1),
    }


def families(cache, out: Path, prepared: Sequence, n_textures: int = 16, seed: int = 5) -> str:
    """The development table: every candidate at the 95th percentile, then the kept one
    (flow + logits) at each percentile. Thresholds as `train` makes them (all real rows);
    real false alarms from held-out subjects (in-sample percentile of those scores) and with
    a whole dataset left out (its threshold from the other datasets' subjects)."""

    teacher = teacher_numpy_state()
    real = open_cache(cache)
    index = real.index()
    keys = sorted(index.loc[index["status"] == "ok", "key"])
    groups = np.array(["/".join(k.split("/")[:2]) for k in keys])
    datasets = np.array([k.split("/")[0] for k in keys])
    R = candidate_statistics([real.load(k) for k in keys], teacher)
    dev = []
    for p in prepared:
        c = open_cache(p)
        idx = c.index()
        dev += [c.load(k) for k in sorted(idx.loc[idx["status"] == "ok", "key"])]
    rng = np.random.default_rng(seed)
    made = [moving_texture(TEXTURES[i % len(TEXTURES)], rng) for i in range(n_textures)]
    D, T = candidate_statistics(dev, teacher), candidate_statistics(made, teacher)
    names = sorted(set(groups))
    part = np.isin(groups, names[0::2])

    def row(combo, percentile):
        X = lambda d: np.concatenate([d[c] for c in combo], axis=1)  # noqa: E731
        check = fit_input_check(X(R), groups, percentile)
        held = held_out_input_scores(X(R), groups) > check.threshold
        lab = []
        for d in sorted(set(datasets)):
            t = datasets == d
            c = fit_input_check(X(R)[~t], groups[~t], percentile)
            lab.append(f"{np.mean(c.score(X(R)[t]) > c.threshold):.2f}")
        return (
            f"| {' + '.join(combo)} ({X(R).shape[1]}) | {percentile:g} | {held[part].mean():.2f} / "
            f"{held[~part].mean():.2f} | {np.mean(check.score(X(D)) > check.threshold):.2f} | "
            f"{np.mean(check.score(X(T)) > check.threshold):.2f} | {' / '.join(lab)} |"
        )

    lines = [
        f"development: {len(dev)} synthetic clips, {n_textures} textures (seed {seed}); "
        f"new lab = {' / '.join(sorted(set(datasets)))} left out",
        "",
        "| statistics | percentile | held-out real flagged (A / B) | dev synthetic | dev non-face | new lab flagged |",
        "|---|---|---|---|---|---|",
        *(row(c, 95.0) for c in CANDIDATES),
        *(row(("flow", "logits"), p) for p in PERCENTILES if p != 95.0),
    ]
    text = "\n".join(lines) + "\n"
    write_text(Path(out) / "input_ood_families.md", text)
    return text


def _real_rows(cache, classes):
    """The composite protocol's samples that the cache holds: key, y, group, dataset."""

    proto, samples = load_samples("megc2019-composite")
    if list(proto.classes) != list(classes):
        raise MicroferError(
            f"the bundle's classes {classes} are not the composite's {proto.classes}"
        )
    index = cache.index()
    ok = set(index.loc[index["status"] == "ok", "key"])
    samples["key"] = samples["dataset"] + "/" + samples["subject"] + "/" + samples["clip"]
    samples = samples[samples["key"].isin(ok)].sort_values("key").reset_index(drop=True)
    if samples.empty:
        raise MicroferError(f"{cache.dir}: holds none of the composite's samples")
    samples["y"] = samples["y"].astype(int)
    return samples


def _write(out: Path, model: Path, bundle, table: list[Flags]) -> None:
    lines = [
        f"OOD checks of `{model}`: feature score threshold {bundle.ood.threshold:.2f} "
        f"(percentile {bundle.ood.percentile:g}), input check threshold "
        f"{bundle.input_ood.threshold:.2f} (percentile {bundle.input_ood.percentile:g})",
        "",
        "| inputs | n | flagged before (feature score) | input check alone | flagged after (either) |",
        "|---|---|---|---|---|",
        *(t.row() for t in table),
    ]
    write_text(Path(out) / "input_ood_eval.md", "\n".join(lines) + "\n")
    write_json(
        Path(out) / "input_ood_eval.json", {"bundle": str(model), "table": [vars(t) for t in table]}
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m microfer.bench.input_ood_eval", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--model", type=Path, help="bundle trained on --cache")
    ap.add_argument("--families", action="store_true", help="the development table (no bundle)")
    ap.add_argument("--cache", type=Path, required=True, help="the composite_inputs cache")
    ap.add_argument("--out", type=Path, required=True, help="folder for the table")
    ap.add_argument(
        "--prepared", type=Path, nargs="*", default=[], help="minmax28 caches of synthetic clips"
    )
    ap.add_argument("--textures", type=int, default=16, help="non-face moving textures")
    ap.add_argument("--seed", type=int, default=7, help="of the textures")
    args = ap.parse_args(argv)
    if args.families:
        print(families(args.cache, args.out, args.prepared, args.textures, args.seed), end="")
        return
    if args.model is None:
        ap.error("--model is required (or --families)")
    run(args.model, args.cache, args.out, args.prepared, args.textures, args.seed)
    print((args.out / "input_ood_eval.md").read_text(encoding="utf-8"), end="")


if __name__ == "__main__":
    main()
