"""Tests of the plugin's losses against independent float64 numpy references.

Losses under test (all registered in ``mmpretrain.registry.MODELS`` by
``import mmtolerant``):

* ``TSDLoss``: per sample
  ``eta * CE(y, f) + (1 - eta) * [f_a1 - 1/(K-1) * sum_{k=2..K} f_ak]``
  with ``f = softmax(logits)`` and ``a_k`` the index of the k-th largest
  entry of ``f``.
* ``DistillKLLoss``: per sample
  ``tau^2 * KL(softmax(t / tau) || softmax(s / tau))``.
* ``ConfidencePenaltyLoss``: per sample ``CE(y, f) - beta * H(f)``.

The references below are written from those formulas only; the losses compute
in float32, hence tolerances of about 1e-5.
"""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mmtolerant  # noqa: F401  (registers the losses)
from mmpretrain.models.losses import CrossEntropyLoss
from mmpretrain.registry import MODELS
from mmtolerant.models.losses import (ConfidencePenaltyLoss, DistillKLLoss,
                                      TSDLoss)

RTOL = 1e-5
ATOL = 1e-5

# (N, C) shapes used throughout; C >= 3 so that TSD with k=3 is valid.
SHAPES = [(1, 3), (4, 5), (8, 10), (32, 100)]
LABEL_KINDS = ['index', 'index_n1', 'dirichlet', 'mixup']


# --------------------------------------------------------------------------
# float64 numpy references
# --------------------------------------------------------------------------
def np_log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def np_softmax(z):
    return np.exp(np_log_softmax(z))


def np_cross_entropy(logits, label, class_weight=None):
    """-sum_c w_c y_c log f_c for soft targets, -w_y log f_y for indices."""
    logp = np_log_softmax(logits)
    n, c = logp.shape
    label = np.asarray(label)
    if label.ndim == 2 and label.shape[1] == 1:
        label = label[:, 0]
    if label.ndim == 1:
        target = np.zeros((n, c))
        target[np.arange(n), label.astype(np.int64)] = 1.0
    else:
        target = label.astype(np.float64)
    w = np.ones(c) if class_weight is None else np.asarray(class_weight, float)
    return -(target * w * logp).sum(axis=1)


def np_top_score_difference(logits, k):
    """f_a1 - mean(f_a2..f_aK), a_k = index of the k-th largest probability."""
    f = np_softmax(logits)
    order = np.argsort(-f, axis=1, kind='stable')  # indices, largest first
    top = np.take_along_axis(f, order[:, :k], axis=1)
    return top[:, 0] - top[:, 1:].sum(axis=1) / (k - 1)


def np_tsd_loss(logits, label, eta, k, class_weight=None):
    return (eta * np_cross_entropy(logits, label, class_weight) +
            (1.0 - eta) * np_top_score_difference(logits, k))


def np_entropy(logits):
    logp = np_log_softmax(logits)
    return -(np.exp(logp) * logp).sum(axis=1)


def np_confidence_penalty_loss(logits, label, beta, class_weight=None):
    return np_cross_entropy(logits, label, class_weight) - beta * np_entropy(
        logits)


def np_distill_kl(student, teacher, tau):
    log_ps = np_log_softmax(np.asarray(student, np.float64) / tau)
    log_pt = np_log_softmax(np.asarray(teacher, np.float64) / tau)
    return tau**2 * (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1)


def np_reduce(per_sample,
              weight=None,
              reduction='mean',
              avg_factor=None,
              loss_weight=1.0):
    """mmpretrain's convention: weight, then mean/sum, or sum / avg_factor."""
    loss = np.asarray(per_sample, np.float64)
    if weight is not None:
        loss = loss * np.asarray(weight, np.float64)
    if reduction == 'none':
        out = loss
    elif avg_factor is not None:
        assert reduction == 'mean'
        out = loss.sum() / avg_factor
    elif reduction == 'mean':
        out = loss.mean()
    else:
        out = loss.sum()
    return loss_weight * out


