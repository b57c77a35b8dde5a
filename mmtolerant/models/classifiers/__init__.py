from .distill_classifier import DistillImageClassifier
from .frozen_teacher import (EnsembleTeacher, FrozenTeacher, build_teacher,
                             check_teacher_options)
from .plain_classifier import export_plain_model, plain_classifier_cfg

__all__ = [
    'DistillImageClassifier', 'EnsembleTeacher', 'FrozenTeacher',
    'build_teacher', 'check_teacher_options',
    'export_plain_model', 'plain_classifier_cfg'
]
