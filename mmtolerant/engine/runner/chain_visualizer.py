"""The chain's metrics in the config's visualizer backends.

Each generation is an ordinary run with its own visualizer (its scalars in
``gen_<m>/<timestamp>/vis_data``). The chain adds one visualizer of its own,
built from the same ``visualizer`` config and saving under
``work_dir/vis_data``: after each generation, the report's numbers
(``chain/top1``, ``chain/ensemble_top1``, ``chain/mean_top1_prob``, ...) at
step m. W&B runs of one chain share a group named after it: ``gen_<m>``
for the generations, ``chain`` for these numbers. The chain's visualizer is
opened for each generation's numbers and closed again, so no run of its
stays open while the next generation's starts (its W&B run has a fixed id
of the work_dir and is resumed each time).
"""
import copy
import hashlib
import os.path as osp
import time

from mmengine.visualization import Visualizer
from mmpretrain.registry import VISUALIZERS

# The record's numbers that go to the visualizer backends, per generation.
CHAIN_SCALARS = ('top1', 'top5', 'ensemble_top1', 'mean_top1_prob',
                 'entropy', 'teacher_top1', 'train_top1',
                 'train_mean_top1_prob', 'wall_time_s')


def group_wandb_runs(vis_cfg, chain: str, name: str, **run) -> None:
    """Put the W&B backends of ``vis_cfg`` in the chain's group, as run
    ``name`` (unless the config names them), with the ``wandb.init``
    arguments ``run``."""
    for backend in (vis_cfg or {}).get('vis_backends') or []:
        if str(backend.get('type', '')).endswith('WandbVisBackend'):
            kwargs = backend.setdefault('init_kwargs', {})
            kwargs.setdefault('group', chain)
            kwargs.setdefault('name', name)
            for key, value in run.items():
                kwargs.setdefault(key, value)


def build_chain_visualizer(vis_cfg, work_dir: str) -> Visualizer:
    cfg = copy.deepcopy(vis_cfg or dict(
        type='Visualizer', vis_backends=[dict(type='LocalVisBackend')]))
    chain = osp.basename(osp.abspath(work_dir))
    # A name of its own: MMEngine keeps one visualizer per name.
    cfg.update(name=f'{chain}_chain_{time.time_ns()}', save_dir=work_dir)
    run_id = hashlib.sha1(osp.abspath(work_dir).encode()).hexdigest()[:16]
    group_wandb_runs(cfg, chain, 'chain', id=f'chain-{run_id}',
                     resume='allow')
    return VISUALIZERS.build(cfg)


def write_generation_scalars(vis_cfg, work_dir: str, record: dict) -> None:
    """Open the chain's visualizer, add generation m's numbers at step m,
    close it."""
    visualizer = build_chain_visualizer(vis_cfg, work_dir)
    try:
        visualizer.add_scalars(
            {f'chain/{key}': record[key]
             for key in CHAIN_SCALARS if record.get(key) is not None},
            step=record['generation'])
    finally:
        visualizer.close()
