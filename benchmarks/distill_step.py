"""Cost of a distillation step against a plain mmpretrain training step.

Measured side by side in one run, on the same model, batch and machine:

- ``plain``:   mmpretrain ``ImageClassifier.train_step`` of the student alone
               (the floor: what training without a teacher costs);
- ``distill``: mmtolerant's ``DistillImageClassifier.train_step`` with a live,
               frozen teacher of the same architecture;
- ``cached``:  the same step with ``teacher_cache=dict()``, the teacher's
               outputs replayed (every timed step is a cache hit: the
               warm-up filled the cache, as the first epoch does);
- ``distill_bf16``: ``distill`` with ``teacher_autocast='bfloat16'`` (the
               teacher alone in bfloat16, the student in the run's precision);
- ``distill_compiled``: ``distill`` with ``teacher_compile=True`` (the
               teacher's forward under ``torch.compile`` with inductor
               freezing, float32; the warm-up steps include the compilation);
- ``teacher``: the teacher's forward pass alone on the preprocessed batch
               (the profile: what ``distill`` adds to ``plain``);
- ``teacher_compiled``: the same, compiled as in ``distill_compiled``;
- ``distill_nchw`` / ``teacher_nchw``: ``distill`` / ``teacher`` with
               ``teacher_channels_last=False`` (the teacher in PyTorch's
               default NCHW layout instead of channels-last, the default);
- ``handkd``:  a minimal hand-written KD step (student + ``no_grad`` teacher,
               CE + KL, backward, SGD step): what any KD implementation costs
               at least;
- ``torchdistill``: torchdistill's KD step, when torchdistill is installed.

Every variant runs in its own process (a clean peak-memory reading); the
variants take turns, round after round, so that drifts of a noisy machine hit
them alike. Reported: median seconds per step after warm-up, images/s, peak
memory during the timed steps (CPU: peak RSS of the process, its high-water
mark reset after the warm-up; GPU: peak allocated), each as a ratio to
``plain``, and the time ratio of each round (against that round's ``plain``)
to show the machine's noise.

    python benchmarks/distill_step.py                         # CPU, CIFAR ResNet-18, batch 64
    python benchmarks/distill_step.py --device cuda --amp --model resnet50_in1k --batch 128

``--amp`` (GPU only: mmengine's ``AmpOptimWrapper`` needs one) trains every
variant in float16 autocast with a gradient scaler, the hand-written and
torchdistill steps included.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

MODELS = {
    # name: (backbone, neck, head, input size)
    'resnet18_cifar': (dict(type='ResNet_CIFAR', depth=18),
                       dict(type='GlobalAveragePooling'),
                       dict(type='LinearClsHead', num_classes=100,
                            in_channels=512), 32),
    'resnet50_in1k': (dict(type='ResNet', depth=50),
                      dict(type='GlobalAveragePooling'),
                      dict(type='LinearClsHead', num_classes=1000,
                           in_channels=2048), 224),
}
PREPROCESSOR = dict(
    type='ClsDataPreprocessor',
    mean=[125.3, 123.0, 113.9],
    std=[63.0, 62.1, 66.7],
    to_rgb=False)


# Variants built on DistillImageClassifier (the others: plain, handkd,
# torchdistill).
OURS = ('distill', 'cached', 'distill_bf16', 'distill_compiled',
        'distill_nchw', 'teacher', 'teacher_compiled', 'teacher_nchw')
VARIANTS = ['plain', 'distill', 'distill_nchw', 'distill_bf16',
            'distill_compiled', 'cached', 'teacher', 'teacher_nchw',
            'teacher_compiled', 'handkd', 'torchdistill']


def cpu_has_bf16():
    """Whether this CPU computes bfloat16 in hardware (x86 AVX-512 BF16 or
    AMX) rather than emulating it."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = f.read()
    except OSError:
        return False
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def classifier_cfg(name):
    backbone, neck, head, _ = MODELS[name]
    return dict(type='ImageClassifier', backbone=backbone, neck=neck,
                head=head, data_preprocessor=dict(PREPROCESSOR))


