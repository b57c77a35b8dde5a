"""Generation m's config, built once from the chain config and its settings.

Each generation is an ordinary MMEngine run: its config is the chain's
config without ``runner_type``/``generations``, in ``work_dir/gen_<m>``,
with the model of its place in the chain (the patriarch's head loss, or a
``DistillImageClassifier`` of generation m-1's export), its per-generation
``overrides``, and the hooks the chain needs (progress, re-seeding, the
generation's finish, the teacher cache's log).
"""
import copy
import os.path as osp
from typing import List, Optional

from mmengine.config import Config, ConfigDict

from mmtolerant.models.classifiers import plain_classifier_cfg
from mmtolerant.models.losses.utils import loss_name
from mmtolerant.utils.chain_layout import EXPORT_CFG, EXPORT_CKPT, ChainLayout
from mmtolerant.utils.config import merge_cfg_options
from mmtolerant.utils.distributed import cpu_ddp_cfg
from mmtolerant.utils.fileio import use_atomic_checkpoints
from .chain_visualizer import group_wandb_runs
from .generation_settings import GenerationSettings

# Hooks the chain adds to every generation itself (a config that lists one
# gets it once, as the chain sets it up).
CHAIN_HOOKS = ('ExportModelHook', 'ChainProgressHook', 'EpochSeedHook',
               'GenerationFinishHook', 'TeacherCacheLoggerHook',
               'PreemptionHook')
# MMEngine's epoch loop, and ours that also resumes mid-epoch.
_EPOCH_LOOPS = ('EpochBasedTrainLoop', 'mmengine.EpochBasedTrainLoop')
RESUMABLE_LOOP = 'ResumableEpochBasedTrainLoop'
# The settings of the chain passed on to every student's model.
_TEACHER_OPTIONS = ('teacher_cache', 'teacher_autocast', 'teacher_compile',
                    'teacher_channels_last')


def num_classes(model_cfg: dict) -> Optional[int]:
    for part in ('head', 'backbone', 'data_preprocessor'):
        value = (model_cfg.get(part) or {}).get('num_classes')
        if isinstance(value, int):
            return value
    return None


def generation_cfgs(chain_cfg: Config,
                    settings: GenerationSettings) -> List[Config]:
    """The configs of generations 0..N."""
    return [
        generation_cfg(chain_cfg, settings, m)
        for m in range(settings.num_generations + 1)
    ]


def generation_cfg(chain_cfg: Config, settings: GenerationSettings,
                   m: int) -> Config:
    """Generation m's config in its final form."""
    layout = ChainLayout(chain_cfg.work_dir)
    cfg = copy.deepcopy(chain_cfg)
    for key in ('runner_type', 'generations'):
        cfg.pop(key, None)
    cfg.work_dir = layout.gen_dir(m)
    # MMEngine's Runner appends its own timestamp.
    cfg.experiment_name = f'{osp.basename(layout.work_dir)}_gen{m}'
    cfg.resume = False
    cfg.load_from = None
    cfg.model = _model(cfg.model, settings, m, layout)
    if m >= 1:
        _add_teacher_accuracy(cfg)
    merge_cfg_options(cfg, settings.overrides.get(m))
    views = (settings.teacher_cache or {}).get('views')
    if m >= 1 and views is not None:
        # After the overrides, so that they edit the dataset itself.
        _use_augmentation_views(cfg, views)
    _add_chain_hooks(cfg, chain_cfg, settings, m)
    _resume_mid_epoch(cfg)
    _use_chain_logging(cfg, chain_cfg, m)
    use_atomic_checkpoints(cfg)
    cpu_ddp_cfg(cfg)
    return cfg


def generation_test_cfg(gen_cfg: Config, chain_cfg: Config,
                        checkpoint: str) -> Config:
    """The config that tests ``checkpoint`` as generation ``gen_cfg``'s
    model, the way stock ``tools/test.py`` tests a run: the plain
    classifier (a student's checkpoint holds the student alone, an export
    the same weights), the chain config's own evaluators and hooks, the
    test's logs in the chain's work_dir."""
    cfg = copy.deepcopy(gen_cfg)
    cfg.model = plain_classifier_cfg(cfg.model)
    for key in ('val_evaluator', 'test_evaluator'):
        if chain_cfg.get(key) is not None:
            cfg[key] = copy.deepcopy(chain_cfg[key])
    cfg.custom_hooks = [
        h for h in (cfg.get('custom_hooks') or [])
        if h.get('type') not in CHAIN_HOOKS
    ]
    cfg.work_dir = ChainLayout(chain_cfg.work_dir).work_dir
    cfg.pop('experiment_name', None)
    cfg.load_from = checkpoint
    cfg.resume = False
    # Testing needs neither the training data nor the optimiser.
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper',
                'param_scheduler', 'auto_scale_lr'):
        cfg.pop(key, None)
    return cfg


