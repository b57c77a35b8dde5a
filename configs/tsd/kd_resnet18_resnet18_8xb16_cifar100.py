# Student of a frozen teacher on CIFAR-100: lam * CE + (1 - lam) * KL.
#   tools/dist_train.sh configs/tsd/kd_resnet18_resnet18_8xb16_cifar100.py 8 \
#     --cfg-options model.teacher.checkpoint=work_dirs/tsd-teacher_resnet18_8xb16_cifar100/exported_model.pth
_base_ = ['./strict-teacher_resnet18_8xb16_cifar100.py']

model = dict(
    type='DistillImageClassifier',
    teacher=dict(
        config='configs/tsd/tsd-teacher_resnet18_8xb16_cifar100.py',
        checkpoint='work_dirs/tsd-teacher_resnet18_8xb16_cifar100/exported_model.pth'),
    lam=0.5,
    distill_loss=dict(type='DistillKLLoss', tau=1.0),
)
val_evaluator = [
    dict(type='Accuracy', topk=(1, 5)),
    dict(type='TeacherAccuracy', topk=(1, 5)),
]
test_evaluator = val_evaluator
