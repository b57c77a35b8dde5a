"""What ``chain.json`` records, and the comparison that refuses a resume
under changed settings.

For each generation the record holds what decides its results, as plain
data: the config sections that shape the model and its training, its
training dataloader (without where the data lies and the worker
settings), ``auto_scale_lr``, the EMA hooks and the chain settings that
shape its export and report. Left out: its teacher's paths (always
generation m-1's export) and the settings that change only how fast the
teachers run.
"""
import json
import os.path as osp
from typing import Any, Dict, List, Optional

from mmengine.config import Config

from mmtolerant.utils.config import plain_data
from mmtolerant.utils.fileio import atomic_write_text
from .generation_settings import GenerationSettings

_SECTIONS = ('model', 'train_cfg', 'optim_wrapper', 'param_scheduler',
             'randomness', 'data_preprocessor')
# How fast the teachers run, not what they compute (to float rounding).
_SPEED_ONLY_SETTINGS = ('teacher_compile', 'teacher_channels_last')
# How fast batches come, not which.
_LOADER_SPEED_SETTINGS = ('num_workers', 'pin_memory', 'persistent_workers',
                          'prefetch_factor')


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


def _as_epoch_loop(train_cfg: Any) -> Any:
    """The chain's resumable epoch loop recorded as the epoch loop it
    replaces (it changes how a stopped epoch resumes, not what an epoch
    computes)."""
    if isinstance(train_cfg, dict) and \
            train_cfg.get('type') == 'ResumableEpochBasedTrainLoop':
        train_cfg = {k: v for k, v in train_cfg.items() if k != 'type'}
        train_cfg['by_epoch'] = True
    return train_cfg


def run_record(cfg: Config) -> Dict[str, Any]:
    """What an MMEngine run of ``cfg`` computes, as plain data (without
    where its data and teacher files lie, and without what changes only
    its speed)."""
    record = {key: plain_data(cfg.get(key)) for key in _SECTIONS}
    record['train_cfg'] = _as_epoch_loop(record['train_cfg'])
    model = record['model']
    if isinstance(model, dict):
        for name in _SPEED_ONLY_SETTINGS:
            model.pop(name, None)
        teacher = model.get('teacher')
        if isinstance(teacher, dict):
            teacher.pop('config', None)
            teacher.pop('checkpoint', None)
            if isinstance(teacher.get('members'), list):
                # Which generations, not where their files lie.
                teacher['members'] = [
                    osp.basename(osp.dirname(str(member.get('checkpoint'))))
                    for member in teacher['members']
                ]
    loader = plain_data(cfg.get('train_dataloader') or {})
    if isinstance(loader, dict):
        for name in _LOADER_SPEED_SETTINGS:
            loader.pop(name, None)
        loader['dataset'] = _without_data_location(loader.get('dataset'))
    record['train_dataloader'] = loader
    record['auto_scale_lr'] = plain_data(cfg.get('auto_scale_lr'))
    # EMA hooks change the weights handed on; other custom hooks (a
    # logger, a profiler, a test's kill switch) may come and go.
    record['ema_hooks'] = [
        h for h in plain_data(cfg.get('custom_hooks') or [])
        if isinstance(h, dict) and str(h.get('type')).endswith('EMAHook')
    ]
    return record


def generation_record(cfg: Config,
                      settings: GenerationSettings) -> Dict[str, Any]:
    """What generation ``cfg`` computes, as plain data."""
    record = run_record(cfg)
    # (report_train may change: a generation trained without it only
    # lacks the training-set columns.)
    record['chain'] = dict(hand_on=settings.hand_on,
                           report_k=settings.report_k)
    if settings.hand_on == 'best':  # which checkpoint is handed on
        checkpoint = (cfg.get('default_hooks') or {}).get('checkpoint') or {}
        record['chain']['best'] = plain_data(
            {k: checkpoint.get(k) for k in ('save_best', 'rule')})
    return json.loads(json.dumps(record, sort_keys=True))


def differences(theirs: Any, ours: Any, path: str = '') -> List[str]:
    """``'key.path: A recorded, B now'`` for each value that differs (a
    component of another ``type`` as one value)."""
    if isinstance(theirs, dict) and isinstance(ours, dict) and \
            theirs.get('type') == ours.get('type'):
        found = []
        for key in sorted(set(theirs) | set(ours)):
            found += differences(theirs.get(key), ours.get(key),
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


class ChainRecord:
    """``chain.json``: the chain's config file, its length and each
    generation's record."""

    def __init__(self, config: Optional[str], num_generations: int,
                 generations: Dict[str, Dict[str, Any]]):
        self.config = config
        self.num_generations = num_generations
        self.generations = generations

    @classmethod
    def of(cls, cfgs: List[Config], settings: GenerationSettings,
           config: Optional[str]) -> 'ChainRecord':
        return cls(config, settings.num_generations, {
            str(m): generation_record(cfg, settings)
            for m, cfg in enumerate(cfgs)
        })

    @classmethod
    def load(cls, path: str) -> 'ChainRecord':
        with open(path) as f:
            try:
                saved = json.load(f)
            except json.JSONDecodeError as e:
                saved = e
        why = f'invalid JSON: {saved}' if isinstance(
            saved, json.JSONDecodeError) else 'no per-generation records'
        if isinstance(saved, dict) and isinstance(saved.get('generations'),
                                                  dict):
            return cls(saved.get('config'), saved.get('num_generations'),
                       saved['generations'])
        raise ValueError(
            f'{path} is not a chain record of this version of mmtolerant '
            f'({why}): the settings its generations were trained under '
            'are unknown. Use another --work-dir.')

    def save(self, path: str) -> None:
        atomic_write_text(
            json.dumps(dict(config=self.config,
                            num_generations=self.num_generations,
                            generations=self.generations), indent=2), path)

    def changes(self, recorded: 'ChainRecord', m: int) -> List[str]:
        """How generation m's record here differs from ``recorded``'s
        (nothing when it has none)."""
        theirs = recorded.generations.get(str(m))
        if theirs is None:
            return []
        return differences(theirs, self.generations[str(m)])
