"""Batch augmentations of pretraining: what each does to inputs and targets, and a run with one."""

import numpy as np
import pytest

from microfer.errors import MicroferError
from microfer.learn.mixing import MIXES, fmix_mask, mix_batch


def _batch(n=6, size=32):
    rng = np.random.default_rng(0)
    x = np.stack([np.full((3, size, size), 10.0 * (i + 1), np.float32) for i in range(n)])
    x += rng.normal(0, 0.1, x.shape).astype(np.float32)
    return x, np.arange(n) % 3


@pytest.mark.parametrize("mix", MIXES)
def test_targets_are_distributions_and_draws_repeat_for_a_seed(mix):
    x, y = _batch()
    a, ta = mix_batch(x, y, 3, mix, np.random.default_rng(5))
    b, tb = mix_batch(x, y, 3, mix, np.random.default_rng(5))
    assert a.shape == x.shape and ta.shape == (len(x), 3)
    np.testing.assert_allclose(ta.sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ta, tb)
    if mix == "none":
        np.testing.assert_array_equal(a, x)
        assert (ta.argmax(1) == y).all()


def test_cutout_erases_a_square_and_keeps_the_label():
    x, y = _batch()
    noisy = np.random.default_rng(2).normal(100, 30, x.shape).astype(np.float32)
    out, t = mix_batch(noisy, y, 3, "cutout", np.random.default_rng(1))
    assert (t.argmax(1) == y).all() and t.max() == 1.0
    erased = out != noisy  # the square, set to the sample's mean per channel
    assert 0.1 < erased.mean() < 0.3  # about (0.5 side)^2, less where the square leaves the image
    for i in range(len(x)):
        np.testing.assert_allclose(out[i][erased[i]].reshape(3, -1).std(axis=1), 0, atol=1e-4)


@pytest.mark.parametrize("mix", ["mixup", "cutmix", "fmix"])
def test_label_share_is_the_share_of_each_sample_in_the_input(mix):
    x, _ = _batch()
    ys = np.arange(len(x))  # one class per sample: each target says how much of which sample
    out, t = mix_batch(x, ys, len(x), mix, np.random.default_rng(3))
    levels = 10.0 * (np.arange(len(x)) + 1)
    for i in range(len(x)):
        expected = (t[i] * levels).sum()  # mean level implied by the target shares
        assert out[i].mean() == pytest.approx(expected, abs=0.5), (mix, i)


def test_fmix_mask_has_the_asked_share_in_few_blobs():
    import cv2

    rng = np.random.default_rng(0)
    for lam in (0.2, 0.5, 0.8):
        mask = fmix_mask(rng, 64, lam)
        assert mask.mean() == pytest.approx(lam, abs=1 / 64)
        n_blobs, _ = cv2.connectedComponents(mask.astype(np.uint8))
        assert n_blobs - 1 <= 12  # low frequencies: blobs, not salt and pepper


def test_unknown_mix_is_refused():
    with pytest.raises(MicroferError, match="blend"):
        mix_batch(*_batch(), 3, "blend", np.random.default_rng(0))


def test_pretraining_with_fmix_records_it_and_resumes_exactly(tmp_path):
    import torch
    from safetensors.torch import load_file

    from microfer.learn.macro_data import MacroSet
    from microfer.learn.pretrain import PretrainSettings, pretrain
    from microfer.models.weights import read_block_meta

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    faces = np.clip(rng.normal(120, 40, (12, 32, 32, 3)), 0, 255).astype(np.uint8)
    data = MacroSet(
        "apex",
        32,
        ["anger", "happy", "neutral"],
        np.arange(12) % 3,
        [f"img/{i}" for i in range(12)],
        np.zeros((0, 3, 32, 32), np.float32),
        faces,
    )

    def settings(epochs):
        return PretrainSettings(
            representation="apex",
            input_size=32,
            scope="whole",
            epochs=epochs,
            batch_size=4,
            seed=1,
            mix="fmix",
            device="cpu",
        )

    pretrain(data, settings(1), tmp_path / "a", progress=False)
    resumed = pretrain(data, settings(2), tmp_path / "a", resume=True, progress=False)
    straight = pretrain(data, settings(2), tmp_path / "b", progress=False)
    wa, wb = load_file(str(resumed.weights)), load_file(str(straight.weights))
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    meta = read_block_meta(tmp_path / "b")
    assert meta["augmentation"]["batch"]["kind"] == "fmix" and meta["settings"]["mix"] == "fmix"
