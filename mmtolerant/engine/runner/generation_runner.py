import copy
import glob
import hashlib
import json
import os
import os.path as osp
import re
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from mmengine.config import Config, ConfigDict
from mmengine.dist import (barrier, broadcast_object_list, init_dist,
                           is_distributed, is_main_process)
from mmengine.logging import print_log
from mmengine.runner import Runner
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmpretrain.registry import RUNNERS

from mmtolerant.evaluation.generation_report import (PREDICTIONS,
                                                     ensemble_scores,
                                                     generation_paths,
                                                     load_predictions,
                                                     plot_report,
                                                     predict_scores,
                                                     prediction_stats,
                                                     render_markdown,
                                                     save_predictions,
                                                     topk_accuracy,
                                                     write_report)
from mmtolerant.models.classifiers import plain_classifier_cfg
from mmtolerant.datasets import check_replayable_dataset
from mmtolerant.utils.checkpoint import (CheckpointLoadError,
                                         extract_state_dict, safe_torch_load)
from mmtolerant.utils.config import merge_cfg_options
from mmtolerant.utils.model import bare_model
from mmtolerant.utils.export import (EXPORT_CFG, EXPORT_CKPT,
                                     atomic_write_text, export_plain_model)
from ..hooks.final_val_predictions_hook import (FinalValPredictionsHook,
                                                use_rank0_buffers,
                                                weights_checksum)
from .generation_settings import GenerationSettings

CHAIN_FILE = 'chain.json'
GENERATION_FILE = 'generation.json'
# Hooks the runner adds to every generation itself.
_CHAIN_HOOKS = ('ExportModelHook', 'ChainProgressHook', 'EpochSeedHook',
                'FinalValPredictionsHook', 'TeacherCacheLoggerHook')
# Config sections that decide what a chain computes: a resume must not mix
# generations trained under different ones.
_FINGERPRINT_KEYS = ('model', 'generations', 'train_cfg', 'optim_wrapper',
                     'param_scheduler', 'randomness', 'data_preprocessor')
# Settings that change how fast the teachers run, not what they compute (to
# float rounding): a chain may be resumed with them changed.
_SPEED_ONLY_SETTINGS = ('teacher_compile', 'teacher_channels_last')
# Dataloader settings that change how fast batches come, not which.
_LOADER_SPEED_SETTINGS = ('num_workers', 'pin_memory', 'persistent_workers',
                          'prefetch_factor')


def _log(msg: str, level: str = 'INFO') -> None:
    import logging
    print_log(f'[chain] {msg}', logger='current',
              level=getattr(logging, level))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj if isinstance(obj, (int, float, str, bool, type(None))) \
        else str(obj)


def _without_data_location(dataset: Any) -> Any:
    """A dataset config without ``data_root``/``data_prefix``, also in the
    datasets it wraps: data that moved is the same data."""
    if isinstance(dataset, list):
        return [_without_data_location(d) for d in dataset]
    if not isinstance(dataset, dict):
        return dataset
    return {
        k: _without_data_location(v) if k in ('dataset', 'datasets') else v
        for k, v in dataset.items() if k not in ('data_root', 'data_prefix')
    }


def _differences(theirs: Any, ours: Any, path: str = '') -> List[str]:
    """``'key.path: A recorded, B now'`` for each value that differs (a
    component of another ``type`` as one value)."""
    if isinstance(theirs, dict) and isinstance(ours, dict) and \
            theirs.get('type') == ours.get('type'):
        found = []
        for key in sorted(set(theirs) | set(ours)):
            found += _differences(theirs.get(key), ours.get(key),
                                  f'{path}.{key}' if path else key)
        return found
    if theirs == ours:
        return []

    def short(value):
        if isinstance(value, dict) and 'type' in value:
            args = ', '.join(f'{k}={v!r}' for k, v in sorted(value.items())
                             if k != 'type')
            text = f'{value["type"]}({args})'
        else:
            text = repr(value)
        return text if len(text) <= 100 else text[:97] + '...'

    return [f'{path or "the record"}: {short(theirs)} recorded, '
            f'{short(ours)} now']


