"""teacher_cache under DDP: the local ranks of a node hold one copy of the
cache, in shared memory, measured in each process's memory maps."""
import json
import random
import re

import pytest

from conftest import run_tool

SHARING = r'''
import gc
import json
import re

import torch
import torch.distributed as dist
from mmengine.dist import all_gather_object

from mmtolerant.models.classifiers.teacher_cache import TeacherOutputCache
from mmtolerant.utils import node_shared_memory
from mmtolerant.utils.distributed import end_distributed

CLASSES, ENTRIES, BATCH = 1000, 16384, 512  # 62.5 MiB of float32 logits
dist.init_process_group('gloo')
rank = dist.get_rank()
torch.set_num_threads(1)
weight = torch.randn(16, CLASSES, generator=torch.Generator().manual_seed(0))
calls = []


def inputs_of(keys):
    x = torch.sin(keys[:, None].double() * torch.arange(1, 17)).float()
    return x.reshape(-1, 1, 4, 4)


def logits_of(x):
    return x.flatten(1) @ weight * 4


def teacher(x):
    calls.append(len(x))
    return logits_of(x)


def memory():
    """Private bytes of the process (smaps_rollup), and Rss / Pss /
    Private bytes of the cache's mapping with its name (smaps)."""
    with open('/proc/self/smaps_rollup') as f:
        rollup = dict(re.findall(r'^(\w+):\s+(\d+) kB', f.read(), re.M))
    with open('/proc/self/smaps') as f:
        blocks = re.split(r'\n(?=[0-9a-f]+-[0-9a-f]+ )', f.read())
    mapped = {'names': [], 'rss': 0, 'pss': 0, 'private': 0}
    for block in blocks:
        if 'mmtolerant-teacher-cache' not in block.split('\n')[0]:
            continue
        mapped['names'].append(block.split('\n')[0].split(None, 5)[-1])
        kib = dict(re.findall(r'^(\w+):\s+(\d+) kB', block, re.M))
        mapped['rss'] += int(kib['Rss']) * 1024
        mapped['pss'] += int(kib['Pss']) * 1024
        mapped['private'] += (int(kib['Private_Clean']) +
                              int(kib['Private_Dirty'])) * 1024
    private = (int(rollup['Private_Clean']) +
               int(rollup['Private_Dirty'])) * 1024
    return private, mapped


def fill_and_replay(cache, expected, entries=ENTRIES):
    """Each rank computes its half of the keys (exchanged as in training),
    then replays every key: both ranks read the whole cache. Whether every
    replay equals ``expected(teacher logits)``, and the first targets."""
    keys = torch.randperm(entries, generator=torch.Generator().manual_seed(1))
    mine = keys[rank::2]
    cache.reserve(entries)
    for start in range(0, len(mine), BATCH):
        batch = mine[start:start + BATCH]
        cache.targets(batch, inputs_of(batch), teacher)
    computed = sum(calls)
    exact, first = True, None
    for start in range(0, entries, BATCH):
        batch = torch.arange(start, min(start + BATCH, entries))
        inputs = inputs_of(batch)
        replayed = cache.targets(batch, inputs, teacher)
        exact &= torch.equal(replayed, expected(logits_of(inputs)))
        first = replayed if first is None else first
    assert sum(calls) == computed, 'a replay ran the teacher'
    return exact, first


def measured(shared):
    gc.collect()
    dist.barrier()
    before, _ = memory()
    cache = TeacherOutputCache(shared=shared)
    exact, first = fill_and_replay(cache, lambda logits: logits)
    dist.barrier()  # both ranks have read every entry
    after, mapped = memory()
    dist.barrier()  # neither unmaps it while the other measures
    return cache, first, dict(
        shared_by=cache.shared_by, nbytes=cache.nbytes, cached=len(cache),
        private_growth=after - before, mapped=mapped, exact=exact)


out = {}
cache, first, out['shared'] = measured('auto')
del cache
_, _, out['private'] = measured(False)

# Resumed: a new cache (its own new segment) starts empty and is filled
# again from the teacher, replaying the same targets.
calls.clear()
cache = TeacherOutputCache()
out['resumed_empty'] = len(cache) == 0
_, again = fill_and_replay(cache, lambda logits: logits)
out['resumed'] = dict(shared_by=cache.shared_by, teacher_batches=len(calls),
                      same=torch.equal(again, first))
del cache

# Top-k under DDP: what the ranks exchange and replay is one process's.
cache = TeacherOutputCache(dtype='float16', topk=5)
alone = TeacherOutputCache(dtype='float16', topk=5)
exact, _ = fill_and_replay(
    cache, lambda logits: alone.decode(alone.encode(logits), 'cpu'), 2048)
out['topk'] = dict(shared_by=cache.shared_by, same=exact)
del cache

# No room for the segment: 'auto' falls back to a private copy in each
# rank (logged), shared=True stops every rank with the reason.
create = node_shared_memory._create_segment
node_shared_memory._create_segment = \
    lambda owner, name, nbytes: (None, 'no room (test)')
cache = TeacherOutputCache()
fill_and_replay(cache, lambda logits: logits, 1024)
out['no_room'] = [cache.shared_by]
try:
    fill_and_replay(TeacherOutputCache(shared=True), lambda x: x, 1024)
except RuntimeError as e:
    out['no_room'].append(str(e))
node_shared_memory._create_segment = create
del cache

# Ranks on two nodes: nothing to share, each keeps a private copy, even
# with shared=True (there is no other local rank to share with).
node_shared_memory._node_key = lambda: f'node-{rank}'
out['two_nodes'] = []
for shared in ('auto', True):
    cache = TeacherOutputCache(shared=shared)
    fill_and_replay(cache, lambda logits: logits, 1024)
    out['two_nodes'].append(cache.shared_by)
    del cache

everyone = all_gather_object(out)
if rank == 0:
    print('RESULT ' + json.dumps(everyone), flush=True)
end_distributed()
'''