def make_batch(name, batch, seed=0):
    import torch
    from mmpretrain.structures import DataSample
    size = MODELS[name][3]
    num_classes = MODELS[name][2]['num_classes']
    g = torch.Generator().manual_seed(seed)
    inputs = [
        torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
        for _ in range(batch)
    ]
    labels = torch.randint(0, num_classes, (batch, ), generator=g)
    samples = [
        DataSample(metainfo=dict(sample_idx=i)).set_gt_label(int(y))
        for i, y in enumerate(labels)
    ]
    return dict(inputs=inputs, data_samples=samples)


def build_variant(args, workdir):
    """Returns (step function, the module(s) that train)."""
    import torch
    from mmengine.optim import build_optim_wrapper
    from mmpretrain.registry import MODELS as REG

    import mmtolerant  # noqa: F401
    device = torch.device(args.device)
    optim_cfg = dict(
        type='AmpOptimWrapper' if args.amp else 'OptimWrapper',
        optimizer=dict(type='SGD', lr=0.01, momentum=0.9,
                       weight_decay=1e-4))
    teacher_ckpt = os.path.join(workdir, 'teacher.pth')
    if args.variant != 'plain' and not os.path.exists(teacher_ckpt):
        torch.manual_seed(1)
        teacher = REG.build(classifier_cfg(args.model))
        torch.save({'state_dict': teacher.state_dict()}, teacher_ckpt)
    torch.manual_seed(0)

    if args.variant == 'plain':
        model = REG.build(classifier_cfg(args.model)).to(device)
    elif args.variant in OURS:
        cfg = classifier_cfg(args.model)
        cfg.update(type='DistillImageClassifier', lam=0.5,
                   teacher=dict(config=classifier_cfg(args.model),
                                checkpoint=teacher_ckpt))
        if args.variant == 'cached':
            cfg['teacher_cache'] = dict()
        if args.variant == 'distill_bf16':
            cfg['teacher_autocast'] = 'bfloat16'
        if args.variant in ('distill_compiled', 'teacher_compiled'):
            cfg['teacher_compile'] = True
        if args.variant in ('distill_nchw', 'teacher_nchw'):
            cfg['teacher_channels_last'] = False
        model = REG.build(cfg).to(device)
    if args.variant.startswith('teacher'):
        model.train()
        compiled = args.variant == 'teacher_compiled'

        def teacher_step(batch):
            data = model.data_preprocessor(batch, True)
            with torch.autocast(device.type, enabled=args.amp,
                                dtype=torch.float16):
                return model.teacher_logits(data['inputs'], compiled)

        return teacher_step, model
    if args.variant == 'plain' or args.variant in OURS:
        model.train()
        optim = build_optim_wrapper(model, optim_cfg)
        return (lambda batch: model.train_step(batch, optim)), model

    # Hand-written KD and torchdistill: the same student and teacher, the
    # preprocessing done by the student's preprocessor.
    import torch.nn.functional as F
    student = REG.build(classifier_cfg(args.model)).to(device).train()
    teacher = REG.build(classifier_cfg(args.model))
    teacher.load_state_dict(torch.load(teacher_ckpt)['state_dict'])
    teacher = teacher.to(device).eval().requires_grad_(False)
    sgd = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9,
                          weight_decay=1e-4)
    # With --amp as mmengine's AmpOptimWrapper does it: float16 autocast
    # around the forward passes and the loss, a dynamic gradient scaler.
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp)

    def autocast():
        return torch.autocast(device.type, dtype=torch.float16,
                              enabled=args.amp)

    def update(loss):
        sgd.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(sgd)
        scaler.update()
        return loss

    def kd_step(kd_loss):
        """A KD training step whose loss is ``kd_loss(student logits,
        teacher logits, labels)``."""

        def step(batch):
            data = student.data_preprocessor(batch, True)
            x = data['inputs']
            y = torch.cat([s.gt_label for s in data['data_samples']])
            with autocast():
                s_logits = student(x, mode='tensor')
                with torch.no_grad():
                    t_logits = teacher(x, mode='tensor')
                loss = kd_loss(s_logits, t_logits, y)
            return update(loss)

        return step

    if args.variant == 'handkd':

        def hand_loss(s_logits, t_logits, y):
            return 0.5 * F.cross_entropy(s_logits, y) + 0.5 * F.kl_div(
                F.log_softmax(s_logits.float(), 1),
                F.log_softmax(t_logits.float(), 1),
                reduction='batchmean', log_target=True)

        return kd_step(hand_loss), student

    if args.variant == 'torchdistill':
        from torchdistill.losses.mid_level import KDLoss
        criterion = KDLoss(student_module_path='.', student_module_io='output',
                           teacher_module_path='.', teacher_module_io='output',
                           temperature=1.0, alpha=0.5)

        def torchdistill_loss(s_logits, t_logits, y):
            return criterion({'.': {'output': s_logits}},
                             {'.': {'output': t_logits}}, y)

        return kd_step(torchdistill_loss), student
    raise ValueError(f'unknown variant {args.variant!r}')