# --------------------------------------------------------------------------
# input generators
# --------------------------------------------------------------------------
def make_logits(n, c, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy((scale * rng.standard_normal((n, c))).astype(
        np.float32))


def make_label(kind, n, c, seed=1):
    rng = np.random.default_rng(seed)
    if kind == 'index':
        return torch.from_numpy(rng.integers(0, c, size=n))
    if kind == 'index_n1':
        return torch.from_numpy(rng.integers(0, c, size=(n, 1)))
    if kind == 'dirichlet':
        return torch.from_numpy(
            rng.dirichlet(np.full(c, 0.5), size=n).astype(np.float32))
    if kind == 'mixup':
        a, b = rng.integers(0, c, size=n), rng.integers(0, c, size=n)
        lam = rng.uniform(0.0, 1.0, size=(n, 1))
        target = lam * np.eye(c)[a] + (1.0 - lam) * np.eye(c)[b]
        return torch.from_numpy(target.astype(np.float32))
    raise AssertionError(kind)


def to_np(t):
    return t.detach().double().numpy()


def assert_close(actual, expected, rtol=RTOL, atol=ATOL, err_msg=''):
    np.testing.assert_allclose(
        to_np(actual), np.asarray(expected), rtol=rtol, atol=atol,
        err_msg=err_msg)


# Loss factories keyed by name: (builder, numpy per-sample reference). The
# second argument of every loss is a label, except DistillKLLoss whose second
# argument is the teacher's logits.
def _tsd(**kw):
    return TSDLoss(eta=0.4, k=3, **kw)


def _cp(**kw):
    return ConfidencePenaltyLoss(beta=0.3, **kw)


def _kd(**kw):
    return DistillKLLoss(tau=2.0, **kw)


LOSSES = {
    'TSDLoss': (_tsd, lambda x, y: np_tsd_loss(x, y, eta=0.4, k=3)),
    'ConfidencePenaltyLoss':
    (_cp, lambda x, y: np_confidence_penalty_loss(x, y, beta=0.3)),
    'DistillKLLoss': (_kd, lambda x, t: np_distill_kl(x, t, tau=2.0)),
}


def second_argument(name, n, c, seed=1):
    if name == 'DistillKLLoss':
        return make_logits(n, c, seed=seed, scale=2.0)
    return make_label('index', n, c, seed=seed)


# --------------------------------------------------------------------------
# 0. registration
# --------------------------------------------------------------------------
@pytest.mark.parametrize('cfg, cls', [
    (dict(type='TSDLoss', eta=0.5, k=3), TSDLoss),
    (dict(type='DistillKLLoss', tau=4.0), DistillKLLoss),
    (dict(type='ConfidencePenaltyLoss', beta=0.1), ConfidencePenaltyLoss),
])
def test_losses_are_registered_in_mmpretrain_models(cfg, cls):
    loss = MODELS.build(cfg)
    assert isinstance(loss, cls)


def test_registry_built_tsd_loss_matches_reference():
    loss = MODELS.build(
        dict(type='TSDLoss', eta=0.7, k=4, num_classes=10, loss_weight=2.0))
    x, y = make_logits(6, 10), make_label('index', 6, 10)
    assert_close(
        loss(x, y), 2.0 * np_tsd_loss(to_np(x), y.numpy(), 0.7, 4).mean())


# --------------------------------------------------------------------------
# 1. values against the references
# --------------------------------------------------------------------------
def each_shape_and_label_kind():
    """Logits and labels of every shape in SHAPES and every label kind,
    with a name for assertion messages."""
    for n, c in SHAPES:
        for label_kind in LABEL_KINDS:
            yield (f'{n}x{c} {label_kind}', make_logits(n, c),
                   make_label(label_kind, n, c))


@pytest.mark.parametrize('eta', [0.0, 0.3, 1.0])
@pytest.mark.parametrize('k', [2, 3])
def test_tsd_loss_matches_reference_for_all_label_kinds(eta, k):
    for case, x, y in each_shape_and_label_kind():
        loss = TSDLoss(eta=eta, k=k)(x, y)
        assert loss.shape == (), case
        assert_close(loss, np_tsd_loss(to_np(x), y.numpy(), eta, k).mean(),
                     err_msg=case)


@pytest.mark.parametrize('beta', [0.0, 0.25, 2.0])
def test_confidence_penalty_matches_reference_for_all_label_kinds(beta):
    for case, x, y in each_shape_and_label_kind():
        loss = ConfidencePenaltyLoss(beta=beta)(x, y)
        assert loss.shape == (), case
        assert_close(
            loss, np_confidence_penalty_loss(to_np(x), y.numpy(),
                                             beta).mean(), err_msg=case)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('tau', [0.5, 1.0, 4.0])
def test_distill_kl_matches_reference(shape, tau):
    n, c = shape
    s, t = make_logits(n, c, seed=0), make_logits(n, c, seed=7, scale=2.0)
    loss = DistillKLLoss(tau=tau)(s, t)
    assert loss.shape == ()
    assert_close(loss, np_distill_kl(to_np(s), to_np(t), tau).mean())


@pytest.mark.parametrize('name', list(LOSSES))
@pytest.mark.parametrize('reduction', ['none', 'sum', 'mean'])
@pytest.mark.parametrize('use_weight', [False, True])
def test_reduction_and_per_sample_weight_follow_mmpretrain_convention(
        name, reduction, use_weight):
    build, ref = LOSSES[name]
    n, c = 9, 7
    x, other = make_logits(n, c), second_argument(name, n, c)
    weight = torch.from_numpy(
        np.random.default_rng(3).uniform(0, 2, n).astype(np.float32))
    weight = weight if use_weight else None
    loss = build(reduction=reduction)(x, other, weight=weight)
    expected = np_reduce(
        ref(to_np(x), other.numpy()),
        weight=None if weight is None else weight.numpy(),
        reduction=reduction)
    assert loss.shape == ((n, ) if reduction == 'none' else ())
    assert_close(loss, expected)


@pytest.mark.parametrize('name', list(LOSSES))
@pytest.mark.parametrize('use_weight', [False, True])
def test_avg_factor_divides_the_weighted_sum(name, use_weight):
    build, ref = LOSSES[name]
    n, c = 6, 5
    x, other = make_logits(n, c), second_argument(name, n, c)
    weight = torch.tensor([1.0, 0.0, 2.0, 0.5, 1.0, 0.0]) if use_weight \
        else None
    loss = build()(x, other, weight=weight, avg_factor=3.5)
    expected = np_reduce(
        ref(to_np(x), other.numpy()),
        weight=None if weight is None else weight.numpy(),
        avg_factor=3.5)
    assert_close(loss, expected)


@pytest.mark.parametrize('name', list(LOSSES))
def test_avg_factor_with_reduction_none_returns_weighted_per_sample_loss(
        name):
    build, ref = LOSSES[name]
    n, c = 5, 4
    x, other = make_logits(n, c), second_argument(name, n, c)
    weight = torch.tensor([1.0, 0.0, 2.0, 0.5, 3.0])
    loss = build(reduction='none')(x, other, weight=weight, avg_factor=10.0)
    assert_close(loss, ref(to_np(x), other.numpy()) * weight.numpy())


@pytest.mark.parametrize('name', list(LOSSES))
@pytest.mark.parametrize('built, override', [('mean', 'sum'),
                                             ('mean', 'none'),
                                             ('sum', 'mean'),
                                             ('none', 'mean')])
def test_reduction_override_takes_precedence(name, built, override):
    build, ref = LOSSES[name]
    n, c = 8, 6
    x, other = make_logits(n, c), second_argument(name, n, c)
    loss = build(reduction=built)(x, other, reduction_override=override)
    assert_close(loss, np_reduce(
        ref(to_np(x), other.numpy()), reduction=override))


@pytest.mark.parametrize('name', list(LOSSES))
@pytest.mark.parametrize('loss_weight', [0.0, 0.25, 3.0])
def test_loss_weight_scales_the_loss(name, loss_weight):
    build, ref = LOSSES[name]
    n, c = 8, 6
    x, other = make_logits(n, c), second_argument(name, n, c)
    weight = torch.linspace(0.5, 1.5, n)
    loss = build(loss_weight=loss_weight)(x, other, weight=weight)
    assert_close(
        loss,
        np_reduce(
            ref(to_np(x), other.numpy()),
            weight=weight.numpy(),
            loss_weight=loss_weight))


@pytest.mark.parametrize('label_kind', LABEL_KINDS)
def test_class_weight_weighs_the_cross_entropy_term(label_kind):
    n, c = 10, 4
    class_weight = [0.5, 1.0, 2.0, 0.1]
    x, y = make_logits(n, c), make_label(label_kind, n, c)
    tsd = TSDLoss(eta=0.6, k=2, class_weight=class_weight)(x, y)
    assert_close(
        tsd,
        np_tsd_loss(to_np(x), y.numpy(), 0.6, 2, class_weight).mean())
    cp = ConfidencePenaltyLoss(beta=0.2, class_weight=class_weight)(x, y)
    assert_close(
        cp,
        np_confidence_penalty_loss(to_np(x), y.numpy(), 0.2,
                                   class_weight).mean())


def test_index_labels_of_shape_n_and_n1_give_the_same_loss():
    x, y = make_logits(7, 5), make_label('index', 7, 5)
    for loss in (TSDLoss(eta=0.5, k=3), ConfidencePenaltyLoss(beta=0.5)):
        assert_close(loss(x, y), to_np(loss(x, y.view(-1, 1))), atol=0)


def test_one_hot_soft_targets_equal_index_labels():
    x, y = make_logits(7, 5), make_label('index', 7, 5)
    one_hot = F.one_hot(y, 5).float()
    for loss in (TSDLoss(eta=0.5, k=3), ConfidencePenaltyLoss(beta=0.5)):
        assert_close(loss(x, one_hot), to_np(loss(x, y)))


# --------------------------------------------------------------------------
# 2. TSD specifics
# --------------------------------------------------------------------------
@pytest.mark.parametrize('c', [2, 3, 10])
@pytest.mark.parametrize('eta', [0.0, 0.5])
def test_tsd_with_k_equal_to_all_classes(c, eta):
    x, y = make_logits(12, c, seed=4), make_label('index', 12, c)
    loss = TSDLoss(eta=eta, k=c, num_classes=c)(x, y)
    assert_close(loss, np_tsd_loss(to_np(x), y.numpy(), eta, c).mean())


def test_tsd_with_k_equal_to_all_classes_uses_one_minus_primary():
    # With K=C the secondary mean is (1 - f_a1) / (C - 1).
    c = 6
    x, y = make_logits(5, c), make_label('index', 5, c)
    f = np_softmax(to_np(x))
    expected = (f.max(1) - (1 - f.max(1)) / (c - 1)).mean()
    assert_close(TSDLoss(eta=0.0, k=c)(x, y), expected)


def test_tsd_with_k2_is_top1_minus_top2():
    x, y = make_logits(16, 8), make_label('index', 16, 8)
    f = np.sort(np_softmax(to_np(x)), axis=1)[:, ::-1]
    assert_close(TSDLoss(eta=0.0, k=2)(x, y), (f[:, 0] - f[:, 1]).mean())


TIE_CASES = [
    ([3.0, 1.0, 1.0, 1.0, 0.0], 2),   # tie straddles ranks 2..4, K=2
    ([3.0, 1.0, 1.0, 1.0, 0.0], 3),   # same, K=3
    ([0.0, 1.0, 3.0, 1.0, 1.0], 2),   # tied values in a different order
    ([2.0, 2.0, 2.0, 0.0, 0.0], 2),   # tie at the top
    ([1.0, 1.0, 1.0, 1.0, 1.0], 3),   # all equal: TSD term is 0
    ([5.0, -1.0, 2.0, 2.0, 2.0], 4),  # tie filling the whole of a_2..a_K
]


@pytest.mark.parametrize('row, k', TIE_CASES)
@pytest.mark.parametrize('eta', [0.0, 0.5])
def test_tsd_with_ties_in_top_k_equals_sorted_value_reference(row, k, eta):
    x = torch.tensor([row])
    y = torch.tensor([int(np.argmin(row))])
    loss = TSDLoss(eta=eta, k=k)(x, y)
    sorted_f = np.sort(np_softmax(np.array([row])), axis=1)[:, ::-1]
    tsd = sorted_f[:, 0] - sorted_f[:, 1:k].mean(axis=1)
    expected = eta * np_cross_entropy(np.array([row]), y.numpy()) + \
        (1 - eta) * tsd
    assert_close(loss, expected.mean())
    assert_close(loss, np_tsd_loss(np.array([row]), y.numpy(), eta, k).mean())


def test_tsd_hand_computed_value_with_ties():
    # logits [3,1,1,1,0], K=3: f_a1 - (f_1 + f_1) / 2 = (e^3 - e) / Z
    row = np.array([3.0, 1.0, 1.0, 1.0, 0.0])
    z = np.exp(row).sum()
    expected = (np.exp(3.0) - np.exp(1.0)) / z
    loss = TSDLoss(eta=0.0, k=3)(torch.tensor(row[None], dtype=torch.float32),
                                 torch.tensor([4]))
    assert_close(loss, expected)


def test_tsd_is_invariant_to_permuting_classes():
    n, c = 6, 9
    x, y = make_logits(n, c), make_label('index', n, c)
    perm = torch.from_numpy(np.random.default_rng(5).permutation(c))
    inverse = torch.argsort(perm)
    loss = TSDLoss(eta=0.3, k=4)
    assert_close(loss(x[:, perm], inverse[y]), to_np(loss(x, y)))


@pytest.mark.parametrize('label_kind', LABEL_KINDS)
@pytest.mark.parametrize('shape', [(1, 2), (5, 10), (16, 100)])
def test_tsd_with_eta1_is_plain_cross_entropy(label_kind, shape):
    n, c = shape
    x, y = make_logits(n, c), make_label(label_kind, n, c)
    loss = TSDLoss(eta=1.0, k=2)(x, y)
    assert_close(loss, np_cross_entropy(to_np(x), y.numpy()).mean())
    soft = y.dim() == 2 and y.shape[1] == c
    if soft:
        torch_ce = F.cross_entropy(x, y)  # probabilities as targets
        mm_ce = CrossEntropyLoss(use_soft=True)(x, y)
    else:
        torch_ce = F.cross_entropy(x, y.view(-1))
        mm_ce = CrossEntropyLoss()(x, y.view(-1))
    assert_close(loss, to_np(torch_ce))
    assert_close(loss, to_np(mm_ce))


@pytest.mark.parametrize('soft', [False, True])
def test_tsd_with_eta1_and_class_weight_equals_mmpretrain_cross_entropy(soft):
    n, c = 12, 5
    class_weight = [1.0, 2.0, 0.5, 0.0, 3.0]
    x = make_logits(n, c)
    y = make_label('dirichlet' if soft else 'index', n, c)
    weight = torch.linspace(0.1, 2.0, n)
    loss = TSDLoss(eta=1.0, k=3, class_weight=class_weight)(
        x, y, weight=weight)
    mm = CrossEntropyLoss(use_soft=soft, class_weight=class_weight)(
        x, y, weight=weight)
    assert_close(loss, to_np(mm))


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('k', [2, 3])
def test_tsd_with_eta0_is_pure_tsd_term_and_ignores_labels(shape, k):
    n, c = shape
    x = make_logits(n, c)
    loss = TSDLoss(eta=0.0, k=k)
    expected = np_top_score_difference(to_np(x), k).mean()
    for kind in LABEL_KINDS:
        assert_close(loss(x, make_label(kind, n, c, seed=11)), expected)
    # the TSD term lies in [0, 1]
    per_sample = TSDLoss(eta=0.0, k=k, reduction='none')(
        x, make_label('index', n, c))
    assert (per_sample >= -1e-7).all() and (per_sample <= 1 + 1e-7).all()


# --------------------------------------------------------------------------
# 3. TSD gradients
# --------------------------------------------------------------------------
@pytest.mark.parametrize('shape', [(8, 5), (16, 10), (4, 100)])
@pytest.mark.parametrize('k', [2, 3, 5])
def test_tsd_term_gradient_lowers_primary_and_raises_secondary_scores(
        shape, k):
    n, c = shape
    x = make_logits(n, c, seed=21).requires_grad_(True)
    y = make_label('index', n, c)
    TSDLoss(eta=0.0, k=k)(x, y).backward()
    grad = x.grad.numpy()
    order = np.argsort(-to_np(x), axis=1)
    rows = np.arange(n)[:, None]
    primary = grad[rows, order[:, :1]]
    secondary = grad[rows, order[:, 1:k]]
    # descent (x -= lr * grad) lowers a_1 and raises a_2..a_K
    assert (primary > 0).all(), primary
    assert (secondary < 0).all(), secondary


def _numpy_finite_difference(fun, x, h=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += h
        minus[idx] -= h
        grad[idx] = (fun(plus) - fun(minus)) / (2 * h)
    return grad


def _min_gap_between_sorted_probs(logits):
    f = np.sort(np_softmax(logits), axis=1)
    return np.diff(f, axis=1).min()


@pytest.mark.parametrize('eta', [0.0, 0.35])
@pytest.mark.parametrize('k', [2, 3, 6])
@pytest.mark.parametrize('label_kind', ['index', 'dirichlet'])
def test_tsd_autograd_gradient_matches_numpy_finite_difference(
        eta, k, label_kind):
    n, c = 4, 6
    x = make_logits(n, c, seed=33, scale=1.5)
    x64 = to_np(x)
    assert _min_gap_between_sorted_probs(x64) > 1e-4  # no (near) ties
    y = make_label(label_kind, n, c)
    x.requires_grad_(True)
    TSDLoss(eta=eta, k=k)(x, y).backward()

    def ref(z):
        return np_tsd_loss(z, y.numpy(), eta, k).mean()

    np.testing.assert_allclose(
        x.grad.numpy(),
        _numpy_finite_difference(ref, x64),
        rtol=1e-4,
        atol=1e-6)


def test_confidence_penalty_and_distill_gradients_match_finite_difference():
    n, c = 3, 5
    s = make_logits(n, c, seed=41, scale=1.5)
    t = make_logits(n, c, seed=42, scale=1.5)
    y = make_label('mixup', n, c)
    s64, t64 = to_np(s), to_np(t)

    s_cp = s.clone().requires_grad_(True)
    ConfidencePenaltyLoss(beta=0.7)(s_cp, y).backward()
    np.testing.assert_allclose(
        s_cp.grad.numpy(),
        _numpy_finite_difference(
            lambda z: np_confidence_penalty_loss(z, y.numpy(), 0.7).mean(),
            s64),
        rtol=1e-4,
        atol=1e-6)

    s_kd = s.clone().requires_grad_(True)
    DistillKLLoss(tau=3.0)(s_kd, t).backward()
    np.testing.assert_allclose(
        s_kd.grad.numpy(),
        _numpy_finite_difference(
            lambda z: np_distill_kl(z, t64, 3.0).mean(), s64),
        rtol=1e-4,
        atol=1e-6)


# --------------------------------------------------------------------------
# 4. DistillKLLoss specifics
# --------------------------------------------------------------------------
@pytest.mark.parametrize('tau', [1.0, 4.0])
def test_distill_kl_is_tau_squared_times_kl_of_softened_distributions(tau):
    n, c = 10, 7
    s, t = make_logits(n, c, seed=2), make_logits(n, c, seed=3)
    loss = DistillKLLoss(tau=tau)(s, t)
    # KL of the softened distributions, without the tau^2 factor
    log_ps = np_log_softmax(to_np(s) / tau)
    log_pt = np_log_softmax(to_np(t) / tau)
    plain_kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(1).mean()
    assert_close(loss, tau**2 * plain_kl)
    assert_close(loss, np_distill_kl(to_np(s), to_np(t), tau).mean())


@pytest.mark.parametrize('tau', [1.0, 4.0])
def test_distill_kl_equals_soft_target_ce_minus_teacher_entropy(tau):
    # KL(p_t || p_s) = CE(p_t, p_s) - H(p_t): the teacher's softened
    # distribution acts as a soft target; no ground-truth label is involved.
    n, c = 10, 7
    s, t = make_logits(n, c, seed=2), make_logits(n, c, seed=3)
    p_t = np_softmax(to_np(t) / tau)
    expected = tau**2 * (
        np_cross_entropy(to_np(s) / tau, p_t) - np_entropy(to_np(t) / tau))
    assert_close(DistillKLLoss(tau=tau)(s, t), expected.mean())


@pytest.mark.parametrize('tau', [1.0, 4.0])
def test_distill_kl_is_invariant_to_per_row_logit_shifts(tau):
    n, c = 6, 5
    s, t = make_logits(n, c, seed=2), make_logits(n, c, seed=3)
    shift_s = torch.linspace(-5, 5, n)[:, None]
    shift_t = torch.linspace(3, -2, n)[:, None]
    loss = DistillKLLoss(tau=tau)
    assert_close(loss(s + shift_s, t + shift_t), to_np(loss(s, t)))


@pytest.mark.parametrize('tau', [0.5, 1.0, 4.0])
@pytest.mark.parametrize('shape', SHAPES)
def test_distill_kl_is_zero_when_student_equals_teacher(tau, shape):
    x = make_logits(*shape, seed=9)
    loss = DistillKLLoss(tau=tau, reduction='none')(x, x.clone())
    np.testing.assert_allclose(to_np(loss), 0.0, atol=1e-5)


@pytest.mark.parametrize('tau', [1.0, 4.0])
def test_distill_kl_is_positive_when_student_differs(tau):
    s, t = make_logits(8, 6, seed=1), make_logits(8, 6, seed=2)
    loss = DistillKLLoss(tau=tau, reduction='none')(s, t)
    assert (loss > 0).all()


@pytest.mark.parametrize('tau', [1.0, 4.0])
def test_distill_kl_gives_no_gradient_to_the_teacher(tau):
    s = make_logits(5, 4, seed=1).requires_grad_(True)
    t = make_logits(5, 4, seed=2).requires_grad_(True)
    DistillKLLoss(tau=tau)(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert s.grad.abs().sum() > 0


# --------------------------------------------------------------------------
# 5. argument validation
# --------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs, bad', [
    (dict(eta=0.5, k=1), '1'),
    (dict(eta=0.5, k=0), '0'),
    (dict(eta=0.5, k=2.5), '2.5'),
    (dict(eta=-0.1, k=2), '-0.1'),
    (dict(eta=1.5, k=2), '1.5'),
    (dict(eta=0.5, k=6, num_classes=5), 'k=6'),
    (dict(eta=0.5, k=2, reduction='avg'), 'avg'),
])
def test_tsd_rejects_bad_constructor_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=re.escape(bad)):
        TSDLoss(**kwargs)


