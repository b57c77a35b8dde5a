"""The ``generations`` section of a chain config, validated."""
import copy
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from mmtolerant.models.classifiers import check_teacher_options
from mmtolerant.models.classifiers.teacher_cache import \
    teacher_cache_from_cfg

TOLERANT_CHOICES = ('patriarch', 'all', 'none')
TEACHER_CHOICES = ('previous', 'ensemble')
HAND_ON_CHOICES = ('last', 'best')


def _fail(msg: str):
    raise ValueError(f'generations: {msg}')


@dataclass
class GenerationSettings:
    r"""How a chain M^0 -> M^1 -> ... -> M^N is trained.

    Args:
        num_generations (int): N, the number of students after the patriarch
            M^0 (so N + 1 trainings). At least 1.
        tolerant (str): Which teachers train with ``teacher_loss``:
            ``'patriarch'`` (M^0 only, the default and the paper's setting),
            ``'all'`` (every teacher M^0..M^(N-1)) or ``'none'`` (the strict
            born-again baseline: cross-entropy everywhere).
        teacher_loss (dict): The loss of tolerant teachers, put in
            ``model.head.loss``. Defaults to ``TSDLoss(eta=0.5, k=3)``; an
            ``LabelSmoothLoss`` or ``ConfidencePenaltyLoss`` gives the LSR
            and CP baselines.
        lam (float): The students' :math:`\lambda` (weight of the head's
            loss; the distillation loss gets 1 - lam).
        distill_loss (dict): The students' distillation loss, by default
            ``DistillKLLoss(tau=1.0)``.
        hand_on (str): Which checkpoint of a generation teaches the next:
            ``'last'`` or ``'best'`` (needs ``save_best`` in the
            CheckpointHook).
        overrides (dict): ``{generation: {dotted.key: value}}`` applied to
            that generation's config last, e.g.
            ``{0: {'train_cfg.max_epochs': 40}}``.
        report_k (int, optional): K of the "top-K secondary mass" in the
            report; defaults to ``teacher_loss.k`` when it has one, else 3.
        report_train (bool): Also predict the training set (with the test
            pipeline, no augmentation) after each generation and report
            its top-1 and mean top-1 probability: how close a teacher came
            to memorising its data, i.e. how one-hot its targets are. One
            extra inference pass over the training set per generation.
            Default False.
        teacher_cache (dict, optional): Given to every student as
            ``DistillImageClassifier(teacher_cache=...)``: replay the
            teacher's outputs instead of recomputing them. ``dict()`` or
            ``dict(dtype='float16')`` for deterministic training inputs
            (the teacher runs in the first epoch only); add ``views=V`` for
            a random training pipeline: each student's training set is then
            wrapped in ``AugmentationViews`` and sampled by
            ``AugmentationViewSampler``, so that epoch e shows the fixed
            view ``e % V`` of each sample and the teacher runs in the first
            V epochs only; ``topk=k`` stores FKD's top-k logits (exact
            probabilities at temperature 1 only); under DDP one copy per
            node in shared memory (``shared='auto'``). Default None.
        teacher_autocast (str, optional): Given to every student as
            ``DistillImageClassifier(teacher_autocast=...)``: ``'bfloat16'``
            or ``'float16'`` runs the teachers alone in that precision.
            Default None (the run's own precision).
        teacher_compile (bool | dict): Given to every student as
            ``DistillImageClassifier(teacher_compile=...)``: the teachers'
            forward passes under ``torch.compile`` (worth it when a
            generation trains for much longer than the compilation's tens
            of seconds). Default False.
        teacher_channels_last (bool, optional): Given to every student as
            ``DistillImageClassifier(teacher_channels_last=...)``: whether
            the teachers run in the channels-last memory layout. Default
            None: not given, so the classifier's own setting applies (by
            default automatic: channels-last unless it fails).
        teacher (str): Whom a student learns from: ``'previous'`` (the
            default, the paper's chain: M^m from M^(m-1)) or ``'ensemble'``
            (M^m from the average softmax output of M^0..M^(m-1), an
            :class:`~mmtolerant.models.classifiers.EnsembleTeacher`; with
            ``teacher_cache`` its outputs are cached once per sample).
        ensemble_window (int, optional): With ``teacher='ensemble'``, only
            the latest ``ensemble_window`` generations M^(m-w)..M^(m-1).
            Default None: all of M^0..M^(m-1).
        stop_after (int, optional): Stop the run once generation
            ``stop_after`` is finished (its report written; exit code 0),
            to train a long chain generation by generation: a later run
            with ``--resume`` (and a later or no ``stop_after``) continues
            it. Not part of what the chain records: changing it between
            runs is expected. Default None: train to M^N.
    """
    num_generations: int
    tolerant: str = 'patriarch'
    teacher_loss: Dict[str, Any] = field(
        default_factory=lambda: dict(type='TSDLoss', eta=0.5, k=3))
    lam: float = 0.5
    distill_loss: Dict[str, Any] = field(
        default_factory=lambda: dict(type='DistillKLLoss', tau=1.0))
    hand_on: str = 'last'
    overrides: Dict[int, Dict[str, Any]] = field(default_factory=dict)
    report_k: Optional[int] = None
    report_train: bool = False
    teacher_cache: Optional[Dict[str, Any]] = None
    teacher_autocast: Optional[str] = None
    teacher_compile: Any = False
    teacher_channels_last: Optional[bool] = None
    teacher: str = 'previous'
    ensemble_window: Optional[int] = None
    stop_after: Optional[int] = None

    @classmethod
    def from_cfg(cls, cfg: Optional[dict]) -> 'GenerationSettings':
        if cfg is None:
            _fail('the config has runner_type=GenerationRunner but no '
                  '`generations` section; add e.g. '
                  'generations=dict(num_generations=3)')
        if not isinstance(cfg, dict):
            _fail(f'must be a dict, got {cfg!r}')
        cfg = copy.deepcopy(dict(cfg))
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            _fail(f'unknown keys {unknown}; known keys are {sorted(known)}')
        if 'num_generations' not in cfg:
            _fail('num_generations is required (the number of students '
                  'after the patriarch, at least 1)')
        settings = cls(**cfg)
        settings.validate()
        return settings

    def validate(self) -> None:
        n = self.num_generations
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) \
                or n < 1:
            _fail(f'num_generations must be an integer >= 1 (students after '
                  f'the patriarch), got {n!r}')
        self.num_generations = int(n)
        if self.tolerant not in TOLERANT_CHOICES:
            _fail(f'tolerant must be one of {TOLERANT_CHOICES}, got '
                  f'{self.tolerant!r}')
        if self.hand_on not in HAND_ON_CHOICES:
            _fail(f'hand_on must be one of {HAND_ON_CHOICES}, got '
                  f'{self.hand_on!r}')
        if not isinstance(self.teacher_loss, dict) \
                or 'type' not in self.teacher_loss:
            _fail('teacher_loss must be a loss config dict with a `type`, '
                  f'got {self.teacher_loss!r}')
        if not isinstance(self.distill_loss, dict) \
                or 'type' not in self.distill_loss:
            _fail('distill_loss must be a loss config dict with a `type`, '
                  f'got {self.distill_loss!r}')
        if isinstance(self.lam, bool) or not isinstance(
                self.lam, numbers.Real) or not 0 <= self.lam <= 1:
            _fail(f'lam must be a number in [0, 1], got {self.lam!r}')
        self.overrides = self._checked_overrides()
        if self.report_k is None:
            # The tolerant loss's K where it is a valid one (a bad K is the
            # loss's own error, raised when the chain builds it).
            k = self.teacher_loss.get('k')
            self.report_k = int(k) if isinstance(
                k, numbers.Integral) and k >= 2 else 3
        if self.report_k < 2:
            _fail(f'report_k must be >= 2, got {self.report_k!r}')
        if self.teacher_cache is not None:
            # The students' own check, run now: a bad cache setting must not
            # wait for generation 1 to be found.
            teacher_cache_from_cfg(self.teacher_cache, 'generations')
        # The students' own check, run now (as for teacher_cache above).
        check_teacher_options('generations', self.teacher_autocast,
                              self.teacher_compile,
                              self.teacher_channels_last)
        if self.teacher not in TEACHER_CHOICES:
            _fail(f'teacher must be one of {TEACHER_CHOICES}, got '
                  f'{self.teacher!r}')
        window = self.ensemble_window
        if window is not None:
            if isinstance(window, bool) or not isinstance(
                    window, numbers.Integral) or window < 1:
                _fail('ensemble_window must be None or an integer >= 1, got '
                      f'{window!r}')
            if self.teacher != 'ensemble':
                _fail(f'ensemble_window={window!r} needs '
                      f"teacher='ensemble' (got teacher={self.teacher!r})")
        stop = self.stop_after
        if stop is not None and (isinstance(stop, bool) or not isinstance(
                stop, numbers.Integral) or not 0 <= stop <= n):
            _fail(f'stop_after must be None or a generation 0..{n}, got '
                  f'{stop!r}')
        if not isinstance(self.report_train, bool):
            _fail(f'report_train must be True or False, got '
                  f'{self.report_train!r}')

    def _checked_overrides(self) -> Dict[int, Dict[str, Any]]:
        """``overrides`` keyed by int generation, each a dict of keys."""
        if not isinstance(self.overrides, dict):
            _fail(f'overrides must be a dict {{generation: {{key: value}}}}, '
                  f'got {self.overrides!r}')
        overrides = {}
        for gen, options in self.overrides.items():
            try:
                index = int(gen)
            except (TypeError, ValueError):
                index = -1
            if not 0 <= index <= self.num_generations:
                _fail(f'overrides names generation {gen!r}, but the chain '
                      f'has generations 0..{self.num_generations}')
            if not isinstance(options, dict):
                _fail(f'overrides[{gen!r}] must be a dict of dotted config '
                      f'keys, got {options!r}')
            overrides[index] = dict(options)
        return overrides

    def teachers_of(self, generation: int) -> List[int]:
        """The generations whose exports teach ``generation`` (none for
        the patriarch)."""
        if generation == 0:
            return []
        if self.teacher == 'previous':
            return [generation - 1]
        first = 0 if self.ensemble_window is None else max(
            0, generation - self.ensemble_window)
        return list(range(first, generation))

    def is_tolerant(self, generation: int) -> bool:
        """Whether generation ``generation`` trains with ``teacher_loss``."""
        if self.tolerant == 'patriarch':
            return generation == 0
        if self.tolerant == 'all':
            # The last generation teaches nobody.
            return generation < self.num_generations
        return False
