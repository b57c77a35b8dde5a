from .dump_predictions import DumpPredictions
from .teacher_accuracy import TeacherAccuracy

__all__ = ['TeacherAccuracy', 'DumpPredictions']
