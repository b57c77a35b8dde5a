"""Generations inside one training run: snapshot generations.

After the first author's Snapshot Distillation (Yang, Xie, Su, Yuille, CVPR
2019): one run of ``C x E`` epochs under a cyclic learning rate (cosine
restarts, one cycle per ``E`` epochs) instead of a chain of ``C`` runs of
``E`` epochs from scratch. Cycle 0 trains on the head's loss alone (or on
``first_cycle_loss``, e.g. TSD, as a tolerant chain's patriarch); at the
end of cycle c the student's weights are frozen as the teacher of cycle
c+1, which goes on from those same weights. The run's work_dir then reads
like a chain's (``ChainLayout``): ``gen_<c>/`` holds cycle c's export,
test predictions and record, and ``generations.json/.md/.png`` the report,
so the analysis tools and sweeps read a snapshot run as a chain.
"""
import copy
import logging
import time
from typing import Dict, Optional

import torch
from mmengine.dist import barrier, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop
from mmpretrain.registry import HOOKS, MODELS

from mmtolerant.models.classifiers.frozen_teacher import (
    FrozenTeacher, num_classes_of)
from mmtolerant.models.classifiers.plain_classifier import plain_model_cfg
from mmtolerant.utils.chain_layout import LOCK_FILE, ChainLayout
from mmtolerant.utils.distributed import agree, use_rank0_buffers
from mmtolerant.utils.model import bare_model
from mmtolerant.utils.work_dir_lock import WorkDirInUse, WorkDirLock
from .generation_finish_hook import test_loader_cfg
from .snapshot_cycle_report import cycle_test_predictions, write_cycle
from .snapshot_work_dir import (CHECKPOINT_KEY, check_resumed,
                                check_work_dir, snapshot_record,
                                write_record)

# The work_dir locks this process holds, by lock file (one run at a time).
_HELD: Dict[str, WorkDirLock] = {}


