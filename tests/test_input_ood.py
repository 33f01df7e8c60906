"""The input check of bundles trained on circulated inputs (`microfer.learn.input_ood`), on
the real composite rows when the shared folder is beside the checkout."""

import numpy as np
import pytest

from microfer.bench.input_ood_eval import TEXTURES, moving_texture
from microfer.errors import MicroferError
from microfer.learn.input_ood import (
    STATS,
    InputCheck,
    fit_input_check,
    held_out_input_scores,
    input_statistics,
)
from microfer.models.fer_teacher import teacher_numpy_state


@pytest.fixture(scope="module")
def teacher():
    return teacher_numpy_state()


@pytest.fixture(scope="module")
def real_rows(shared_dir, tmp_path_factory, teacher):
    """(cache, keys, subjects, statistics) of the real composite rows."""
    from microfer.clip.cache import Cache
    from microfer.clip.composite_cache import prepare_cache
    from microfer.datasets.composite_inputs import CSV_NAME, CompositeSettings

    root = shared_dir / "composite_inputs"
    if not (root / CSV_NAME).is_file():
        pytest.skip(f"derived composite inputs not available ({root} is absent)")
    out = tmp_path_factory.mktemp("composite")
    prepare_cache(root, out)
    cache = Cache.for_settings(out, CompositeSettings())
    index = cache.index()
    keys = sorted(index.loc[index["status"] == "ok", "key"])
    subjects = np.array(["/".join(k.split("/")[:2]) for k in keys])
    stats = input_statistics([cache.load(k) for k in keys], teacher)
    return cache, keys, subjects, stats


def test_moving_non_face_textures_are_flagged_and_most_real_subjects_are_not(real_rows, teacher):
    _, _, subjects, stats = real_rows
    check = fit_input_check(stats, subjects)
    rng = np.random.default_rng(3)
    textures = [moving_texture(kind, rng) for kind in TEXTURES for _ in range(2)]
    scores = check.score(input_statistics(textures, teacher))
    assert (scores > check.threshold).all(), dict(zip(TEXTURES * 2, scores.round(1)))
    # by construction, about 5% of the held-out real rows lie above the 95th percentile
    held = held_out_input_scores(stats, subjects)
    assert 0.02 <= np.mean(held > check.threshold) <= 0.08


def test_the_threshold_comes_from_the_training_rows_only(real_rows):
    from microfer.learn.train import input_check_of

    cache, keys, subjects, stats = real_rows
    names = sorted(set(subjects))
    train = np.isin(subjects, names[0::2])  # half A trains; half B stays in the cache
    check = input_check_of(cache, [k for k, t in zip(keys, train) if t], subjects[train])
    assert check.rows == train.sum() and check.groups == len(names[0::2])
    expected = np.nanpercentile(held_out_input_scores(stats[train], subjects[train]), 95)
    assert check.threshold == pytest.approx(expected)
    # the rows of half B, present in the same cache, changed nothing: with them it differs
    assert fit_input_check(stats, subjects).threshold != pytest.approx(check.threshold)
    np.testing.assert_allclose(check.center, stats[train].mean(0))


def test_statistics_refuse_pixel_flows_and_the_check_round_trips_its_arrays(teacher):
    rng = np.random.default_rng(0)
    clip = moving_texture("blobs", rng)
    stats = input_statistics([clip], teacher)
    assert stats.shape == (1, len(STATS)) and np.isfinite(stats).all()
    X = np.random.default_rng(1).normal(size=(30, len(STATS)))
    check = fit_input_check(X, np.repeat(np.arange(6), 5))
    again = InputCheck.from_arrays(check.arrays(), check.config())
    np.testing.assert_allclose(again.score(X), check.score(X))
    assert again.threshold == check.threshold and again.rows == 30 and again.groups == 6
    clip.flow_units = "pixels"
    with pytest.raises(MicroferError, match="holds pixels"):
        input_statistics([clip], teacher)
    with pytest.raises(MicroferError, match="at least 2 subjects"):
        fit_input_check(X, np.zeros(30))
