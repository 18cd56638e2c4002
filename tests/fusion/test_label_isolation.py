"""Ground-truth labels provably never reach a fusion method.

1. The view a method receives (`SpotFeatures`) has no field that could hold labels and refuses new
   attributes, so a method cannot read or smuggle them.
2. Changing the labels (a permutation) leaves every method's output bit-identical for a fixed seed.
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

from gauntlet.fusion.methods import METHOD_NAMES, make_method
from gauntlet.fusion.methods.base import FusionConfig, FusionMethod, LearnedFusionMethod
from gauntlet.fusion.slide import SpotFeatures


def test_spot_features_has_no_label_field(tiny_slide):
    view = tiny_slide.features()
    names = {f.name for f in dataclasses.fields(view)}
    assert names == {"name", "expression", "image", "coords"}
    assert not any("label" in n for n in dir(view))
    with pytest.raises(AttributeError):
        _ = view.labels  # noqa: B018 - the access itself is the assertion
    with pytest.raises((AttributeError, TypeError, dataclasses.FrozenInstanceError)):
        view.labels = tiny_slide.labels  # slots + frozen: nothing can be attached


def test_fit_interface_takes_the_label_free_view():
    for fn in (FusionMethod.fit_transform, LearnedFusionMethod.fit_transform):
        params = inspect.signature(fn).parameters
        assert params["features"].annotation in (SpotFeatures, "SpotFeatures")
        assert not any("label" in p for p in params)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_permuting_labels_does_not_change_the_embedding(tiny_slide, name):
    rng = np.random.default_rng(1)
    relabelled = dataclasses.replace(tiny_slide, labels=rng.permutation(tiny_slide.labels))
    assert not np.array_equal(relabelled.labels, tiny_slide.labels)
    method = make_method(name, FusionConfig(epochs=3))
    a = method.fit_transform(tiny_slide.features(), seed=0)
    b = method.fit_transform(relabelled.features(), seed=0)
    assert np.array_equal(a, b)