def on_device(batch, device):
    """The batch's images on ``device`` (as a dataloader with pinned
    memory would hand them over before the step)."""
    if device == 'cpu':
        return batch
    return dict(inputs=[t.to(device) for t in batch['inputs']],
                data_samples=batch['data_samples'])


def reset_peak_rss():
    """Start the CPU peak-memory reading after the warm-up (as
    ``reset_peak_memory_stats`` on the GPU), so that one-time costs such as
    a compilation are not counted: Linux resets VmHWM on '5'."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass  # elsewhere: the whole process's peak


def peak_rss():
    """Peak resident memory (bytes) since ``reset_peak_rss``."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(args):
    """Child process: time ``steps`` steps after ``warmup``; print JSON."""
    import torch
    torch.set_num_threads(args.threads)
    step, _ = build_variant(args, args.workdir)
    batch = make_batch(args.model, args.batch)
    cuda = args.device == 'cuda'

    def sync():
        if cuda:
            torch.cuda.synchronize()

    batch = on_device(batch, args.device)
    for _ in range(args.warmup):
        step(batch)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step(batch)
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss()
    print('RESULT ' + json.dumps(dict(times=times, peak_bytes=peak)))


def measure_interleaved(args, variants):
    """All variants in this one process, taking turns step by step: drifts
    of a noisy machine (seconds to minutes) hit them alike. Time only (the
    memory of one process holding every variant says nothing per variant).
    """
    import torch
    torch.set_num_threads(args.threads)
    batch = on_device(make_batch(args.model, args.batch), args.device)
    sync = torch.cuda.synchronize if args.device == 'cuda' else (lambda: 0)
    steps = {}
    with tempfile.TemporaryDirectory() as workdir:
        for v in variants:
            args.variant = v
            steps[v], _ = build_variant(args, workdir)
    args.variant = None
    times = {v: [] for v in variants}
    for _ in range(args.warmup):
        for v in variants:
            steps[v](batch)
    sync()
    for _ in range(args.steps * args.rounds):
        for v in variants:
            start = time.perf_counter()
            steps[v](batch)
            sync()
            times[v].append(time.perf_counter() - start)
    base = statistics.median(times['plain'])
    print('\n| variant | ms/step (median) | time vs plain | paired ratio '
          '(median of step / the plain step before it) |')
    print('| --- | --- | --- | --- |')
    rows = []
    for v in variants:
        med = statistics.median(times[v])
        paired = statistics.median(
            t / p for t, p in zip(times[v], times['plain']))
        rows.append(dict(variant=v, ms_per_step=med * 1000,
                         time_ratio=med / base, paired_ratio=paired))
        print(f'| {v} | {med * 1000:.1f} | {med / base:.3f} | '
              f'{paired:.3f} |')
    return rows