def _digest(obj: Any) -> str:
    text = json.dumps(_plain(obj), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _loss_name(loss_cfg: dict) -> str:
    args = ', '.join(f'{k}={v}' for k, v in loss_cfg.items()
                     if k not in ('type', 'loss_weight', 'num_classes'))
    return f"{loss_cfg['type']}({args})" if args else loss_cfg['type']


def _num_classes(model_cfg: dict) -> Optional[int]:
    for part in ('head', 'backbone', 'data_preprocessor'):
        value = (model_cfg.get(part) or {}).get('num_classes')
        if isinstance(value, int):
            return value
    return None


class _GenerationConfig(Config):
    """A generation's config. MMEngine's Runner formats its config with yapf
    three times while it builds (log, dump, visualizer): here the text is
    formatted once per content."""

    @property
    def pretty_text(self) -> str:
        key = repr(self._cfg_dict)
        cached = self.__dict__.get('_pretty_text_cache')
        if cached is None or cached[0] != key:
            cached = (key, super().pretty_text)
            super(Config, self).__setattr__('_pretty_text_cache', cached)
        return cached[1]


@MMENGINE_RUNNERS.register_module()
class GenerationRunner:
    """Trains a chain of generations M^0 -> M^1 -> ... -> M^N from one config.

    Select it with ``runner_type = 'GenerationRunner'`` in any mmpretrain
    classifier config and add a ``generations`` section (see
    :class:`GenerationSettings`). Stock ``tools/train.py`` and
    ``tools/dist_train.sh`` build it through MMEngine's ``RUNNERS`` and call
    :meth:`train`.

    Each generation is an ordinary MMEngine ``Runner`` run in
    ``work_dir/gen_<m>/`` (its own logs, checkpoints and config). The
    patriarch trains the config's model on data (with ``teacher_loss`` when
    it is tolerant); generation m >= 1 is a ``DistillImageClassifier`` whose
    frozen teacher is generation m-1's export (``exported_model.pth/.py``).
    A generation is finished once ``gen_<m>/generation.json`` exists; it is
    written last, after the export and the test predictions.

    ``resume=True`` (``tools/train.py CONFIG --resume``) skips finished
    generations and resumes the running one from its newest readable
    checkpoint. Without it, a work_dir that already holds generations is
    refused rather than overwritten.

    After each generation, ``generations.json``, ``generations.md`` and
    ``generations.png`` in the work_dir report every generation so far.
    """

    def __init__(self, cfg: Config):
        if not isinstance(cfg, Config):
            cfg = Config(copy.deepcopy(dict(cfg)))
        self.cfg = copy.deepcopy(cfg)
        self.settings = GenerationSettings.from_cfg(cfg.get('generations'))
        if cfg.get('work_dir') is None:
            raise ValueError('GenerationRunner needs a work_dir')
        self.work_dir = osp.abspath(cfg.work_dir)
        self.launcher = cfg.get('launcher', 'none')
        self.resume = bool(cfg.get('resume', False))
        if cfg.get('load_from'):
            raise ValueError(
                'a chain resumes from its own work_dir: use --resume without '
                f'a path (got load_from={cfg.load_from!r}); to start a '
                "generation from weights, use generations.overrides, e.g. "
                "{0: {'model.init_cfg': dict(type='Pretrained', "
                "checkpoint=...)}}")
        self.num_generations = self.settings.num_generations
        self.generation_cfgs = [
            self._generation_cfg(m) for m in range(self.num_generations + 1)
        ]
        self._add_chain_hooks()
        self._check_classes()
        self._check_settings_build()
        self.records: List[dict] = []

    @classmethod
    def from_cfg(cls, cfg: Config) -> 'GenerationRunner':
        return cls(cfg)

    @property
    def logger(self):
        """The logger of the generation running now (MMEngine's current)."""
        from mmengine.logging import MMLogger
        return MMLogger.get_current_instance()

    # ------------------------------------------------------------ configs --
    def gen_dir(self, m: int) -> str:
        return osp.join(self.work_dir, f'gen_{m}')

    def role(self, m: int) -> str:
        cfg = self.generation_cfgs[m]
        loss = _loss_name(cfg.model.head.loss)
        if m == 0:
            return f'patriarch, trained on data with {loss}'
        return (f'student of M{m - 1} (lam={self.settings.lam:g}, '
                f'{_loss_name(self.settings.distill_loss)}), head loss {loss}')

    def _generation_cfg(self, m: int) -> Config:
        cfg = copy.deepcopy(self.cfg)
        for key in ('runner_type', 'generations'):
            cfg.pop(key, None)
        cfg.work_dir = self.gen_dir(m)
        base_name = osp.basename(self.work_dir.rstrip('/'))
        # MMEngine's Runner appends its own timestamp.
        cfg.experiment_name = f'{base_name}_gen{m}'
        cfg.resume = False
        cfg.load_from = None

        model = plain_classifier_cfg(cfg.model)
        if model.get('head') is None:
            raise ValueError('a generation chain needs a classifier with a '
                             'head (model.head)')
        if self.settings.is_tolerant(m):
            loss = ConfigDict(copy.deepcopy(self.settings.teacher_loss))
            num_classes = _num_classes(model)
            if loss.get('type') == 'TSDLoss' and num_classes is not None:
                # K is then checked against the classes when built, not at
                # the first training step.
                loss.setdefault('num_classes', num_classes)
            model.head.loss = loss
        if m >= 1:
            previous = self.gen_dir(m - 1)
            model.type = 'DistillImageClassifier'
            model.teacher = dict(
                config=osp.join(previous, EXPORT_CFG),
                checkpoint=osp.join(previous, EXPORT_CKPT))
            model.lam = self.settings.lam
            model.distill_loss = copy.deepcopy(self.settings.distill_loss)
            if self.settings.teacher_cache is not None:
                model.teacher_cache = copy.deepcopy(
                    self.settings.teacher_cache)
            if self.settings.teacher_autocast is not None:
                model.teacher_autocast = self.settings.teacher_autocast
            if self.settings.teacher_compile is not False:
                model.teacher_compile = copy.deepcopy(
                    self.settings.teacher_compile)
            if self.settings.teacher_channels_last is not None:
                model.teacher_channels_last = \
                    self.settings.teacher_channels_last
            for key in ('val_evaluator', 'test_evaluator'):
                evaluators = cfg.get(key)
                if evaluators is None:
                    continue
                if isinstance(evaluators, dict):
                    evaluators = [evaluators]
                if not any(e.get('type') == 'TeacherAccuracy'
                           for e in evaluators):
                    topk = evaluators[0].get('topk', (1, ))
                    evaluators = list(evaluators) + [
                        dict(type='TeacherAccuracy', topk=topk)
                    ]
                cfg[key] = evaluators
        cfg.model = model
        merge_cfg_options(cfg, self.settings.overrides.get(m))
        views = (self.settings.teacher_cache or {}).get('views')
        if m >= 1 and views is not None:
            # After the overrides, so that they edit the dataset itself.
            self._use_augmentation_views(cfg, views)
        return cfg

    @staticmethod
    def _use_augmentation_views(cfg: Config, views: int) -> None:
        """Train on ``views`` fixed augmentations per sample (see
        :class:`~mmtolerant.datasets.AugmentationViews`)."""
        loader = cfg.train_dataloader
        sampler = dict(loader.get('sampler') or {})
        if sampler.get('type', 'DefaultSampler') not in (
                'DefaultSampler', 'mmengine.DefaultSampler'):
            raise ValueError(
                'generations.teacher_cache.views needs the training '
                f'sampler to be a DefaultSampler, got {sampler.get("type")!r}')
        if loader.get('batch_sampler') is not None:
            raise ValueError('generations.teacher_cache.views cannot be used '
                             'with a train_dataloader.batch_sampler')
        sampler.update(type='AugmentationViewSampler', views=views)
        loader.sampler = sampler
        # The run's seed: runs of several seeds get different views. Without
        # one, 0 (not mmengine's random seed of the day, which a resumed run
        # would not see again).
        seed = (cfg.get('randomness') or {}).get('seed')
        loader.dataset = dict(type='AugmentationViews',
                              dataset=loader.dataset,
                              seed=0 if seed is None else int(seed))

    def _add_chain_hooks(self) -> None:
        epochs = [
            int(c.train_cfg.get('max_epochs', 0) or 0)
            for c in self.generation_cfgs
        ]
        for m, cfg in enumerate(self.generation_cfgs):
            hooks = [
                h for h in (cfg.get('custom_hooks') or [])
                if h.get('type') not in _CHAIN_HOOKS
            ]
            hooks.append(
                dict(
                    type='ChainProgressHook',
                    generation=m,
                    num_generations=self.num_generations,
                    role=self.role(m),
                    later_epochs=epochs[m + 1:]))
            hooks.append(dict(type='EpochSeedHook'))
            hooks.append(dict(type='FinalValPredictionsHook'))
            if m >= 1 and self.settings.teacher_cache is not None:
                hooks.append(dict(type='TeacherCacheLoggerHook'))
            cfg.custom_hooks = hooks

    def _check_classes(self) -> None:
        counts = {
            m: _num_classes(cfg.model)
            for m, cfg in enumerate(self.generation_cfgs)
        }
        known = {m: n for m, n in counts.items() if n is not None}
        if len(set(known.values())) > 1:
            raise ValueError(
                'the number of classes changes between generations '
                f'({", ".join(f"M{m}: {n}" for m, n in known.items())}); a '
                'student must predict its teacher\'s classes')

    def _check_settings_build(self) -> None:
        """Build every generation's losses now, so that a bad setting of a
        later generation stops the chain before the patriarch trains."""
        from mmpretrain.registry import MODELS
        for m, cfg in enumerate(self.generation_cfgs):
            if self.settings.report_train:
                self._train_eval_loader_cfg(cfg)
            try:
                MODELS.build(copy.deepcopy(cfg.model.head.loss))
                if m >= 1:
                    MODELS.build(
                        dict(
                            copy.deepcopy(cfg.model.distill_loss),
                            loss_weight=1.0 - cfg.model.lam))
            except Exception as e:
                raise ValueError(
                    f'generations: generation {m} cannot build its losses: '
                    f'{type(e).__name__}: {e}') from None
        num_classes = _num_classes(self.generation_cfgs[0].model)
        if num_classes is not None and self.settings.report_k > num_classes:
            raise ValueError(f'generations: report_k={self.settings.report_k}'
                             f' is larger than the {num_classes} classes')
        if self.settings.hand_on == 'best':
            for m, cfg in enumerate(self.generation_cfgs[:-1]):
                checkpoint = (cfg.get('default_hooks') or {}).get(
                    'checkpoint') or {}
                if not checkpoint.get('save_best'):
                    raise ValueError(
                        'generations: hand_on="best" needs a best checkpoint '
                        f'in every teacher; generation {m} has none: set '
                        "default_hooks.checkpoint.save_best='accuracy/top1'")

    def generation_record(self, m: int) -> Dict[str, Any]:
        """What generation m computes, as plain data (recorded in chain.json
        for a resume to compare): its config's sections that decide its
        results, its training dataloader (without where the data lies and
        the worker settings), ``auto_scale_lr``, the EMA hooks among the
        custom hooks and the chain settings that shape its export and report
        table. Left out: its teacher's paths (always generation m-1's
        export) and the speed-only settings."""
        cfg = self.generation_cfgs[m]
        record = {}
        for key in _FINGERPRINT_KEYS:
            if key != 'generations':  # (_plain builds new containers)
                record[key] = _plain(cfg.get(key))
        model = record['model']
        if isinstance(model, dict):
            for name in _SPEED_ONLY_SETTINGS:
                model.pop(name, None)
            teacher = model.get('teacher')
            if isinstance(teacher, dict):
                teacher.pop('config', None)
                teacher.pop('checkpoint', None)
        loader = _plain(cfg.get('train_dataloader') or {})
        if isinstance(loader, dict):
            for name in _LOADER_SPEED_SETTINGS:
                loader.pop(name, None)
            loader['dataset'] = _without_data_location(loader.get('dataset'))
        record['train_dataloader'] = loader
        record['auto_scale_lr'] = _plain(cfg.get('auto_scale_lr'))
        # EMA hooks change the weights handed on; other custom hooks (a
        # logger, a profiler, a test's kill switch) may come and go.
        record['ema_hooks'] = [
            h for h in _plain(cfg.get('custom_hooks') or [])
            if isinstance(h, dict) and str(h.get('type')).endswith('EMAHook')
        ]
        # (report_train may change: a generation trained without it only
        # lacks the training-set columns.)
        record['chain'] = dict(hand_on=self.settings.hand_on,
                               report_k=self.settings.report_k)
        if self.settings.hand_on == 'best':  # which checkpoint is handed on
            checkpoint = (cfg.get('default_hooks') or {}).get(
                'checkpoint') or {}
            record['chain']['best'] = _plain(
                {k: checkpoint.get(k) for k in ('save_best', 'rule')})
        return json.loads(json.dumps(record, sort_keys=True))

    def legacy_fingerprint(self, speed_settings: bool = False
                           ) -> Dict[str, str]:
        """Digests of the whole chain's config, as chain.json recorded them
        before the per-generation records (``speed_settings``: with the
        speed-only settings in, as the first such files did)."""
        sections = {}
        for key in _FINGERPRINT_KEYS:
            value = copy.deepcopy(self.cfg.get(key))
            if key == 'generations' and isinstance(value, dict):
                if self.settings.tolerant != 'all':
                    # Extending a chain keeps its finished generations valid.
                    value.pop('num_generations', None)
                if not speed_settings:
                    for name in _SPEED_ONLY_SETTINGS:
                        value.pop(name, None)
            sections[key] = _digest(value)
        train_set = (self.cfg.get('train_dataloader') or {}).get('dataset', {})
        sections['train_dataset'] = _digest(
            {k: v for k, v in dict(train_set).items()
             if k not in ('data_root', 'data_prefix')})
        return sections

    # ----------------------------------------------------------- the plan --
    def is_finished(self, m: int) -> bool:
        return osp.isfile(osp.join(self.gen_dir(m), GENERATION_FILE))

    def _check_work_dir(self) -> None:
        """Refuse what would lose or mix results (main process only)."""
        chain_file = osp.join(self.work_dir, CHAIN_FILE)
        existing = [m for m, _ in generation_paths(self.work_dir)]
        if osp.isfile(chain_file):
            with open(chain_file) as f:
                saved = json.load(f)
            if 'generations' in saved:
                self._check_recorded_generations(saved, existing)
            else:  # recorded before per-generation records
                ours = self.legacy_fingerprint()
                older = self.legacy_fingerprint(True)
                differ = sorted(
                    k for k in ours
                    if saved.get('fingerprint', {}).get(k) not in (
                        ours[k], older[k]))
                if differ:
                    raise ValueError(
                        f'{self.work_dir} holds a chain made under other '
                        f'settings (recorded config: {saved.get("config")})'
                        f': the config sections {differ} differ. Use '
                        'another --work-dir, or the config and options '
                        'that made it.')
        beyond = [m for m in existing if m > self.num_generations]
        if beyond:
            raise ValueError(
                f'{self.work_dir} holds generations {beyond} beyond '
                f'num_generations={self.num_generations}; resuming would drop '
                'them from the report. Keep num_generations >= '
                f'{max(beyond)} or use another --work-dir.')
        if existing and not self.resume:
            finished = [m for m in existing if self.is_finished(m)]
            raise ValueError(
                f'{self.work_dir} already holds generations {existing} '
                f'(finished: {finished}). Pass --resume to continue the '
                'chain, or choose another --work-dir; nothing was '
                'overwritten.')
        for m in range(1, self.num_generations + 1):
            if self.is_finished(m) and not self.is_finished(m - 1):
                raise ValueError(
                    f'generation {m} is finished but its teacher, generation '
                    f'{m - 1}, is not: {self.work_dir} is inconsistent')
        os.makedirs(self.work_dir, exist_ok=True)
        atomic_write_text(
            json.dumps(
                dict(
                    config=self.cfg.filename,
                    num_generations=self.num_generations,
                    generations={
                        str(m): self.generation_record(m)
                        for m in range(self.num_generations + 1)
                    }),
                indent=2), chain_file)

    def _started(self, m: int) -> bool:
        """Generation m has results a resume would keep: it is finished, or
        has a checkpoint to continue from."""
        return self.is_finished(m) or bool(self._checkpoints(m))

    def _check_recorded_generations(self, saved: dict,
                                    existing: List[int]) -> None:
        """Refuse a resume that would keep a generation trained under other
        settings than this config gives it. Generations not started yet may
        change (a resume trains them with this config)."""
        for m in existing:
            if m > self.num_generations or not self._started(m):
                continue
            theirs = saved['generations'].get(str(m))
            if theirs is None:
                continue
            changes = _differences(theirs, self.generation_record(m))
            if not changes:
                continue
            shown = '; '.join(changes[:4]) + (
                f'; and {len(changes) - 4} more' if len(changes) > 4 else '')
            if self.is_finished(m):
                state, remedy = 'finished', ''
            else:
                state = 'started'
                remedy = (f' To train generation {m} anew under these '
                          f'settings, delete {self.gen_dir(m)};')
            hint = ''
            if self.settings.tolerant == 'all' and saved.get(
                    'num_generations') != self.num_generations:
                hint = (" (with tolerant='all' the chain's last generation "
                        'is not tolerant, so extending or shrinking the '
                        'chain changes it)')
            raise ValueError(
                f'{self.work_dir}: generation {m} ({state}) was trained '
                f'under other settings than this config gives it{hint}: '
                f'{shown}.{remedy} Use the config and options that made '
                'it, or another --work-dir.')

    def _checkpoints(self, m: int) -> List[Tuple[int, str]]:
        """``[(epoch or iteration, path)]`` of generation m's training
        checkpoints (``epoch_<n>.pth``, ``iter_<n>.pth``)."""
        found = []
        for path in glob.glob(osp.join(self.gen_dir(m), '*.pth')):
            name = re.fullmatch(r'(epoch|iter)_(\d+)\.pth', osp.basename(path))
            if name:
                found.append((int(name.group(2)), path))
        return found

    def latest_checkpoint(self, m: int) -> Optional[str]:
        """The newest checkpoint of generation m that loads, if any."""
        for _, path in sorted(self._checkpoints(m), reverse=True):
            try:
                safe_torch_load(path)
            except CheckpointLoadError as e:
                _log(f'skipping unreadable checkpoint: {e}', 'WARNING')
                continue
            return path
        return None

    def _make_plan(self) -> Dict[str, Any]:
        self._check_work_dir()
        finished = [
            m for m in range(self.num_generations + 1) if self.is_finished(m)
        ]
        first = len(finished)
        resume_from = None
        if self.resume and first <= self.num_generations:
            # Half-written files of a killed write (see compat's atomic
            # writes) are never read; clear them away.
            for stale in glob.glob(osp.join(self.gen_dir(first), '*.tmp-*')):
                os.remove(stale)
            resume_from = self.latest_checkpoint(first)
        return dict(finished=finished, resume_from=resume_from)

    def _check_cache_input(self, first: int) -> None:
        """With ``teacher_cache`` (no views) in the first student still to
        train, refuse a training set that draws a sample differently each
        time before the chain trains anything, rather than at that
        student's first replayed epoch. Every rank checks (mmpretrain's
        CIFAR and MNIST datasets meet in a barrier while they load)."""
        from mmengine.registry import DefaultScope
        from mmpretrain.registry import DATASETS
        m = max(1, first)
        if m > self.num_generations:
            return
        cfg = self.generation_cfgs[m]
        cache = cfg.model.get('teacher_cache')
        if cache is None or cache.get('views') is not None:
            return
        # Dataset wrappers build what they wrap in the default scope's
        # registry, which no Runner has set yet.
        with DefaultScope.overwrite_default_scope(
                cfg.get('default_scope') or 'mmpretrain'):
            dataset = DATASETS.build(
                copy.deepcopy(cfg.train_dataloader.dataset))
        try:
            check_replayable_dataset(dataset)
        except ValueError as e:
            raise ValueError(f'generations: generation {m}: {e}') from None

    def _agree(self, value: Any) -> Any:
        """Rank 0's value on every rank (files may lag on other nodes)."""
        if not is_distributed():
            return value
        holder = [value]
        broadcast_object_list(holder, src=0)
        return holder[0]

    # -------------------------------------------------------------- train --
    def _init_dist(self) -> None:
        if self.launcher != 'none' and not is_distributed():
            env_cfg = self.cfg.get('env_cfg') or {}
            init_dist(self.launcher, **(env_cfg.get('dist_cfg') or {}))

    def train(self) -> List[dict]:
        self._init_dist()
        error = failure = None
        plan = None
        if is_main_process():
            try:
                plan = self._make_plan()
            except Exception as e:  # every rank must stop, not only rank 0
                failure, error = e, f'{type(e).__name__}: {e}'
        plan, error = self._agree((plan, error))
        if failure is not None:
            raise failure  # its own type and traceback
        if error is not None:
            raise RuntimeError(f'rank 0 could not plan the chain: {error}')
        self._check_cache_input(len(plan['finished']))

        chain_start = time.time()
        for m in range(self.num_generations + 1):
            if m in plan['finished']:
                with open(osp.join(self.gen_dir(m), GENERATION_FILE)) as f:
                    self.records.append(json.load(f))
                _log(f'generation {m}/{self.num_generations} is finished: '
                     f'top-1 {self.records[-1]["top1"]:.2f}; not retrained')
                continue
            cfg = copy.deepcopy(self.generation_cfgs[m])
            object.__setattr__(cfg, "__class__", _GenerationConfig)
            if m >= 1:
                teacher = cfg.model.teacher.checkpoint
                if not osp.isfile(teacher):
                    raise FileNotFoundError(
                        f'generation {m} needs its teacher {teacher}, which '
                        'does not exist')
            if m == len(plan['finished']) and plan['resume_from']:
                cfg.resume = True
                cfg.load_from = plan['resume_from']
                _log(f'generation {m}: resuming from {plan["resume_from"]}')
            started = time.time()
            runner = Runner.from_cfg(cfg)
            build = time.time() - started
            runner.train()
            wall = time.time() - started
            self._finish_generation(m, runner, cfg, wall, build)
            barrier()
            if not is_main_process():
                with open(osp.join(self.gen_dir(m), GENERATION_FILE)) as f:
                    self.records.append(json.load(f))
            del runner
        self._join_plot()
        if is_main_process():
            _log(f'chain finished in {time.time() - chain_start:.0f} s '
                 f'(this process); report in '
                 f'{osp.join(self.work_dir, "generations.md")}\n' +
                 render_markdown(self.records, self.title))
        return self.records

    def _plot_in_background(self) -> None:
        self._join_plot()
        failed = self._plot_errors = []
        records = list(self.records)

        def plot():
            try:
                plot_report(self.work_dir, records, self.title)
            except Exception as e:  # raised again by _join_plot
                failed.append(e)

        self._plotter = threading.Thread(target=plot, name='chain-plot')
        self._plotter.start()

    def _join_plot(self) -> None:
        plotter = getattr(self, '_plotter', None)
        if plotter is not None:
            plotter.join()
            self._plotter = None
            if self._plot_errors:
                raise self._plot_errors[0]

    @property
    def title(self) -> str:
        name = osp.splitext(osp.basename(self.cfg.filename or 'chain'))[0]
        return f'{name}: tolerant={self.settings.tolerant}'

    # ------------------------------------------------ after a generation --
    def _handed_on_model(self, runner, m: int):
        model = bare_model(runner.model)
        if self.settings.hand_on == 'best':
            best = sorted(
                glob.glob(osp.join(self.gen_dir(m), 'best_*.pth')),
                key=osp.getmtime)
            if not best:
                raise FileNotFoundError(
                    f'generations.hand_on="best" but generation {m} saved no '
                    'best checkpoint: set default_hooks.checkpoint.save_best')
            state = extract_state_dict(safe_torch_load(best[-1]), best[-1])
            model.load_state_dict(state, strict=True)
            return model, osp.basename(best[-1])
        return model, f'last (epoch {runner.epoch})'

    @staticmethod
    def _test_loader_cfg(cfg: Config):
        loader_cfg = cfg.get('test_dataloader') or cfg.get('val_dataloader')
        if loader_cfg is None:
            raise ValueError('the chain report needs a test_dataloader (or '
                             'val_dataloader) in the config')
        return copy.deepcopy(loader_cfg)

    @classmethod
    def _train_eval_loader_cfg(cls, cfg: Config):
        """The training set seen through the test pipeline (for
        ``report_train``)."""
        test_cfg = cls._test_loader_cfg(cfg)
        loader_cfg = copy.deepcopy(cfg.train_dataloader)
        if (loader_cfg.get('dataset') or {}).get('type') == \
                'AugmentationViews':  # set up by teacher_cache.views
            loader_cfg.dataset = loader_cfg.dataset.dataset
            loader_cfg.sampler = dict(type='DefaultSampler', shuffle=False)
        dataset = loader_cfg.get('dataset')
        if not isinstance(dataset, dict) or 'pipeline' not in dataset \
                or 'pipeline' not in test_cfg.get('dataset', {}):
            raise ValueError(
                'generations.report_train needs train_dataloader.dataset and '
                'test_dataloader.dataset to have a `pipeline` (a wrapped '
                f'dataset such as {dataset.get("type") if isinstance(dataset, dict) else dataset!r} '
                'is not supported); set report_train=False')
        dataset['pipeline'] = test_cfg.dataset.pipeline
        loader_cfg['batch_size'] = test_cfg.get('batch_size',
                                                loader_cfg.batch_size)
        loader_cfg.pop('batch_sampler', None)
        return loader_cfg

    def _predict(self, model, loader_cfg, dataset=None):
        """Scores of ``model`` on a dataloader's samples, each rank
        predicting its share; gathered in dataset order on rank 0 (None
        elsewhere). ``dataset``: an already built dataset to use instead of
        building the config's again."""
        from mmengine.dist import collect_results
        loader_cfg = copy.deepcopy(loader_cfg)
        loader_cfg.sampler = dict(type='DefaultSampler', shuffle=False)
        if dataset is not None:
            # build_dataloader deep-copies it: a copy of the parsed data
            # (one array when serialised, mmengine's default), not a parse.
            loader_cfg.dataset = dataset
        loader = Runner.build_dataloader(loader_cfg)
        scores, labels = predict_scores(model, loader)
        size = len(loader.dataset)
        rows = collect_results(list(zip(scores, labels)), size, device='cpu')
        if rows is None:
            return None, None
        return (np.stack([r[0] for r in rows]),
                np.array([r[1] for r in rows], dtype=np.int64))

    def _test_predictions(self, runner, cfg: Config, model):
        """The handed-on model's test-set scores and labels (rank 0).

        When the test set is the validation set and the handed-on model is
        the final one, the validation pass that ended training already
        computed them (``FinalValPredictionsHook``): no second pass. Else
        the test set is predicted, reusing the validation set's built
        dataset when the two loaders are configured alike.
        """
        test_cfg = self._test_loader_cfg(cfg)
        same_as_val = cfg.get('val_dataloader') is not None and _digest(
            test_cfg) == _digest(cfg.val_dataloader)
        val_loop = getattr(runner, '_val_loop', None)
        built_val = getattr(val_loop, 'dataloader', None)
        built_val = built_val if hasattr(built_val, 'dataset') else None
        hook = next((h for h in runner.hooks
                     if isinstance(h, FinalValPredictionsHook)), None)
        # Under DDP each rank validated its own copy: the same weights, but
        # BatchNorm statistics of its own share of the data unless buffers
        # are broadcast. The report describes rank 0's model, the one
        # exported.
        ranks_agree = use_rank0_buffers(model)
        # A final validation in autocast, or of other weights than those
        # handed on (EMA), is not the handed-on model's float32 prediction.
        fp16_val = bool((cfg.get('val_cfg') or {}).get('fp16'))
        if self.settings.hand_on == 'last' and same_as_val and ranks_agree \
                and not fp16_val and built_val is not None \
                and hook is not None and self._agree(
                    hook.iteration == runner.iter
                    and hook.checksum is not None
                    and torch.equal(hook.checksum, weights_checksum(model))):
            kept = hook.predictions(len(built_val.dataset))
            if self._agree(kept is not None):
                return (kept if is_main_process() else (None, None)), \
                    'final validation pass'
        dataset = built_val.dataset if same_as_val and built_val else None
        return self._predict(model, test_cfg, dataset), 'test pass'

    def _train_eval_predictions(self, runner, cfg: Config, model):
        """Scores on the training set seen through the test pipeline, from
        the run's built training dataset with the test pipeline swapped
        in (no second parse of the training files)."""
        from mmengine.dataset import BaseDataset, Compose
        loader_cfg = self._train_eval_loader_cfg(cfg)
        built = runner.train_dataloader.dataset
        built = getattr(built, 'dataset', built)  # AugmentationViews
        dataset = None
        if isinstance(built, BaseDataset) and built._fully_initialized:
            dataset = copy.copy(built)
            dataset.pipeline = Compose(loader_cfg.dataset.pipeline)
        return self._predict(model, loader_cfg, dataset)

    def _finish_generation(self, m: int, runner, cfg: Config, wall: float,
                           build: float) -> None:
        """Export, predict the test set and report (all ranks take part in
        the prediction; rank 0 writes)."""
        started = time.time()
        parts = {}
        model, handed_on = self._handed_on_model(runner, m)
        (scores, labels), test_source = self._test_predictions(
            runner, cfg, model)
        parts['test_predictions'] = time.time() - started
        train_stats = {}
        if self.settings.report_train:
            train_scores, train_labels = self._train_eval_predictions(
                runner, cfg, model)
            if train_scores is not None:
                stats = prediction_stats(train_scores, train_labels,
                                         self.settings.report_k)
                train_stats = dict(
                    train_top1=stats['top1'],
                    train_mean_top1_prob=stats['mean_top1_prob'])
            parts['report_train'] = time.time() - started - sum(
                parts.values())
        if not is_main_process():
            return
        dataset_meta = getattr(runner.train_dataloader.dataset, 'metainfo',
                               None)
        export_plain_model(
            cfg, model, self.gen_dir(m), dataset_meta=dataset_meta,
            extra_meta=dict(generation=m, handed_on=handed_on))
        parts['export'] = time.time() - started - sum(parts.values())
        scores = save_predictions(
            osp.join(self.gen_dir(m), PREDICTIONS), scores, labels)
        record = dict(
            generation=m,
            trained_with=self.role(m),
            handed_on=handed_on,
            epochs=runner.epoch,
            wall_time_s=round(wall, 1),
            **prediction_stats(scores, labels, self.settings.report_k),
            **train_stats)
        record['report_k'] = self.settings.report_k
        # The ensemble of the students M1..Mm (M0 alone for m = 0).
        members = [m] if m == 0 else list(range(1, m + 1))
        all_scores = [scores if g == m else load_predictions(
            osp.join(self.gen_dir(g), PREDICTIONS))[0] for g in members]
        record['ensemble_members'] = members
        record['ensemble_top1'] = topk_accuracy(
            ensemble_scores(all_scores), labels, 1)
        record['teacher_top1'] = self.records[m - 1]['top1'] if m else None
        # What the chain adds to an ordinary mmpretrain run: building the
        # runner (teacher included) and this export/prediction/report step.
        # The report's tables are written after this (milliseconds), its
        # plot in the background while the next generation runs.
        record['build_time_s'] = round(build, 2)
        record['finish_time_s'] = round(time.time() - started, 2)
        parts['statistics'] = time.time() - started - sum(parts.values())
        record['finish_parts_s'] = {k: round(v, 3) for k, v in parts.items()}
        record['test_predictions_from'] = test_source
        self.records.append(record)

        atomic_write_text(
            json.dumps(record, indent=2),
            osp.join(self.gen_dir(m), GENERATION_FILE))
        # The plot (a few tenths of a second) is drawn while the next
        # generation builds and trains; the tables are written now.
        write_report(self.work_dir, self.records, self.title, plot=False)
        self._plot_in_background()
        _log(f'generation {m}/{self.num_generations} finished: top-1 '
             f'{record["top1"]:.2f}, ensemble M{members[0]}..M{members[-1]} '
             f'{record["ensemble_top1"]:.2f}, mean top-1 prob '
             f'{record["mean_top1_prob"]:.3f} ({wall:.0f} s)')


# Tools build runners from MMEngine's root registry before any default scope
# is set (mmpretrain's tools/train.py does); mmpretrain-scoped lookups go to
# mmpretrain's registry. Be found by both.
RUNNERS.register_module(module=GenerationRunner)