def generation_role(settings: GenerationSettings, m: int,
                    head_loss: dict) -> str:
    loss = loss_name(head_loss)
    if m == 0:
        return f'patriarch, trained on data with {loss}'
    teachers = settings.teachers_of(m)
    teacher = f'M{teachers[0]}' if len(teachers) == 1 else (
        f'the ensemble of M{teachers[0]}..M{teachers[-1]}')
    return (f'student of {teacher} (lam={settings.lam:g}, '
            f'{loss_name(settings.distill_loss)}), head loss {loss}')


def teacher_checkpoints(model_cfg: dict) -> List[str]:
    """The checkpoint files of a student's teacher (each member's, for an
    ensemble)."""
    teacher = model_cfg.get('teacher') or {}
    members = teacher.get('members', [teacher])
    return [member['checkpoint'] for member in members]


def _model(model_cfg, settings: GenerationSettings, m: int,
           layout: ChainLayout) -> ConfigDict:
    model = plain_classifier_cfg(model_cfg)
    if model.get('head') is None:
        raise ValueError('a generation chain needs a classifier with a '
                         'head (model.head)')
    if settings.is_tolerant(m):
        loss = ConfigDict(copy.deepcopy(settings.teacher_loss))
        classes = num_classes(model)
        if loss.get('type') == 'TSDLoss' and classes is not None:
            # K is then checked against the classes when built, not at the
            # first training step.
            loss.setdefault('num_classes', classes)
        model.head.loss = loss
    if m == 0:
        return model
    model.type = 'DistillImageClassifier'
    teachers = [
        dict(config=layout.gen_file(g, EXPORT_CFG),
             checkpoint=layout.gen_file(g, EXPORT_CKPT))
        for g in settings.teachers_of(m)
    ]
    # An ensemble of one teaches as its member does (the same softmax at
    # every temperature): it is that member.
    model.teacher = teachers[0] if len(teachers) == 1 else dict(
        members=teachers)
    model.lam = settings.lam
    model.distill_loss = copy.deepcopy(settings.distill_loss)
    defaults = GenerationSettings(num_generations=1)
    for name in _TEACHER_OPTIONS:
        value = getattr(settings, name)
        if value != getattr(defaults, name):  # else the model's default
            model[name] = copy.deepcopy(value)
    return model


def _add_teacher_accuracy(cfg: Config) -> None:
    """A student's validation and test also report its teacher's accuracy."""
    for key in ('val_evaluator', 'test_evaluator'):
        evaluators = cfg.get(key)
        if evaluators is None:
            continue
        if isinstance(evaluators, dict):
            evaluators = [evaluators]
        if not any(e.get('type') == 'TeacherAccuracy' for e in evaluators):
            topk = evaluators[0].get('topk', (1, ))
            evaluators = list(evaluators) + [
                dict(type='TeacherAccuracy', topk=topk)
            ]
        cfg[key] = evaluators


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


def max_epochs(chain_cfg: Config, settings: GenerationSettings,
               m: int) -> int:
    """Generation m's ``train_cfg.max_epochs`` (0 for iteration loops)."""
    holder = Config(
        dict(train_cfg=copy.deepcopy(chain_cfg.get('train_cfg') or {})))
    merge_cfg_options(holder, {
        k: v
        for k, v in settings.overrides.get(m, {}).items()
        if str(k).split('.')[0] == 'train_cfg'
    })
    return int(holder.train_cfg.get('max_epochs', 0) or 0)


def _add_chain_hooks(cfg: Config, chain_cfg: Config,
                     settings: GenerationSettings, m: int) -> None:
    role = generation_role(settings, m, cfg.model.head.loss)
    later_epochs = [
        max_epochs(chain_cfg, settings, g)
        for g in range(m + 1, settings.num_generations + 1)
    ]
    hooks = [
        h for h in (cfg.get('custom_hooks') or [])
        if h.get('type') not in CHAIN_HOOKS
    ]
    hooks += [preemption_hook_cfg(cfg)]
    hooks += [
        dict(type='ChainProgressHook', generation=m,
             num_generations=settings.num_generations, role=role,
             later_epochs=later_epochs),
        dict(type='EpochSeedHook'),
        dict(type='GenerationFinishHook', generation=m,
             chain_dir=ChainLayout(chain_cfg.work_dir).work_dir, role=role,
             hand_on=settings.hand_on, report_k=settings.report_k,
             report_train=settings.report_train,
             teachers=settings.teachers_of(m)),
    ]
    if m >= 1 and settings.teacher_cache is not None:
        hooks.append(dict(type='TeacherCacheLoggerHook'))
    cfg.custom_hooks = hooks


