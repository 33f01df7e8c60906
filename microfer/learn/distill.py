"""Distillation from the FER teacher (`microfer.models.fer_teacher`) during `microfer pretrain`.

Why: the teacher was trained on all 28k FER-2013 training faces; our share of FER-2013 is
12k, so its soft targets carry what the missing faces taught it, and the relations between
emotions (fear looks like surprise) that one-hot labels do not. The student sees the same
augmented batch as the teacher, so the targets follow the augmentation.

Loss per sample: (1 - alpha) x class-weighted CE + alpha x T^2 x KL(teacher_T || student_T)
(Hinton et al. 2015). Samples whose label the teacher does not know (CK+'s contempt) get
CE only: the teacher would push them away from their own class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from microfer.errors import MicroferError
from microfer.models import fer_teacher

# ImageNet mean / std of the 'apex' input (microfer.clip.representation.face_to_input), RGB
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_LUMA = (0.299, 0.587, 0.114)  # grey faces have 3 equal channels; colour ones get luma


@dataclass
class Teacher:
    net: Any  # the mini-Xception, eval mode
    to_student: np.ndarray  # teacher class i -> student label index (-1: unknown to the student)
    known: np.ndarray  # (n_student_labels,) bool: the teacher has this label
    card: dict


def load_for(labels: list[str], path: Optional[str] = None, device=None) -> Teacher:
    """The teacher (None or "default": the shipped copy), its classes mapped onto `labels`."""
    import json

    path = None if path in (None, "", "default") else path
    net = fer_teacher.load_teacher(path).to(device)
    card = json.loads(fer_teacher.teacher_paths(path)[1].read_text(encoding="utf-8"))
    to_student = np.array(
        [labels.index(c) if c in labels else -1 for c in fer_teacher.KERAS_CLASSES], np.int64
    )
    if (to_student >= 0).sum() < 2:
        raise MicroferError(
            f"the FER teacher's classes {fer_teacher.KERAS_CLASSES} barely overlap the "
            f"training labels {labels}: nothing to distil"
        )
    known = np.zeros(len(labels), bool)
    known[to_student[to_student >= 0]] = True
    return Teacher(net, to_student, known, card)


def teacher_input(x):
    """Student 'apex' inputs (N, 3, S, S), ImageNet-normalised -> teacher input (N, 1, 64, 64)."""
    import torch
    from torch.nn import functional as F

    mean = torch.tensor(_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(_STD, device=x.device).view(1, 3, 1, 1)
    luma = torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)
    grey = ((x * std + mean) * luma).sum(1, keepdim=True)
    if grey.shape[-1] != 64:
        grey = F.interpolate(grey, size=(64, 64), mode="bilinear", align_corners=False)
    return (grey - 0.5) * 2.0


def soft_targets(teacher: Teacher, x, n_labels: int, temperature: float):
    """Teacher probabilities at `temperature` spread onto the student's labels (N, n_labels)."""
    import torch

    with torch.no_grad():
        z = teacher.net(teacher_input(x)) / temperature
        keep = torch.from_numpy(np.flatnonzero(teacher.to_student >= 0)).to(x.device)
        p = torch.softmax(z[:, keep], dim=1)
        out = torch.zeros(x.shape[0], n_labels, device=x.device)
        out[:, torch.from_numpy(teacher.to_student[keep.cpu().numpy()]).to(x.device)] = p
    return out


def distill_loss(logits, y, ce, teacher: Teacher, x, alpha: float, temperature: float):
    """(1 - alpha) CE + alpha T^2 KL, KL only for samples whose label the teacher knows."""
    import torch

    p_t = soft_targets(teacher, x, logits.shape[1], temperature)
    log_s = torch.log_softmax(logits / temperature, dim=1)
    kl = (p_t * (torch.log(p_t.clamp_min(1e-8)) - log_s)).sum(1)
    mask = torch.from_numpy(teacher.known).to(logits.device)[y].float()
    kd = (kl * mask).sum() / mask.sum().clamp_min(1.0)
    return (1.0 - alpha) * ce + alpha * temperature**2 * kd


def describe(teacher: Teacher, alpha: float, temperature: float) -> dict:
    return {
        "teacher": teacher.card.get("network"),
        "teacher_source": teacher.card.get("source"),
        "teacher_sha256": teacher.card.get("sha256"),
        "alpha": alpha,
        "temperature": temperature,
        "rule": "(1 - alpha) class-weighted CE + alpha T^2 KL(teacher_T || student_T); "
        "KL only on samples whose label the teacher knows; targets on the augmented batch",
    }
