# Student of a frozen teacher on digits: lam * CE + (1 - lam) * KL.
#   python tools/train.py configs/tsd/kd_resnet18-w8_resnet18-w8_1xb64_digits.py \
#     --cfg-options model.teacher.checkpoint=work_dirs/tsd-teacher_resnet18-w8_1xb64_digits/exported_model.pth
_base_ = ['./strict-teacher_resnet18-w8_1xb64_digits.py']

model = dict(
    type='DistillImageClassifier',
    teacher=dict(
        config='configs/tsd/tsd-teacher_resnet18-w8_1xb64_digits.py',
        checkpoint='work_dirs/tsd-teacher_resnet18-w8_1xb64_digits/exported_model.pth'),
    lam=0.5,
    distill_loss=dict(type='DistillKLLoss', tau=1.0),
)
val_evaluator = [
    dict(type='Accuracy', topk=(1, 5)),
    dict(type='TeacherAccuracy', topk=(1, 5)),
]
test_evaluator = val_evaluator
