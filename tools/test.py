"""Evaluate a checkpoint with a config (mmpretrain's tools/test.py arguments).

Checkpoints load with ``weights_only=True``: nothing in the file can run
code. For a ``DistillImageClassifier`` config the student is evaluated (its
checkpoint holds the student only); add ``TeacherAccuracy`` to the evaluator
to report the teacher too. For a chain config (``runner_type =
'GenerationRunner'``) the checkpoint is tested as its generation's model, and
without a checkpoint the chain's handed-on last generation is tested
(``GenerationRunner.test``, which mmpretrain's own tools/test.py calls).
"""
import argparse
import json
import os.path as osp

from mmengine.config import Config
from mmengine.runner import Runner

import mmtolerant  # noqa: F401  (registers modules and the safe loader)
from mmtolerant.engine.runner import GenerationRunner
from mmtolerant.utils.distributed import (cpu_ddp_cfg, end_distributed,
                                          init_distributed)
from mmtolerant.utils.config import (add_flags, merge_cfg_options,
                                     parse_run_args, set_work_dir)


def parse_args():
    parser = argparse.ArgumentParser(description='Test (evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument(
        'checkpoint', nargs='?',
        help='checkpoint file; for a chain config, leave it out to test the '
        "chain's handed-on last generation")
    parser.add_argument(
        '--work-dir', help='the directory to save the evaluation log')
    parser.add_argument(
        '--out',
        help='write the metrics (.json) or the predictions (.npz, with '
        '--out-item pred) to this file')
    parser.add_argument(
        '--out-item',
        choices=['metrics', 'pred'],
        default='metrics',
        help='what --out holds: the metrics, or every sample\'s scores and '
        'label (an .npz of arrays: no pickle)')
    parser.add_argument(
        '--show-dir',
        help='save images with their predictions here (visualization hook)')
    parser.add_argument(
        '--interval', type=int, default=1,
        help='visualize every this many samples')
    parser.add_argument(
        '--wait-time', type=float, default=2,
        help='seconds each shown image stays')
    add_flags(parser, [
        ('--show', 'show the predictions on screen'),
        ('--no-pin-memory', 'do not pin memory in the test dataloader'),
        ('--amp', 'test in mixed precision'),
        ('--tta', 'test-time augmentation with the config\'s tta_pipeline'),
    ])
    return parse_run_args(parser)


def is_chain(cfg) -> bool:
    return str(cfg.get('runner_type', '')).split('.')[-1] == \
        'GenerationRunner'


def main():
    args = parse_args()
    if args.checkpoint is not None and not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint {args.checkpoint!r} does not exist')
    cfg = Config.fromfile(args.config)
    cfg = merge_cfg_options(cfg, args.cfg_options)
    cfg.launcher = args.launcher
    set_work_dir(cfg, args.work_dir, args.config)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if is_chain(cfg):
        # The chain's test of the checkpoint, as stock tools/test.py runs
        # it through GenerationRunner.test.
        cfg = GenerationRunner(cfg).test_cfg()
    elif args.checkpoint is None:
        raise SystemExit(f'{args.config} is not a chain config: give the '
                         'checkpoint to test')
    # An export's test_dataloader holds the test pipeline alone.
    has_data = ((cfg.get('test_dataloader') or {}).get('dataset')
                or {}).get('type') is not None
    missing = [k for k, there in (('test_dataloader', has_data),
                                  ('test_evaluator',
                                   cfg.get('test_evaluator') is not None))
               if not there]
    if missing:
        # An exported_model.py describes the model alone.
        raise SystemExit(
            f'{args.config} has no {" and no ".join(missing)}, so there is '
            'nothing to test on. Give a config with test data, e.g. the one '
            'that trained the model: tools/test.py CHAIN_CONFIG '
            f'{args.checkpoint} (an exported_model.pth loads into the '
            "chain config's model).")
    if args.no_pin_memory:
        cfg.test_dataloader.pin_memory = False
    if args.amp:
        cfg.test_cfg = dict(cfg.get('test_cfg') or {}, fp16=True)
    if args.show or args.show_dir:
        vis = cfg.default_hooks.setdefault(
            'visualization', dict(type='VisualizationHook'))
        vis.update(enable=True, show=args.show, interval=args.interval,
                   wait_time=args.wait_time)
        if args.show_dir:
            vis.out_dir = args.show_dir
    if args.tta:
        if 'tta_pipeline' not in cfg:
            raise SystemExit('--tta needs a tta_pipeline in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.model = dict(
            type=cfg.get('tta_model', {}).get('type', 'AverageClsScoreTTA'),
            module=cfg.model)
    if args.out and args.out_item == 'pred':
        evaluators = cfg.test_evaluator
        evaluators = list(evaluators) if isinstance(evaluators,
                                                    (list, tuple)) else [
                                                        evaluators]
        cfg.test_evaluator = evaluators + [
            dict(type='DumpPredictions', out_file_path=args.out)
        ]
    # Testing needs neither the training data nor the optimiser.
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper',
                'param_scheduler', 'auto_scale_lr'):
        cfg.pop(key, None)

    cpu_ddp_cfg(cfg)
    init_distributed(cfg.launcher, cfg.get('env_cfg', {}).get('dist_cfg'))
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    if args.out and args.out_item == 'pred':
        runner.logger.info(f'predictions written to {args.out}')
    elif args.out:
        with open(args.out, 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items()}, f, indent=2)
        runner.logger.info(f'metrics written to {args.out}')
    end_distributed()


if __name__ == '__main__':
    main()