def test_tsd_rejects_bad_arguments_through_the_registry():
    with pytest.raises(ValueError, match=re.escape('k=6')):
        MODELS.build(dict(type='TSDLoss', eta=0.5, k=6, num_classes=5))


def test_tsd_rejects_k_larger_than_classes_at_forward():
    loss = TSDLoss(eta=0.5, k=6)
    x, y = make_logits(3, 5), make_label('index', 3, 5)
    with pytest.raises(ValueError, match=r'k=6.*5'):
        loss(x, y)


@pytest.mark.parametrize('tau, bad', [(0, '0'), (-1, '-1'), (0.0, '0.0')])
def test_distill_kl_rejects_non_positive_tau(tau, bad):
    with pytest.raises(ValueError, match=re.escape(bad)):
        DistillKLLoss(tau=tau)


def test_confidence_penalty_rejects_negative_beta():
    with pytest.raises(ValueError, match=re.escape('-1')):
        ConfidencePenaltyLoss(beta=-1)


@pytest.mark.parametrize('build', [
    lambda r: TSDLoss(eta=0.5, k=2, reduction=r),
    lambda r: ConfidencePenaltyLoss(beta=0.1, reduction=r),
    lambda r: DistillKLLoss(tau=1.0, reduction=r),
])
def test_unknown_reduction_is_rejected_at_build_and_forward(build):
    with pytest.raises(ValueError, match="'avg'"):
        build('avg')
    loss = build('mean')
    x, y = make_logits(4, 5), make_label('index', 4, 5)
    other = x.clone() if isinstance(loss, DistillKLLoss) else y
    with pytest.raises(ValueError, match="'avg'"):
        loss(x, other, reduction_override='avg')


