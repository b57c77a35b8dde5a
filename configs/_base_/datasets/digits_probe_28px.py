# scikit-learn's digits, resized to 28x28 grey images: a transfer probe for
# models trained on Fashion-MNIST (tools/analysis/linear_probe.py).
probe_pipeline = [
    dict(type='Resize', scale=(28, 28)),
    dict(type='PackInputs'),
]
probe_train = dict(type='SklearnDigits', split='train', pipeline=probe_pipeline)
probe_test = dict(type='SklearnDigits', split='test', pipeline=probe_pipeline)
