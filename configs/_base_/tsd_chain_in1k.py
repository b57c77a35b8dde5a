# The generation chain shared by the ImageNet-1k configs: TSD on the
# patriarch, 3 students.
custom_imports = dict(imports=['mmtolerant'], allow_failed_imports=False)

runner_type = 'GenerationRunner'
generations = dict(
    num_generations=3,
    tolerant='patriarch',
    # K=5 plausible classes per image among 1000; eta as on CIFAR-100.
    teacher_loss=dict(type='TSDLoss', eta=0.5, k=5),
    lam=0.5,
    distill_loss=dict(type='DistillKLLoss', tau=1.0),
    hand_on='last',
    report_k=5,
)