LABEL_LOSSES = [
    lambda: TSDLoss(eta=0.5, k=2),
    lambda: ConfidencePenaltyLoss(beta=0.1),
]
WEIGHTED_LABEL_LOSSES = [
    lambda: TSDLoss(eta=0.5, k=2, class_weight=[1.0] * 10),
    lambda: ConfidencePenaltyLoss(beta=0.1, class_weight=[1.0] * 10),
]


@pytest.mark.parametrize('make_loss', LABEL_LOSSES)
def test_index_label_count_must_match_logit_rows(make_loss):
    x, y = make_logits(4, 5), make_label('index', 3, 5)
    with pytest.raises(ValueError, match=r'4 logits rows but 3 labels'):
        make_loss()(x, y)


@pytest.mark.parametrize('make_loss', LABEL_LOSSES)
@pytest.mark.parametrize('label_shape', [(4, 6), (3, 5)])
def test_soft_target_shape_must_match_logits(make_loss, label_shape):
    x = make_logits(4, 5)
    y = torch.full(label_shape, 1.0 / label_shape[1])
    with pytest.raises(ValueError, match=re.escape(str(label_shape))):
        make_loss()(x, y)


@pytest.mark.parametrize('make_loss', LABEL_LOSSES + WEIGHTED_LABEL_LOSSES)
@pytest.mark.parametrize('bad', [10, 11, -1, -100])
def test_out_of_range_label_is_rejected(make_loss, bad):
    """-100 too: torch's cross-entropy would skip it by default."""
    x = make_logits(4, 10)
    y = torch.tensor([0, 9, bad, 3])
    with pytest.raises(ValueError, match=rf'label {bad}\b'):
        make_loss()(x, y)


