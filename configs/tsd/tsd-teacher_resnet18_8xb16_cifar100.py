# Tolerant (TSD) teacher on CIFAR-100: eta * CE + (1 - eta) * TSD.
# K=5: CIFAR-100's 20 superclasses hold 5 classes each, the natural number
# of plausible classes per image. eta=0.5 is provisional until our
# sweeps choose it.
_base_ = ['./strict-teacher_resnet18_8xb16_cifar100.py']

model = dict(
    head=dict(loss=dict(_delete_=True, type='TSDLoss', eta=0.5, k=5,
                        num_classes=100)))
