from typing import Sequence

from mmpretrain.evaluation import Accuracy
from mmpretrain.registry import METRICS


@METRICS.register_module()
class TeacherAccuracy(Accuracy):
    """Top-k accuracy of the frozen teacher of a ``DistillImageClassifier``.

    Validation reports the student through ``Accuracy``; adding this metric
    to ``val_evaluator`` reports the teacher on the same samples as
    ``teacher_accuracy/top1``. It reads the ``teacher_pred_score`` that the
    classifier stores when ``eval_teacher=True``. Arguments as ``Accuracy``.
    """
    default_prefix = 'teacher_accuracy'

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            if 'teacher_pred_score' not in sample:
                raise KeyError(
                    'TeacherAccuracy needs teacher predictions: use it with '
                    'DistillImageClassifier and eval_teacher=True')
            self.results.append(
                dict(
                    pred_score=sample['teacher_pred_score'].cpu(),
                    gt_label=sample['gt_label'].cpu()))
