"""A distillation step reads no more tensor values on the host than plain
training does.

Reading a tensor's value on the host (``.item()``, ``int()``, ``float()``,
``bool()``: the op ``aten._local_scalar_dense``) makes the CPU wait until
the device has computed it, which stalls a GPU's queue of work in the middle
of the step. Counted here on the CPU, where every such read is visible."""
import pytest
import torch
from mmengine.optim import OptimWrapper
from mmpretrain.registry import MODELS
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import digits_batch, student_cfg
from mmtolerant.models.classifiers import plain_classifier_cfg
from mmtolerant.models.losses import ConfidencePenaltyLoss, TSDLoss


class ScalarReads(TorchDispatchMode):
    """Counts the host reads of tensor values made while it is active."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def scalar_reads_of_a_train_step(model, indices=range(16)):
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    batch = digits_batch(indices)
    with ScalarReads() as reads:
        model.train_step(batch, optim)
    return reads.count


@pytest.fixture(scope='module')
def student_model_cfg(digits_teacher, tmp_path_factory):
    cfg = student_cfg(digits_teacher, tmp_path_factory.mktemp('syncs'))
    cfg.model.data_preprocessor = cfg.data_preprocessor
    return cfg.model


def build(model_cfg):
    torch.manual_seed(0)
    return MODELS.build(model_cfg).train()


def test_a_live_teacher_adds_no_host_reads_to_the_train_step(
        student_model_cfg):
    plain = scalar_reads_of_a_train_step(
        build(plain_classifier_cfg(student_model_cfg)))
    live = scalar_reads_of_a_train_step(build(student_model_cfg))
    assert live == plain


def test_the_teacher_cache_reads_only_its_own_cpu_bookkeeping(
        student_model_cfg):
    """What a cached step adds, all of it reads of CPU tensors the cache
    owns (keys, flags, fingerprints already on the host), none of a value
    still being computed on the device: filling reads the largest key (to
    size the arrays); replaying reads whether every key is cached and
    whether some input changed."""
    plain = scalar_reads_of_a_train_step(
        build(plain_classifier_cfg(student_model_cfg)))
    model = build(dict(student_model_cfg, teacher_cache=dict()))
    fill = scalar_reads_of_a_train_step(model)
    replay = scalar_reads_of_a_train_step(model)
    assert (model.teacher_cache.misses, model.teacher_cache.hits) == (1, 1)
    assert (fill - plain, replay - plain) == (1, 2)


@pytest.mark.parametrize('make_loss', [
    lambda w: TSDLoss(eta=0.5, k=2, class_weight=w),
    lambda w: TSDLoss(eta=1.0, k=2, class_weight=w),
    lambda w: ConfidencePenaltyLoss(beta=0.1, class_weight=w),
])
@pytest.mark.parametrize('class_weight', [None, [1.0, 2.0, 0.5, 1.0, 3.0]])
def test_label_losses_read_no_label_on_the_host(make_loss, class_weight):
    """The labels are checked by torch's cross-entropy itself, not read.
    (In training, the logged loss terms come to the host once: the message
    hub keeps numbers.)"""
    loss = make_loss(class_weight).eval()
    x = torch.randn(4, 5, requires_grad=True)
    with ScalarReads() as reads:
        loss(x, torch.tensor([0, 4, 2, 3])).backward()
    assert reads.count == 0