def timed_parts(model, optim):
    """Wrap the parts of a ``train_step`` (bound methods, instance-level) so
    that each call adds its seconds to the returned dict."""
    parts = {}

    def wrap(owner, attr, name):
        inner = getattr(owner, attr)

        def timed(*a, **k):
            start = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                parts[name] = parts.get(name, 0.0) + time.perf_counter() - \
                    start

        setattr(owner, attr, timed)

    wrap(model.data_preprocessor, 'forward', 'preprocess')
    wrap(model, 'extract_feat', 'student forward (features)')
    wrap(model.head, 'forward', 'student forward (head)')
    wrap(model.head, '_get_loss', 'head loss')
    if hasattr(model, 'teacher_logits'):
        wrap(model, 'teacher_logits', 'teacher forward')
        wrap(model.distill_loss, 'forward', 'distillation loss')
    wrap(model, 'parse_losses', 'parse losses (logging)')
    wrap(optim, 'backward', 'backward')
    wrap(optim, 'step', 'optimizer step')
    wrap(optim, 'zero_grad', 'zero grad')
    return parts


def profile(args):
    """Where a step's time goes: ``plain`` and ``distill`` in one process,
    in turn step by step, each part of ``train_step`` timed (CPU: the
    parts run synchronously, so their wall times add up)."""
    import torch
    from mmengine.optim import build_optim_wrapper
    torch.set_num_threads(args.threads)
    batch = make_batch(args.model, args.batch)
    runs = {}
    with tempfile.TemporaryDirectory() as workdir:
        for v in ('plain', 'distill'):
            args.variant = v
            _, model = build_variant(args, workdir)
            optim = build_optim_wrapper(model, dict(
                type='OptimWrapper', optimizer=dict(
                    type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4)))
            parts = timed_parts(model, optim)
            runs[v] = (model, optim, parts, [])
    args.variant = None
    for i in range(args.warmup + args.steps * args.rounds):
        for v, (model, optim, parts, totals) in runs.items():
            if i == args.warmup:
                parts.clear()
            start = time.perf_counter()
            model.train_step(batch, optim)
            if i >= args.warmup:
                totals.append(time.perf_counter() - start)
    n = args.steps * args.rounds
    names = list(dict.fromkeys(
        list(runs['distill'][2]) + list(runs['plain'][2])))
    print(f'\nms per step, mean of {n} steps each, plain and distill in '
          'turn step by step')
    print('| part | plain | distill | distill - plain |')
    print('| --- | --- | --- | --- |')
    rows = []
    for name in names + ['rest (mmengine train_step, autograd glue)',
                         'whole step']:
        vals = []
        for v in ('plain', 'distill'):
            parts, totals = runs[v][2], runs[v][3]
            if name == 'whole step':
                vals.append(1000 * sum(totals) / n)
            elif name.startswith('rest'):
                vals.append(1000 * (sum(totals) - sum(parts.values())) / n)
            else:
                vals.append(1000 * parts.get(name, 0.0) / n)
        rows.append(dict(part=name, plain_ms=vals[0], distill_ms=vals[1]))
        print(f'| {name} | {vals[0]:.1f} | {vals[1]:.1f} | '
              f'{vals[1] - vals[0]:+.1f} |')
    return rows


