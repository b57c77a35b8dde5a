"""The teacher cache at ImageNet scale: its memory, and what top-k costs.

Part ``memory``: two local ranks (gloo on the CPU, started by this script)
build :class:`TeacherOutputCache` objects only (no model, no data) for a
synthetic 1,281,167-sample index space with 1000 classes, for views 1 and
4, float16 and float32, all logits and top-k 5/10/20, and fill them as a
DDP run does (every rank writes every entry), once with ``shared=False``
and once with ``shared=True``. Each rank reads its ``/proc/self/
smaps_rollup`` before and after: Private (Private_Clean + Private_Dirty),
Pss and Rss, and the page tables (VmPTE of ``/proc/self/status``). A
cache larger than ``--budget-mib`` per copy is filled for fewer samples
(the ``measured samples`` column): its bytes per sample are measured
there, and the ImageNet figures for it are projected from them. The
projection for one node of 8 ranks: private = 8 copies; shared = 1 copy
plus each rank's page tables for the mapping (measured per rank).

Part ``loss``: the distillation loss (``DistillKLLoss``, tau 1 and 4)
with replayed top-k targets against the full cache's, on a real teacher
(the digits ResNet trained here, 10 epochs by default: 10 classes, so
k = 3 and 5) and on a synthetic 1000-class teacher (k = 5, 10, 20), for a
student early in training and a student at random initialisation. It
prints the relative difference of the mean loss and of its gradient with
respect to the student's logits,
:math:`\\|\\tilde p_\\tau - p_\\tau\\| / \\|q_\\tau - p_\\tau\\|` (the
gradient is :math:`\\tau (q_\\tau - p_\\tau)` per sample).

    python benchmarks/teacher_cache_memory.py                 # both parts
    python benchmarks/teacher_cache_memory.py --part memory --budget-mib 768
"""
import argparse
import gc
import os
import os.path as osp
import random
import re
import sys
import tempfile
import time

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)
IMAGENET = 1281167
CLASSES = 1000
RANKS = 2  # measured; the projection is for a node of 8
NODE = 8


def memory_now() -> dict:
    """This process's memory in bytes: Private (Private_Clean +
    Private_Dirty of smaps_rollup), page tables (VmPTE of status), and the
    Pss of the cache's shared mapping (smaps, by the file's name)."""
    with open('/proc/self/smaps_rollup') as f:
        kib = dict(re.findall(r'^(\w+):\s+(\d+) kB', f.read(), re.M))
    with open('/proc/self/status') as f:
        pte = int(re.search(r'VmPTE:\s+(\d+) kB', f.read()).group(1))
    with open('/proc/self/smaps') as f:
        blocks = re.split(r'\n(?=[0-9a-f]+-[0-9a-f]+ )', f.read())
    segment = sum(
        int(re.search(r'^Pss:\s+(\d+) kB', block, re.M).group(1))
        for block in blocks
        if 'mmtolerant-teacher-cache' in block.split('\n')[0])
    return {
        'private': (int(kib['Private_Clean']) +
                    int(kib['Private_Dirty'])) * 1024,
        'pte': pte * 1024,
        'segment': segment * 1024
    }


def fill(cache, samples: int, views: int) -> None:
    """Every entry of ``samples x views``, written in batches of 4096 as a
    DDP exchange writes them (the values do not matter for memory)."""
    torch.manual_seed(0)
    batch = 4096
    rows = cache.encode(torch.randn(batch, CLASSES) * 3)
    prints = torch.rand(batch, 2)
    entries = samples * views
    cache.reserve(entries)
    for start in range(0, entries, batch):
        keys = torch.arange(start, min(start + batch, entries))
        n = len(keys)
        cache._put(keys, prints[:n], {k: v[:n] for k, v in rows.items()})


def memory_configs():
    for views in (1, 4):
        for dtype in ('float16', 'float32'):
            for topk in (None, 5, 10, 20):
                yield dict(views=views, dtype=dtype, topk=topk)