@pytest.mark.slow
def test_two_local_ranks_hold_one_copy_of_the_cache(tmp_path, python):
    """2 gloo processes on one node fill a 64 MiB cache, each computing half
    and both reading all of it. Default (shared='auto'): each process's
    mapping of the cache is all shared (no private page, proportional set
    half the cache), its private memory grows by far less than the cache,
    the file is already removed, and both replay the teacher's logits
    exactly. shared=False: each process's private memory grows by the
    whole cache. A cache rebuilt after a simulated resume refills from the
    teacher and replays the same targets; top-k entries exchanged between
    ranks replay as in one process; without room for the shared file each
    rank keeps its own copy ('auto') or all stop with the reason (True);
    ranks on different nodes keep their own copies."""
    script = tmp_path / 'sharing.py'
    script.write_text(SHARING)
    proc = run_tool(
        [python, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
         '--master_port', str(random.randint(20000, 40000)), str(script)],
        # Freed buffers go back to the system at once (glibc would keep
        # up to 32 MiB of them), so that private growth is the cache's.
        env={'CUDA_VISIBLE_DEVICES': '', 'MALLOC_MMAP_THRESHOLD_': '65536'},
        timeout=300)
    result = re.search(r'^RESULT (.*)$', proc.log, re.M)
    assert result, proc.log[-3000:]
    ranks = json.loads(result.group(1))
    assert len(ranks) == 2
    for out in ranks:
        shared, private = out['shared'], out['private']
        size = shared['nbytes']
        assert size == 16384 * (1000 * 4 + 8 + 1)
        assert shared['shared_by'] == 2 and shared['cached'] == 16384
        assert shared['exact'] and private['exact']
        mapped = shared['mapped']
        # One mapping, of a file already removed from /dev/shm.
        assert len(mapped['names']) == 1, mapped
        assert mapped['names'][0].endswith('(deleted)'), mapped
        assert mapped['rss'] >= size
        assert mapped['private'] == 0
        assert abs(mapped['pss'] - mapped['rss'] / 2) <= 0.02 * size
        assert shared['private_growth'] < 0.2 * size, shared
        assert private['shared_by'] == 1 and private['mapped']['rss'] == 0
        assert private['private_growth'] > 0.9 * size, private
        assert out['resumed_empty'] and out['resumed'] == dict(
            shared_by=2, teacher_batches=16, same=True)
        assert out['topk'] == dict(shared_by=2, same=True)
        assert out['two_nodes'] == [1, 1]
        assert out['no_room'][0] == 1
        assert out['no_room'][1].startswith(
            'teacher_cache.shared=True: no shared memory for the cache on '
            'every node (no room (test)')
    assert 'teacher cache: no shared memory on this node (no room (test))' \
        ': every rank holds its own copy' in proc.log
