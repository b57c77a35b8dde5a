# Student taught by a frozen teacher:
#   lam * CE + (1 - lam) * tau^2 * KL(teacher || student).
# Train a teacher first, then point `model.teacher` at it, e.g.
#   python tools/train.py configs/tsd/kd_resnet18-w16_resnet18-w16_1xb128_fashion-mnist.py \
#     --cfg-options model.teacher.checkpoint=work_dirs/tsd-teacher_resnet18-w16_1xb128_fashion-mnist/exported_model.pth
_base_ = ['./strict-teacher_resnet18-w16_1xb128_fashion-mnist.py']

model = dict(
    type='DistillImageClassifier',
    teacher=dict(
        # Any classifier config with the same classes (and the same input
        # normalisation): the same architecture here.
        config='configs/tsd/tsd-teacher_resnet18-w16_1xb128_fashion-mnist.py',
        checkpoint='work_dirs/tsd-teacher_resnet18-w16_1xb128_fashion-mnist/exported_model.pth'),
    lam=0.5,
    distill_loss=dict(type='DistillKLLoss', tau=1.0),
)

# The student is reported as accuracy/*, its teacher as teacher_accuracy/*.
val_evaluator = [
    dict(type='Accuracy', topk=(1, 5)),
    dict(type='TeacherAccuracy', topk=(1, 5)),
]
test_evaluator = val_evaluator