def memory_worker(rank: int, port: int, budget: int, out: str) -> None:
    import torch.distributed as dist
    from mmengine.dist import all_gather_object
    from mmtolerant.models.classifiers.teacher_cache import \
        TeacherOutputCache
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=RANKS)
    rows = []
    for cfg in memory_configs():
        entry = TeacherOutputCache(**cfg).entry_bytes(CLASSES)
        per_sample = entry * cfg['views']
        samples = min(IMAGENET, budget // per_sample)
        for shared in (False, True):
            gc.collect()
            dist.barrier()
            before = memory_now()
            start = time.perf_counter()
            cache = TeacherOutputCache(shared=shared, **cfg)
            fill(cache, samples, cfg['views'])
            dist.barrier()  # both ranks wrote everything: pages shared
            seconds = time.perf_counter() - start
            after = memory_now()
            delta = {k: after[k] - before[k] for k in after}
            everyone = all_gather_object(delta)
            rows.append(dict(cfg, shared=shared, entry=entry,
                             samples=samples, nbytes=cache.nbytes,
                             shared_by=cache.shared_by, seconds=seconds,
                             ranks=everyone))
            del cache
    if rank == 0:
        torch.save(rows, out)
    dist.barrier()
    dist.destroy_process_group()


def run_memory(budget_mib: int) -> None:
    import torch.multiprocessing as mp
    out = osp.join(tempfile.mkdtemp(prefix='cache_memory_'), 'rows.pt')
    port = random.randint(20000, 40000)
    # Freed buffers go back to the system at once (glibc would keep up to
    # 32 MiB of them and reuse them for the next cache), so that a
    # process's private growth is its cache's.
    os.environ['MALLOC_MMAP_THRESHOLD_'] = '65536'
    mp.spawn(memory_worker, args=(port, budget_mib * 2**20, out),
             nprocs=RANKS)
    rows = torch.load(out)
    mib, gib = 2**20, 2**30
    print(f'\n## Memory: {RANKS} local ranks measured, 1000 classes, '
          f'ImageNet = {IMAGENET} samples, projected to a node of {NODE} '
          'ranks\n')
    print('| views | dtype | cache | bytes/sample (computed) | samples '
          'filled | private: growth per rank (MiB) | shared: segment Pss / '
          'private growth / page tables, per rank (MiB) | node measured, '
          'private / shared (MiB) | measured bytes/sample per copy, private '
          f'/ shared | ImageNet, {NODE} ranks: private (GiB) | ImageNet, '
          f'{NODE} ranks: shared (GiB) |')
    print('| ' + ' | '.join(['---'] * 11) + ' |')
    pairs = {}
    for row in rows:
        key = (row['views'], row['dtype'], row['topk'])
        pairs.setdefault(key, {})[row['shared']] = row
    for (views, dtype, topk), pair in pairs.items():
        private, shared = pair[False], pair[True]
        assert shared['shared_by'] == RANKS, shared['shared_by']
        samples = private['samples']
        scale = IMAGENET / samples
        grown = [r['private'] for r in private['ranks']]
        segment = [r['segment'] for r in shared['ranks']]
        overhead = [r['private'] + r['pte'] for r in shared['ranks']]
        node_private = sum(grown)
        node_shared = sum(segment) + sum(overhead)
        # Per rank: a whole copy (private), or its page tables and
        # private growth (shared, beside the node's one segment).
        projected_private = NODE * scale * node_private / RANKS
        projected_shared = scale * (sum(segment) +
                                    NODE * sum(overhead) / RANKS)
        cache = 'all logits' if topk is None else f'top-{topk}'
        filled = f'{samples}' if samples == IMAGENET else \
            f'{samples} (projected)'
        print(f'| {views} | {dtype} | {cache} | {private["entry"] * views} '
              f'| {filled} | {max(grown) / mib:.1f} | '
              f'{max(segment) / mib:.1f} / '
              f'{max(r["private"] for r in shared["ranks"]) / mib:.1f} / '
              f'{max(r["pte"] for r in shared["ranks"]) / mib:.2f} | '
              f'{node_private / mib:.1f} / {node_shared / mib:.1f} | '
              f'{node_private / RANKS / samples:.1f} / '
              f'{sum(segment) / samples:.1f} | '
              f'{projected_private / gib:.2f} | '
              f'{projected_shared / gib:.2f} |')
    times = [r['seconds'] for r in rows]
    print(f'\nallocation + fill per cache: {min(times):.2f}-'
          f'{max(times):.2f} s')


# --- loss ----------------------------------------------------------------


def synthetic_teacher(n: int, seed: int = 0) -> torch.Tensor:
    """1000-class logits: N(0, 1.5^2) noise, the sample's class raised by
    U(8, 16) and 5 random "similar" classes by U(2, 6) each."""
    g = torch.Generator().manual_seed(seed)
    t = 1.5 * torch.randn(n, CLASSES, generator=g)
    true = torch.randint(0, CLASSES, (n, ), generator=g)
    t[torch.arange(n), true] += 8 + 8 * torch.rand(n, generator=g)
    similar = torch.randint(0, CLASSES, (n, 5), generator=g)
    t.scatter_add_(1, similar, 2 + 4 * torch.rand(n, 5, generator=g))
    return t


def digits_logits(epochs: int):
    """(teacher, student after 2 epochs, student at initialisation) logits
    on the digits training set; the teacher trained for ``epochs``."""
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.runner import Runner
    from mmpretrain.apis import init_model
    from mmpretrain.registry import DATASETS, MODELS
    work_dir = tempfile.mkdtemp(prefix='cache_loss_teacher_')
    cfg = Config.fromfile(osp.join(
        REPO, 'configs/tsd/strict-teacher_resnet18-w8_1xb64_digits.py'))
    cfg.work_dir = work_dir
    cfg.train_cfg.max_epochs = epochs
    cfg.default_hooks.checkpoint.max_keep_ckpts = -1
    cfg.default_hooks.logger.interval = 100
    Runner.from_cfg(cfg).train()
    dataset = DATASETS.build(dict(type='SklearnDigits', split='train',
                                  pipeline=[dict(type='PackInputs')]))
    batch = pseudo_collate([dataset[i] for i in range(len(dataset))])
    config = osp.join(work_dir, 'exported_model.py')
    models = [init_model(config, osp.join(work_dir, name))
              for name in ('exported_model.pth', 'epoch_2.pth')]
    torch.manual_seed(1)
    initial = MODELS.build(Config.fromfile(config).model)
    initial.init_weights()
    out = []
    for model in models + [initial.eval()]:
        data = model.data_preprocessor(batch, False)
        with torch.no_grad():
            out.append(model(data['inputs'], mode='tensor'))
    return out


def rebuilt_targets(teacher, k, dtype, variant):
    """Teacher logits as a top-k replay gives them: ``'spread'`` is the
    cache's; the two others are the alternatives measured against it:
    ``'spread from lse'`` stores the log-sum-exp of all logits and spreads
    :math:`r = 1 - \\sum_{i \\in K} e^{t_i - lse}` (which cancels when
    the cache dtype rounds the top logits); ``'renormalise'`` gives the
    other classes probability 0 (logit: the k-th largest minus 1e4)."""
    from mmtolerant.models.classifiers.teacher_cache import \
        TeacherOutputCache
    cache = TeacherOutputCache(dtype=dtype, topk=k)
    rows = cache.encode(teacher)
    if variant == 'spread':
        return cache.decode(rows, 'cpu')
    values = rows['values'].float()
    if variant == 'renormalise':
        fill = values[:, -1:] - 1e4
    else:
        lse = teacher.float().logsumexp(1, keepdim=True)
        rest = (1 - (values - lse).exp().sum(1, keepdim=True)).clamp(
            min=torch.finfo(torch.float32).tiny)
        fill = lse + torch.log(rest / (teacher.shape[1] - k))
    out = fill.expand_as(teacher).clone()
    return out.scatter_(1, rows['indices'].long(), values)


VARIANTS = (('float32', 'spread'), ('float16', 'spread'),
            ('float16', 'spread from lse'), ('float16', 'renormalise'))


def loss_rows(name, teacher, students, ks):
    from mmtolerant.models.losses.distill_kl_loss import \
        distill_kl_divergence
    p = teacher.softmax(1)
    print(f'\n{name}: mean top-1 probability {p.max(1).values.mean():.3f}, '
          f'mass outside the top {ks[0]} '
          f'{(1 - p.topk(ks[0]).values.sum(1)).mean():.3f}, outside the '
          f'top {ks[-1]} {(1 - p.topk(ks[-1]).values.sum(1)).mean():.3f}\n')
    print('| student | tau | full loss | dtype | top-k replay | ' +
          ' | '.join(f'k={k}: loss / gradient' for k in ks) + ' |')
    print('| ' + ' | '.join(['---'] * (5 + len(ks))) + ' |')
    for student_name, student in students.items():
        for tau in (1.0, 4.0):
            full = distill_kl_divergence(student, teacher, tau).mean()
            p_tau = (teacher / tau).softmax(1)
            q_tau = (student / tau).softmax(1)
            for dtype, variant in VARIANTS:
                cells = []
                for k in ks:
                    rebuilt = rebuilt_targets(teacher, k, dtype, variant)
                    loss = distill_kl_divergence(student, rebuilt,
                                                 tau).mean()
                    grad = ((rebuilt / tau).softmax(1) - p_tau).norm() \
                        / (q_tau - p_tau).norm()
                    cells.append(f'{100 * (loss / full - 1):+.1f}% / '
                                 f'{100 * grad:.1f}%')
                print(f'| {student_name} | {tau:g} | {full:.4f} | {dtype} '
                      f'| {variant} | ' + ' | '.join(cells) + ' |')


def run_loss(teacher_epochs: int) -> None:
    print('\n## Loss: top-k replay against the full float32 cache '
          '(relative difference of the mean DistillKLLoss / of its '
          'gradient)\n')
    teacher, early, initial = digits_logits(teacher_epochs)
    loss_rows('digits (10 classes)', teacher,
              {'after 2 epochs': early, 'at initialisation': initial},
              (3, 5))
    teacher = synthetic_teacher(8192)
    g = torch.Generator().manual_seed(1)
    loss_rows('synthetic (1000 classes)', teacher, {
        'teacher + N(0, 1)': teacher + torch.randn(teacher.shape,
                                                   generator=g),
        'N(0, 1)': torch.randn(teacher.shape, generator=g)
    }, (5, 10, 20))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--part', choices=('memory', 'loss', 'both'),
                        default='both')
    parser.add_argument('--budget-mib', type=int, default=768,
                        help='fill at most this much per cache copy; '
                        'larger caches are filled for fewer samples and '
                        'projected (default 768)')
    parser.add_argument('--teacher-epochs', type=int, default=10,
                        help='epochs of the digits teacher (default 10)')
    args = parser.parse_args()
    start = time.perf_counter()
    if args.part in ('memory', 'both'):
        run_memory(args.budget_mib)
    if args.part in ('loss', 'both'):
        torch.set_num_threads(2)
        run_loss(args.teacher_epochs)
    print(f'\n{time.perf_counter() - start:.0f} s in all')


if __name__ == '__main__':
    main()
