"""Optical flow accuracy, optical strain, and apex / interval spotting with known truth."""

import numpy as np
import pytest

from microfer.clip.apex import motion_curve, region_mask, spot_apex, spot_interval
from microfer.clip.face import alignment_transform, warp_face
from microfer.clip.motion import apply_displacement, expression_field, optical_flow, optical_strain
from microfer.errors import ClipError, MicroferError
from microfer.synth import load_identities


@pytest.fixture(scope="module")
def aligned_face():
    face = load_identities(3)[2]  # a shipped real photo on a 640 x 480 canvas, with its landmarks
    return warp_face(face.image, alignment_transform(face.landmarks, 128), 128)


@pytest.mark.parametrize("method,max_epe", [("dis", 0.12), ("tvl1", 0.15)])
def test_flow_recovers_a_known_displacement(aligned_face, method, max_epe):
    import cv2

    gray = cv2.cvtColor(aligned_face, cv2.COLOR_BGR2GRAY)
    moved, true = apply_displacement(gray, expression_field(128, 1.5))
    flow = optical_flow(gray, moved, method)
    assert flow.shape == (128, 128, 2) and flow.dtype == np.float32
    err = np.hypot(*(flow - true).transpose(2, 0, 1))[13:-13, 13:-13]
    # measured (python -m microfer.bench.flow): dis 0.06, tvl1 0.085 px at this amplitude
    assert err.mean() < max_epe, err.mean()
    still = optical_flow(gray, gray, method)
    assert np.abs(still).mean() < 0.02
    with pytest.raises(MicroferError, match="unknown optical flow"):
        optical_flow(gray, gray, "farneback")


def test_optical_strain_of_known_flows():
    y, x = np.mgrid[0:32, 0:32].astype(np.float32)
    stretch = np.stack([0.02 * x, -0.01 * y], -1)  # e_xx = .02, e_yy = -.01
    np.testing.assert_allclose(optical_strain(stretch)[4:-4, 4:-4], np.hypot(0.02, 0.01), rtol=1e-4)
    shear = np.stack([0.03 * y, np.zeros_like(x)], -1)  # e_xy = .015 -> sqrt(2) * .015
    np.testing.assert_allclose(optical_strain(shear)[4:-4, 4:-4], np.sqrt(2) * 0.015, rtol=1e-4)
    rotation = np.stack([-0.02 * y, 0.02 * x], -1)  # rigid: no strain
    assert np.abs(optical_strain(rotation)).max() < 1e-6
    assert np.abs(optical_strain(np.ones((8, 8, 2), np.float32))).max() == 0  # translation
    with pytest.raises(MicroferError):
        optical_strain(np.zeros((8, 8)))


def test_spot_apex_and_interval_on_curves():
    t = np.arange(60, dtype=float)
    curve = np.exp(-0.5 * ((t - 37) / 6) ** 2) + np.random.default_rng(0).normal(0, 0.03, t.size)
    assert abs(spot_apex(curve) - 37) <= 1
    onset, apex, offset = spot_interval(np.r_[np.zeros(10), curve])
    assert abs(apex - 47) <= 1 and 30 <= onset < apex < offset <= 60
    assert spot_apex(np.array([0.0, 1.0])) == 1
    with pytest.raises(ClipError):
        spot_apex(np.array([0.0]))


def test_motion_curve_is_zero_at_onset_and_masked(aligned_face):
    mask = region_mask(128)
    assert mask.dtype == bool and 0.2 < mask.mean() < 0.6
    faces = [aligned_face, aligned_face.copy()]
    outside = aligned_face.copy()
    outside[~mask] = 0  # change only outside the ME regions
    for method in ("diff", "flow"):
        curve = motion_curve(faces + [outside], method)
        assert curve[0] == 0 and curve[1] == 0


def test_spotting_error_on_synthetic_clips_with_known_apex():
    """The spotted apex is within a few frames of the true one, with and without head drift.

    Measured on 24 microfer.synth clips of 40-100 frames at 640 x 480 (python -m
    microfer.bench.spot, numbers in microfer.clip.apex's docstring): the default "fd" curve has
    mean error 2.3 frames, max 11, where motion-vs-onset ("diff") drifted up to 38 frames off. Smaller,
    shorter clips here keep the test fast.
    """
    from microfer.bench.spot import measure_spotting
    from microfer.synth import Camera

    steady = measure_spotting(
        n_clips=5,
        seed=3,
        frame_size=(320, 240),
        n_frames=(30, 60),
        camera=Camera(drift_px=0, drift_deg=0),
    )
    assert steady["spotted"] == 5  # no apex was given, so every one was spotted
    errors = steady["errors"]
    assert len(errors) == 5 and steady["max_abs_frames"] == max(errors)
    assert np.mean(errors) <= 3 and max(errors) <= 6, errors

    drifting = measure_spotting(n_clips=5, seed=3, frame_size=(320, 240), n_frames=(30, 60))
    assert drifting["method"] == "fd"
    assert np.mean(drifting["errors"]) <= 3 and drifting["max_abs_frames"] <= 8, drifting["errors"]


@pytest.mark.parametrize("n", [3, 7, 60, 250])
@pytest.mark.parametrize("sigma", [1.0, 2.5, 8.0, 40.0])
def test_gaussian_smooth_is_scipys_gaussian_filter1d(n, sigma):
    from scipy.ndimage import gaussian_filter1d

    from microfer.clip.apex import gaussian_smooth

    curve = np.random.default_rng(n).random(n)
    np.testing.assert_allclose(
        gaussian_smooth(curve, sigma), gaussian_filter1d(curve, sigma, mode="nearest"), atol=1e-6
    )
