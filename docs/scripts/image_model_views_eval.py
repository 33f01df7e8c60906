"""Dev script: heads on the features of `image_model_views_extract.py`, scored on the
validation split only (accuracy, macro F1, and on its even / odd halves).
Arguments: feature kinds (comma-separated), view combinations (`;`-separated, views joined
by `+`), Cs (comma-separated); each head fitted class-balanced and unweighted."""

import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from microfer.metrics import accuracy, confusion_matrix, uf1

OUT = Path("/tmp/s18b")
d = np.load(OUT / "grey.npz")
train_names = ["fer_train", "ck_train"]
classes = sorted({l for n in train_names for l in d[n + "_y"]})
y = np.array([classes.index(l) for n in train_names for l in d[n + "_y"]])
cal_idx = np.sort(np.load(OUT / "cal_idx.npy"))
fit_mask = np.ones(y.size, bool)
fit_mask[cal_idx] = False
fit_idx = np.flatnonzero(fit_mask)


def load(n, v):
    return np.load(OUT / f"f_{n}_{v}.npy").astype(np.float32)


def parts(F, kind):
    b3 = F[:, :256]
    b4 = F[:, 256 : 256 + 2048].reshape(-1, 128, 4, 4)
    lg = F[:, -7:]
    gap4 = b4.mean((2, 3))
    p4 = b4.reshape(-1, 128, 2, 2, 2, 2).mean((3, 5)).reshape(-1, 512)
    gap3 = b3.reshape(-1, 64, 4).mean(2)
    return {
        "base": [gap4, lg],
        "b4x2": [p4, lg],
        "b4x2+gap": [gap4, p4, lg],
        "b3+base": [gap3, gap4, lg],
        "b3x2+b4x2": [b3, p4, lg],
        "b4full": [b4.reshape(-1, 2048), lg],
    }[kind]


def feat(F, kind):
    return np.concatenate(parts(F, kind), 1)


def scores(pred, yy):
    cm = confusion_matrix(yy, pred, len(classes))
    return round(accuracy(cm), 4), round(uf1(cm), 4)


train_F = np.concatenate([load(n, "base") for n in train_names])
combos = sys.argv[2].split(";")
views = sorted({v for c in combos for v in c.split("+")})
kinds = sys.argv[1].split(",")
Cs = [float(c) for c in (sys.argv[3].split(",") if len(sys.argv) > 3 else ["0.1"])]
val_F = {v: (train_F[cal_idx] if v == "base" else load("val", v)) for v in views}
yv = y[cal_idx]
halves = np.arange(yv.size) % 2 == 0
for kind in kinds:
    X = feat(train_F[fit_idx], kind)
    mean, sc = X.mean(0), X.std(0) + 1e-6
    for C, cw in itertools.product(Cs, ["balanced", None]):
        t = time.time()
        lr = LogisticRegression(C=C, max_iter=2000, class_weight=cw).fit(
            (X - mean) / sc, y[fit_idx]
        )
        res = {}
        for combo in combos:
            vs = combo.split("+")
            Fv = np.mean([feat(val_F[v], kind) for v in vs], 0)
            p = lr.predict((Fv - mean) / sc)
            res[combo] = (
                scores(p, yv),
                scores(p[halves], yv[halves]),
                scores(p[~halves], yv[~halves]),
            )
        print(
            json.dumps(
                {
                    "kind": kind,
                    "C": C,
                    "cw": cw,
                    "dim": X.shape[1],
                    "s": round(time.time() - t),
                    **{k: v for k, v in res.items()},
                }
            ),
            flush=True,
        )