def preemption_hook_cfg(cfg: Config) -> dict:
    """The config's own ``PreemptionHook`` (its signals, its interval),
    else the default one."""
    for hook in cfg.get('custom_hooks') or []:
        if hook.get('type') == 'PreemptionHook':
            return copy.deepcopy(hook)
    return dict(type='PreemptionHook')


def _resume_mid_epoch(cfg: Config) -> None:
    """MMEngine's epoch loop becomes :class:`ResumableEpochBasedTrainLoop`
    (same arguments), so a generation stopped by a signal continues its
    epoch where it stopped."""
    train_cfg = cfg.get('train_cfg')
    if not isinstance(train_cfg, dict):
        return
    if train_cfg.get('type') in _EPOCH_LOOPS or (
            'type' not in train_cfg and train_cfg.get('by_epoch') is True):
        train_cfg.pop('by_epoch', None)
        train_cfg['type'] = RESUMABLE_LOOP


def _use_chain_logging(cfg: Config, chain_cfg: Config, m: int) -> None:
    """The chain's place and ETA in each training log line (unless the
    config brings its own log processor), and W&B runs grouped by chain."""
    processor = cfg.get('log_processor') or {}
    default = ('LogProcessor', 'mmengine.LogProcessor')
    if processor.get('type', 'LogProcessor') in default:
        cfg.log_processor = dict(processor, type='ChainLogProcessor')
    group_wandb_runs(cfg.get('visualizer'),
                     osp.basename(ChainLayout(chain_cfg.work_dir).work_dir),
                     f'gen_{m}')


def check_generation_cfgs(cfgs: List[Config],
                          settings: GenerationSettings) -> None:
    """Refuse, before the patriarch trains, what would stop a later
    generation: another class count, a loss that cannot be built, a
    report or hand-over the configs cannot give."""
    from mmpretrain.registry import MODELS

    from ..hooks.generation_finish_hook import train_eval_loader_cfg
    counts = {m: num_classes(cfg.model) for m, cfg in enumerate(cfgs)}
    known = {m: n for m, n in counts.items() if n is not None}
    if len(set(known.values())) > 1:
        raise ValueError(
            'the number of classes changes between generations '
            f'({", ".join(f"M{m}: {n}" for m, n in known.items())}); a '
            'student must predict its teacher\'s classes')
    for m, cfg in enumerate(cfgs):
        epochs = (cfg.get('train_cfg') or {}).get('max_epochs')
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(
                epochs, int) or epochs < 1):
            raise ValueError(
                f'generations: generation {m} has train_cfg.max_epochs='
                f'{epochs!r}; every generation trains at least one epoch '
                '(set it in the config or in generations.overrides)')
        if settings.report_train:
            train_eval_loader_cfg(cfg)
        try:
            MODELS.build(copy.deepcopy(cfg.model.head.loss))
            if m >= 1:
                MODELS.build(
                    dict(copy.deepcopy(cfg.model.distill_loss),
                         loss_weight=1.0 - cfg.model.lam))
        except Exception as e:
            raise ValueError(
                f'generations: generation {m} cannot build its losses: '
                f'{type(e).__name__}: {e}') from None
    classes = num_classes(cfgs[0].model)
    if classes is not None and settings.report_k > classes:
        raise ValueError(f'generations: report_k={settings.report_k} is '
                         f'larger than the {classes} classes')
    if settings.hand_on == 'best':
        for m, cfg in enumerate(cfgs[:-1]):
            checkpoint = (cfg.get('default_hooks') or {}).get(
                'checkpoint') or {}
            if not checkpoint.get('save_best'):
                raise ValueError(
                    'generations: hand_on="best" needs a best checkpoint '
                    f'in every teacher; generation {m} has none: set '
                    "default_hooks.checkpoint.save_best='accuracy/top1'")


def check_cache_input(cfg: Config, m: int) -> None:
    """With ``teacher_cache`` (no views) in student m, refuse a training
    set that draws a sample differently each time, before the chain trains
    anything, rather than at that student's first replayed epoch. Every
    rank checks (mmpretrain's CIFAR and MNIST datasets meet in a barrier
    while they load)."""
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import DATASETS

    from mmtolerant.datasets import check_replayable_dataset
    cache = cfg.model.get('teacher_cache')
    if m == 0 or cache is None or cache.get('views') is not None:
        return
    # Dataset wrappers build what they wrap in the default scope's
    # registry, which no Runner has set yet.
    with DefaultScope.overwrite_default_scope(
            cfg.get('default_scope') or 'mmpretrain'):
        dataset = DATASETS.build(copy.deepcopy(cfg.train_dataloader.dataset))
    try:
        check_replayable_dataset(dataset)
    except ValueError as e:
        raise ValueError(f'generations: generation {m}: {e}') from None
