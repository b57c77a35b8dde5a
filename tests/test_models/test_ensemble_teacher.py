"""The ensemble teacher: several frozen teachers whose scores are the log
of their average softmax output."""
import numpy as np
import pytest
import torch

from conftest import digits_batch
from mmtolerant.models.classifiers import (EnsembleTeacher, FrozenTeacher,
                                           build_teacher)


def members(teacher_dir):
    config = str(teacher_dir / 'exported_model.py')
    return [
        dict(config=config, checkpoint=str(teacher_dir / 'epoch_1.pth')),
        dict(config=config, checkpoint=str(teacher_dir / 'exported_model.pth'))
    ]


def test_the_ensembles_softmax_is_the_members_average_prediction(
        digits_teacher):
    ensemble = build_teacher(dict(members=members(digits_teacher)))
    assert isinstance(ensemble, EnsembleTeacher)
    assert not ensemble.training
    assert not any(p.requires_grad for p in ensemble.parameters())
    # Independently: each member alone, its softmax in float64, averaged.
    singles = [FrozenTeacher.from_cfg(m) for m in members(digits_teacher)]
    model = singles[0].model
    inputs = model.data_preprocessor(digits_batch(32), False)['inputs']
    with torch.no_grad():
        probs = [torch.softmax(t(inputs).double(), 1).numpy()
                 for t in singles]
        scores = ensemble(inputs)
    assert scores.dtype == torch.float32
    np.testing.assert_allclose(
        torch.softmax(scores.double(), 1).numpy(), np.mean(probs, 0),
        atol=1e-6)
    # The members differ (epoch 1 and epoch 2), so the average is neither.
    assert not np.allclose(probs[0], probs[1], atol=1e-3)


@pytest.mark.parametrize('cfg, message', [
    (dict(members=[]), 'non-empty list'),
    (dict(members='a.pth'), 'non-empty list'),
    (dict(members=[dict(config='x.py', checkpoint='x.pth')], lam=1),
     r"unknown keys \['lam'\]"),
])
def test_a_bad_ensemble_teacher_is_refused_naming_the_value(cfg, message):
    with pytest.raises(ValueError, match=message):
        build_teacher(cfg)
