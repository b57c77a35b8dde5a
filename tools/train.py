"""Train a classifier (or a chain of generations) from an mmpretrain config.

Same arguments as mmpretrain's ``tools/train.py``. ``import mmtolerant``
registers the plugin and its weights-only checkpoint loader (torch >= 2.6);
this tool also writes checkpoints atomically and, on machines without CUDA,
trains distributed runs on the CPU over gloo.
"""
import argparse

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner

import mmtolerant  # noqa: F401  (registers modules and the safe loader)
from mmtolerant.utils.config import (add_flags, merge_cfg_options,
                                     parse_run_args, set_work_dir)
from mmtolerant.utils.distributed import (cpu_ddp_cfg, end_distributed,
                                          init_distributed)
from mmtolerant.utils.fileio import use_atomic_checkpoints
from mmtolerant.utils.preemption import Requeue


def parse_args():
    parser = argparse.ArgumentParser(description='Train a classifier')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint, or from the latest checkpoint '
        'of the work_dir when no path is given')
    add_flags(parser, [
        ('--amp', 'enable automatic mixed precision training'),
        ('--no-validate', 'do not evaluate checkpoints during training'),
        ('--auto-scale-lr', 'scale the learning rate with the total batch '
         'size'),
        ('--no-pin-memory', 'do not pin memory in the dataloaders'),
        ('--no-persistent-workers', 'do not keep dataloader workers alive '
         'between epochs'),
    ])
    return parse_run_args(parser)


def merge_args(cfg, args):
    cfg.launcher = args.launcher
    set_work_dir(cfg, args.work_dir, args.config)

    if args.amp:
        if not torch.cuda.is_available():
            raise SystemExit('--amp needs a CUDA device; this machine has '
                             'none (drop --amp to train in float32)')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')

    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None

    if args.auto_scale_lr:
        cfg.setdefault('auto_scale_lr', {})
        cfg.auto_scale_lr.enable = True

    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(name)
        if loader is None:
            continue
        if args.no_pin_memory:
            loader.pin_memory = False
        if args.no_persistent_workers:
            loader.persistent_workers = False
        if loader.get('num_workers', 0) == 0:
            # DataLoader refuses persistent workers without workers.
            loader.persistent_workers = False

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    cfg = merge_cfg_options(cfg, args.cfg_options)
    cfg = merge_args(cfg, args)

    cpu_ddp_cfg(cfg)
    use_atomic_checkpoints(cfg)
    init_distributed(cfg.launcher, cfg.get('env_cfg', {}).get('dist_cfg'))
    if 'runner_type' in cfg:
        from mmengine.registry import RUNNERS
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    print_log(
        f'[mmtolerant] torch threads per process: {torch.get_num_threads()}',
        logger='current')
    try:
        runner.train()
    except Requeue:
        # Stopped by a signal at a safe point: exit 75 once every rank is
        # there (the job script requeues the job).
        end_distributed()
        raise
    end_distributed()


if __name__ == '__main__':
    main()
