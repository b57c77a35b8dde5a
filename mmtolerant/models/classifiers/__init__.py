from .distill_classifier import DistillImageClassifier
from .ensemble_teacher import EnsembleTeacher, build_teacher
from .frozen_teacher import FrozenTeacher, check_teacher_options
from .plain_classifier import export_plain_model, plain_classifier_cfg

__all__ = [
    'DistillImageClassifier', 'EnsembleTeacher', 'FrozenTeacher',
    'build_teacher', 'check_teacher_options',
    'export_plain_model', 'plain_classifier_cfg'
]