@pytest.mark.parametrize('t_shape', [(4, 6), (3, 5)])
def test_distill_kl_rejects_student_teacher_shape_mismatch(t_shape):
    s, t = make_logits(4, 5), make_logits(*t_shape)
    with pytest.raises(ValueError, match=re.escape(str(t_shape))):
        DistillKLLoss()(s, t)


# --------------------------------------------------------------------------
# 6. bf16 autocast
# --------------------------------------------------------------------------
@pytest.mark.parametrize('name', list(LOSSES))
@pytest.mark.parametrize('label_kind', ['index', 'mixup'])
def test_losses_under_bf16_autocast_return_finite_float32_close_to_fp32(
        name, label_kind):
    build, _ = LOSSES[name]
    n, c = 16, 10
    x32 = make_logits(n, c, scale=2.0)
    if name == 'DistillKLLoss':
        other32 = make_logits(n, c, seed=5, scale=2.0)
        other16 = other32.bfloat16()
    else:
        other32 = other16 = make_label(label_kind, n, c)
    reference = build()(x32, other32)

    x16 = x32.bfloat16().requires_grad_(True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = build()(x16, other16)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert_close(loss, to_np(reference), rtol=2e-2, atol=2e-2)
    loss.backward()
    assert x16.grad is not None and torch.isfinite(x16.grad).all()


# --- regressions found in review -------------------------------------------

def test_losses_stay_finite_when_a_class_is_masked_with_minus_inf():
    masked = torch.tensor([[2., 1., -float('inf')]])
    label = torch.tensor([1])
    ce = F.cross_entropy(masked, label)
    assert torch.allclose(
        ConfidencePenaltyLoss(beta=0.0)(masked, label), ce)
    assert torch.isfinite(ConfidencePenaltyLoss(beta=0.5)(masked, label))
    student = torch.tensor([[2., 1., 0.]])
    p_t = np.array([np.e**2, np.e, 0.]) / (np.e**2 + np.e)
    log_p_s = np.log(np.exp([2., 1., 0.]) / np.exp([2., 1., 0.]).sum())
    expected = (p_t[:2] * (np.log(p_t[:2]) - log_p_s[:2])).sum()
    assert DistillKLLoss()(student, masked).item() == pytest.approx(
        expected, rel=1e-5)


def test_per_sample_weight_of_shape_n_by_1_is_refused():
    logits, label = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r'\(4, 1\)'):
        TSDLoss(eta=0.5, k=2)(logits, label, weight=torch.ones(4, 1))


def test_numpy_integer_k_is_accepted_and_infinite_settings_refused():
    assert TSDLoss(eta=0.5, k=np.int64(3)).k == 3
    with pytest.raises(ValueError, match='inf'):
        ConfidencePenaltyLoss(beta=float('inf'))
    with pytest.raises(ValueError, match='inf'):
        DistillKLLoss(tau=float('inf'))


def test_positional_arguments_follow_the_documented_public_signatures():
    import inspect
    assert list(inspect.signature(TSDLoss).parameters)[:3] == [
        'eta', 'k', 'loss_weight']
    assert list(inspect.signature(DistillKLLoss).parameters)[:2] == [
        'tau', 'loss_weight']
    assert list(inspect.signature(ConfidencePenaltyLoss).parameters)[:2] == [
        'beta', 'loss_weight']
    assert TSDLoss(0.5, 3, 2.0).loss_weight == 2.0
    assert DistillKLLoss(2.0, 0.25).loss_weight == 0.25