@HOOKS.register_module()
class SnapshotGenerationsHook(Hook):
    """Snapshot generations on an ordinary ``DistillImageClassifier`` run.

    The model is a ``DistillImageClassifier`` without a teacher
    (``teacher=None``): its ``lam`` and ``distill_loss`` are those of every
    cycle after the first. The schedule is the config's: give it one cycle
    per ``max_epochs / num_cycles`` epochs (mmengine's ``CosineRestartLR``,
    see ``configs/tsd/snapshot-*``).

    At the start of each cycle c >= 1 the current weights (those at the end
    of cycle c-1; under DDP with rank 0's BatchNorm statistics on every
    rank) are frozen into the teacher (a :class:`FrozenTeacher`, in eval
    mode, outside the model's state dict, optimizer and DDP buckets). The
    teacher's weights go into every checkpoint (``snapshot_generations``),
    so a run resumed mid-cycle teaches with exactly the teacher it had: the
    resumed run ends equal to an uninterrupted one.

    At the end of each cycle, like a chain's generation, rank 0 writes
    ``gen_<c>/exported_model.pth/.py`` (stock mmpretrain), the test
    predictions and ``generation.json`` (top-1, the ensemble of cycles
    1..c, the teacher's top-1, confidence, the cycle's wall time), then the
    report ``generations.json/.md/.png`` of the cycles so far. The work_dir
    is locked for the run (``chain.lock``) and ``chain.json`` records the
    cycles and what the run computes: a second run, a resume under other
    settings, from another run's checkpoint or without the finished
    cycles' records is refused before training (on every rank). A test run
    of the config (no training) is left alone.

    Args:
        num_cycles (int): C >= 2, dividing ``train_cfg.max_epochs``.
        first_cycle_loss (dict, optional): The head's loss during cycle 0
            (e.g. ``dict(type='TSDLoss', eta=0.6, k=3)``: a tolerant first
            teacher); the head's own loss is used from cycle 1 on. Defaults
            to None (the head's loss throughout).
        report_k (int): K of the report's top-K secondary mass. Defaults
            to 3.
    """
    # Before the checkpoint hook saves an epoch's checkpoint (and after the
    # sampler's seed), so a cycle's end is reported before it is saved.
    priority = 'NORMAL'

    def __init__(self, num_cycles: int,
                 first_cycle_loss: Optional[dict] = None,
                 report_k: int = 3):
        if isinstance(num_cycles, bool) or not isinstance(num_cycles, int) \
                or num_cycles < 2:
            raise ValueError('SnapshotGenerationsHook: num_cycles must be '
                             f'an int >= 2, got {num_cycles!r}')
        if first_cycle_loss is not None and not isinstance(
                first_cycle_loss, dict):
            raise ValueError('SnapshotGenerationsHook: first_cycle_loss '
                             'must be a loss config dict or None, got '
                             f'{first_cycle_loss!r}')
        if isinstance(report_k, bool) or not isinstance(report_k, int) \
                or report_k < 2:
            raise ValueError('SnapshotGenerationsHook: report_k must be an '
                             f'int >= 2, got {report_k!r}')
        self.num_cycles = num_cycles
        self.first_cycle_loss = first_cycle_loss
        self.report_k = report_k
        self.cycle_epochs = None
        self.layout: Optional[ChainLayout] = None
        self._lock: Optional[WorkDirLock] = None
        self._head_loss = None  # the head's own loss (cycles >= 1)
        self._first_loss = None
        self._teacher_cycle = 0  # the cycle the model's teacher is for
        self._teacher_state = None  # its weights (CPU), for checkpoints
        # cycle -> seconds from its start to its report (validation and
        # checkpoints included, as a chain's generation; resumes add up)
        self._cycle_time = {}
        self._mark = None  # when the time not yet counted began
        self._resumed_entry = False  # the resumed checkpoint had our entry

    # --- checks and the work_dir -------------------------------------------

    def before_train(self, runner) -> None:
        """Every check and the work_dir's lock, before the first step (and
        after a resume loaded its checkpoint). A test run of the same
        config (``tools/test.py``) trains nothing and is left alone."""
        self._check_settings(runner)
        self.layout = ChainLayout(runner.work_dir)
        error = None
        if is_main_process():
            path = self.layout.path(LOCK_FILE)
            # A run of this process that ended in an exception (mmengine
            # calls no hook then) left its lock held: that run is over.
            stale = _HELD.pop(path, None)
            if stale is not None:
                stale.release()
            try:
                self._lock = _HELD[path] = WorkDirLock(path)
                self._lock.acquire()
                self._check_work_dir(runner)
            except (ValueError, RuntimeError, OSError) as e:
                error = (type(e).__name__, str(e))
                self.after_run(runner)
        # Every rank stops on rank 0's refusal, not only rank 0.
        error = agree(error)
        if error is not None:
            kind = {'WorkDirInUse': WorkDirInUse,
                    'PermissionError': PermissionError}.get(
                        error[0], ValueError)
            raise kind(error[1])
        self._check_schedule(runner)

    def _check_settings(self, runner) -> None:
        model = bare_model(runner.model)
        if type(model).__name__ != 'DistillImageClassifier' or \
                not hasattr(model, 'set_teacher'):
            raise TypeError(
                'SnapshotGenerationsHook needs model.type='
                f"'DistillImageClassifier', got {type(model).__name__}")
        if model.frozen_teacher is not None and not self._teacher_state:
            raise ValueError(
                'SnapshotGenerationsHook: the model already has a teacher '
                f'({model.frozen_teacher.checkpoint}); set model.teacher='
                'None: each cycle is taught by the one before it')
        loop = runner.train_loop
        max_epochs = getattr(loop, 'max_epochs', None)
        if not isinstance(loop, EpochBasedTrainLoop) or max_epochs is None:
            raise ValueError('SnapshotGenerationsHook needs an epoch-based '
                             'train loop (train_cfg.by_epoch=True)')
        if max_epochs % self.num_cycles:
            raise ValueError(
                f'SnapshotGenerationsHook: num_cycles={self.num_cycles} '
                f'does not divide train_cfg.max_epochs={max_epochs}: each '
                'cycle must have the same number of epochs')
        self.cycle_epochs = max_epochs // self.num_cycles
        classes = num_classes_of(model)
        if classes is not None and self.report_k > classes:
            raise ValueError(
                f'SnapshotGenerationsHook: report_k={self.report_k} is '
                f'larger than the {classes} classes')
        test_loader_cfg(runner.cfg)  # the report needs test data
        if self.first_cycle_loss is not None:
            if not hasattr(model.head, 'loss_module'):
                raise ValueError(
                    'SnapshotGenerationsHook: first_cycle_loss needs a head '
                    'of mmpretrain\'s ClsHead family (with a loss_module); '
                    f'{type(model.head).__name__} has none')
            self._first_loss = MODELS.build(copy.deepcopy(
                self.first_cycle_loss))
        if hasattr(model.head, 'loss_module') and self._head_loss is None:
            self._head_loss = model.head.loss_module

    def _check_schedule(self, runner) -> None:
        """Warn when the learning rate does not restart once per cycle
        (the method's schedule; another cyclic one may be meant)."""
        schedulers = runner.cfg.get('param_scheduler')
        if isinstance(schedulers, dict):
            schedulers = [schedulers]
        restarts = [s for s in schedulers or [] if isinstance(s, dict) and
                    s.get('type') == 'CosineRestartLR']
        if not restarts or any(
                list(s.get('periods', [])) != [self.cycle_epochs] *
                self.num_cycles or not s.get('by_epoch', True)
                for s in restarts):
            print_log(
                '[snapshot] the learning rate is not CosineRestartLR with '
                f'periods={[self.cycle_epochs] * self.num_cycles} by epoch: '
                'each cycle should restart the schedule (see '
                'configs/tsd/snapshot-*)', logger='current',
                level=logging.WARNING)

    def _check_work_dir(self, runner) -> None:
        resume = bool(getattr(runner, '_resume', False))
        record = snapshot_record(runner.cfg, self.num_cycles,
                                 self.cycle_epochs, self.first_cycle_loss,
                                 self.report_k)
        check_work_dir(self.layout, record, resume)
        if runner.epoch > 0 or runner.iter > 0:
            check_resumed(self.layout, runner.epoch,
                          self._cycle(runner.epoch), self._resumed_entry)
        write_record(self.layout, record)

    def after_run(self, runner) -> None:
        if self._lock is not None:
            _HELD.pop(self._lock.path, None)
            self._lock.release()
            self._lock = None

    # --- the teacher of each cycle -----------------------------------------

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = dict(
            teacher_cycle=self._teacher_cycle,
            teacher_state=self._teacher_state,
            cycle_time_s=dict(self._cycle_time))

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # A resume only: weights loaded with load_from start a new run.
        if not getattr(runner, '_resume', False):
            return
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            return
        self._resumed_entry = True
        self._cycle_time = {int(k): v for k, v in saved.get(
            'cycle_time_s', {}).items()}
        if saved.get('teacher_state') is not None:
            self._set_teacher(runner, int(saved['teacher_cycle']),
                              saved['teacher_state'])

    def _set_teacher(self, runner, cycle: int, state: dict) -> None:
        model = bare_model(runner.model)
        state = {k: v.detach().cpu().clone() for k, v in state.items()}
        # Building the teacher initialises weights that its state then
        # replaces: it must not draw from the run's random numbers.
        with torch.random.fork_rng(devices=[]):
            frozen = FrozenTeacher(
                config=plain_model_cfg(runner.cfg),
                checkpoint=f'the snapshot of cycle {cycle - 1}',
                state_dict=state,
                teacher_autocast=model.teacher_autocast,
                teacher_compile=model.teacher_compile,
                teacher_channels_last=model.teacher_channels_last)
        model.set_teacher(frozen)
        self._teacher_cycle, self._teacher_state = cycle, state

    def _cycle(self, epoch: int) -> int:
        return epoch // self.cycle_epochs

    def before_train_epoch(self, runner) -> None:
        cycle = self._cycle(runner.epoch)
        model = bare_model(runner.model)
        if cycle > 0 and self._teacher_cycle != cycle:
            # The weights now are those that ended cycle c-1 (also right
            # after a resume from the checkpoint of that epoch).
            use_rank0_buffers(model)
            self._set_teacher(runner, cycle, model.state_dict())
            # The last cycle's loss terms (e.g. TSD's) would stay in the
            # log lines with their last values: each loss logs its own.
            scalars = runner.message_hub.log_scalars
            for key in [k for k in scalars if k.startswith('train/loss')]:
                scalars.pop(key)
            # Every rank has its teacher (and cleared its cache) before any
            # rank trains on it.
            barrier()
            print_log(
                f'[snapshot] cycle {cycle}/{self.num_cycles - 1} (epochs '
                f'{cycle * self.cycle_epochs + 1}-'
                f'{(cycle + 1) * self.cycle_epochs}): taught by the '
                f'snapshot of cycle {cycle - 1}', logger='current')
        if self._first_loss is not None:
            loss = self._first_loss if cycle == 0 else self._head_loss
            param = next(model.parameters(), None)
            if param is not None:  # a loss may hold buffers (class_weight)
                loss.to(param.device)
            model.head.loss_module = loss
        if self._mark is None:  # the run's first epoch
            self._mark = time.time()

    # --- the end of each cycle ---------------------------------------------

    def _count_time(self, cycle: int) -> None:
        """Give ``cycle`` the time since the last count."""
        now = time.time()
        self._cycle_time[cycle] = self._cycle_time.get(cycle, 0.0) + (
            now - self._mark)
        self._mark = now

    def after_train_epoch(self, runner) -> None:
        cycle = self._cycle(runner.epoch)
        # This epoch, and the validation and checkpoint after the last one.
        self._count_time(cycle)
        if (runner.epoch + 1) % self.cycle_epochs:
            return
        model = bare_model(runner.model)
        # The model handed on (exported, reported, the next teacher) is
        # rank 0's, BatchNorm statistics included.
        use_rank0_buffers(model)
        scores, labels = cycle_test_predictions(runner, model, cycle)
        self._count_time(cycle)  # the test pass is the cycle's, as a chain's
        if is_main_process():
            write_cycle(runner, self.layout, model, cycle, scores, labels,
                        num_cycles=self.num_cycles,
                        cycle_epochs=self.cycle_epochs,
                        report_k=self.report_k,
                        first_cycle_loss=self.first_cycle_loss,
                        wall_time_s=self._cycle_time[cycle])
        barrier()