def available_variants(requested):
    out = []
    for v in requested:
        if v == 'torchdistill':
            try:
                import torchdistill  # noqa: F401
            except ImportError:
                print('torchdistill is not installed: skipped')
                continue
        out.append(v)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', choices=sorted(MODELS),
                        default='resnet18_cifar')
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--amp', action='store_true',
                        help='float16 mixed precision (GPU only)')
    parser.add_argument('--threads', type=int, default=os.cpu_count(),
                        help='torch threads per process (logged)')
    parser.add_argument('--steps', type=int, default=10,
                        help='timed steps per round and variant')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument(
        '--variants', nargs='+', choices=VARIANTS,
        help='default: all (distill_bf16 only on a GPU or a CPU with '
        'bfloat16 units, elsewhere it is emulated and takes minutes a step)')
    parser.add_argument('--out', help='write the results as JSON here')
    parser.add_argument(
        '--interleave', action='store_true',
        help='time every variant in one process, step by step in turn '
        '(robust to a noisy machine; no memory figures)')
    parser.add_argument(
        '--profile', action='store_true',
        help='CPU: time each part of the plain and distill steps (one '
        'process, in turn), to show where distill\'s extra time goes')
    parser.add_argument('--variant', help=argparse.SUPPRESS)
    parser.add_argument('--workdir', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return measure(args)
    if args.amp and args.device != 'cuda':
        raise SystemExit(
            '--amp needs --device cuda (mmengine\'s AmpOptimWrapper runs on '
            'a GPU only); on a CPU, the distill_bf16 variant times a '
            'bfloat16 teacher')
    if args.variants is None:
        args.variants = [v for v in VARIANTS if v != 'distill_bf16'
                         or args.device == 'cuda' or cpu_has_bf16()]

    if args.profile:
        if args.device != 'cpu':
            raise SystemExit('--profile times CPU steps only (GPU kernels '
                             'run asynchronously; use torch.profiler)')
        rows = profile(args)
        if args.out:
            with open(args.out, 'w') as f:
                json.dump(dict(settings=vars(args), rows=rows), f, indent=2)
        return
    variants = available_variants(args.variants)
    if args.interleave:
        if variants[0] != 'plain':
            raise SystemExit('--interleave needs plain as the first variant')
        print(f'model {args.model}, batch {args.batch}, device '
              f'{args.device}, amp {args.amp}, {args.threads} threads, '
              f'{args.rounds * args.steps} timed steps per variant after '
              f'{args.warmup} warm-up steps, variants in turn step by step')
        rows = measure_interleaved(args, variants)
        if args.out:
            with open(args.out, 'w') as f:
                json.dump(dict(settings=vars(args), rows=rows), f, indent=2)
        return
    print(f'model {args.model}, batch {args.batch}, device {args.device}, '
          f'amp {args.amp}, {args.threads} threads per process, '
          f'{args.rounds} rounds x {args.steps} steps after {args.warmup} '
          'warm-up steps, variants in turn')
    results = {v: dict(times=[], peaks=[], rounds=[]) for v in variants}
    with tempfile.TemporaryDirectory() as workdir:
        for r in range(args.rounds):
            for v in variants:
                cmd = [
                    sys.executable, __file__, '--variant', v, '--workdir',
                    workdir, '--model', args.model, '--batch',
                    str(args.batch), '--device', args.device, '--threads',
                    str(args.threads), '--steps',
                    str(args.steps), '--warmup',
                    str(args.warmup)
                ] + (['--amp'] if args.amp else [])
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = [
                    x for x in proc.stdout.splitlines()
                    if x.startswith('RESULT ')
                ]
                if proc.returncode or not line:
                    raise SystemExit(f'{v} failed:\n{proc.stderr[-3000:]}')
                out = json.loads(line[0][len('RESULT '):])
                results[v]['times'] += out['times']
                results[v]['peaks'].append(out['peak_bytes'])
                results[v]['rounds'].append(statistics.median(out['times']))
                print(f'  round {r + 1} {v:>12}: median '
                      f'{statistics.median(out["times"]) * 1000:.1f} ms/step')
    base = statistics.median(results['plain']['times'])
    base_peak = max(results['plain']['peaks'])
    rows = []
    print('\n| variant | ms/step (median) | images/s | time vs plain | '
          'per round | peak memory (MiB) | memory vs plain |')
    print('| --- | --- | --- | --- | --- | --- | --- |')
    for v in variants:
        med = statistics.median(results[v]['times'])
        peak = max(results[v]['peaks'])
        row = dict(variant=v, ms_per_step=med * 1000,
                   images_per_s=args.batch / med, time_ratio=med / base,
                   peak_mib=peak / 2**20, memory_ratio=peak / base_peak,
                   steps=len(results[v]['times']),
                   round_ratios=[
                       t / p for t, p in zip(results[v]['rounds'],
                                             results['plain']['rounds'])
                   ])
        rows.append(row)
        per_round = ' / '.join(f'{r:.2f}' for r in row['round_ratios'])
        print(f"| {v} | {row['ms_per_step']:.1f} | {row['images_per_s']:.1f} "
              f"| {row['time_ratio']:.3f} | {per_round} | "
              f"{row['peak_mib']:.0f} | {row['memory_ratio']:.3f} |")
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(settings=vars(args), rows=rows), f, indent=2)


if __name__ == '__main__':
    main()
