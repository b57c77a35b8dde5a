from .distill_classifier import (DistillImageClassifier, build_frozen_teacher,
                                 check_teacher_options, plain_classifier_cfg)

__all__ = [
    'DistillImageClassifier', 'build_frozen_teacher', 'check_teacher_options',
    'plain_classifier_cfg'
]
