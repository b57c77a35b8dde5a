import os
import os.path as osp
from typing import Optional, Sequence

from mmengine.dist import barrier, is_distributed, is_main_process
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS

from mmtolerant.utils import preemption
from mmtolerant.utils.chain_layout import LAST_CHECKPOINT
from mmtolerant.utils.fileio import ATOMIC_BACKEND, atomic_write_text


@HOOKS.register_module()
class PreemptionHook(Hook):
    """Stops training at the next iteration boundary after a signal,
    with a checkpoint to resume from there.

    A cluster warns a job before its time limit or a preemption (SLURM:
    ``#SBATCH --signal=USR1@180``). On one of ``signals`` the run finishes
    the iteration it is in, saves ``iter_<n>.pth`` (model, optimizer,
    schedulers, message hub; epoch and iteration reached) and
    ``last_checkpoint`` (so ``--resume`` finds it), and exits with code 75
    (:data:`~mmtolerant.utils.preemption.REQUEUE_EXIT_CODE`): the job
    script requeues itself and the next job resumes. With
    :class:`~mmtolerant.engine.runner.ResumableEpochBasedTrainLoop` (the
    chain uses it) the resumed epoch continues at the next batch, so no
    trained iteration is lost or repeated; with MMEngine's own epoch loop
    the resumed run trains that epoch again from its first batch (a
    warning says so when training starts). The mid-epoch checkpoint is
    removed once a later checkpoint exists.

    The chain adds it to every generation. Under DDP the ranks agree on
    the stop every ``check_interval`` iterations (one all-reduce of one
    number), so all stop at the same iteration; a single process checks
    after every iteration.

    Args:
        signals (Sequence[str]): The signals that ask for the stop.
            Defaults to ``('SIGUSR1',)``.
        check_interval (int): Iterations between two agreements under DDP.
            Defaults to 10.
    """
    priority = 'LOWEST'  # after every hook's after_train_iter (logs, EMA)

    def __init__(self,
                 signals: Sequence[str] = preemption.DEFAULT_SIGNALS,
                 check_interval: int = 10):
        preemption.signal_numbers(signals, 'PreemptionHook')
        if isinstance(check_interval, bool) or not isinstance(
                check_interval, int) or check_interval < 1:
            raise ValueError('PreemptionHook: check_interval must be an int '
                             f'>= 1, got {check_interval!r}')
        self.signals = tuple(signals)
        self.check_interval = check_interval
        self._listening = False
        self._saved: Optional[str] = None

    def before_train(self, runner) -> None:
        preemption.listen(self.signals)
        self._listening = True
        loop = runner.train_loop
        if hasattr(loop, 'max_epochs') and not getattr(
                loop, 'resumes_mid_epoch', False):
            runner.logger.warning(
                f'[preemption] {type(loop).__name__} restarts an epoch from '
                'its first batch when it resumes: after a stop by '
                f'{"/".join(self.signals)} the stopped epoch is trained '
                "again. train_cfg=dict(type='ResumableEpochBasedTrainLoop', "
                '...) resumes at the next batch.')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if is_distributed() and (runner.iter + 1) % self.check_interval:
            return
        signal_name = preemption.agree()
        if signal_name is None:
            return
        filename = f'iter_{runner.iter + 1}.pth'
        # MMEngine's epoch-based save records the epoch as completed; this
        # one is not.
        runner.save_checkpoint(
            runner.work_dir, filename,
            meta=dict(epoch=runner.epoch, iter=runner.iter + 1,
                      stopped_by=signal_name),
            backend_args=dict(backend=ATOMIC_BACKEND))
        path = osp.join(runner.work_dir, filename)
        if is_main_process():
            atomic_write_text(path, osp.join(runner.work_dir,
                                             LAST_CHECKPOINT))
            self._remove_superseded(runner)
        # No rank exits (and has a job step kill the others) while rank 0
        # still writes.
        barrier()
        loop = runner.train_loop
        where = (f'epoch {runner.epoch + 1}, batch {batch_idx + 1}/'
                 f'{len(loop.dataloader)}' if hasattr(loop, 'max_epochs')
                 else f'iteration {runner.iter + 1}')
        message = (f'[preemption] {signal_name}: stopped at {where} and '
                   f'saved {path}; exiting with code '
                   f'{preemption.REQUEUE_EXIT_CODE} (requeue); --resume '
                   'continues from there')
        runner.logger.warning(message)
        self._stop_listening()
        raise preemption.Requeue(message)

    def after_train_epoch(self, runner) -> None:
        self._remove_superseded(runner)

    def after_train(self, runner) -> None:
        self._remove_superseded(runner)
        self._stop_listening()

    def after_run(self, runner) -> None:
        self._stop_listening()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Resumed from a checkpoint of this hook (not from one of the
        # CheckpointHook's, which are its to keep or remove): it is
        # removed once a later one is written.
        meta = checkpoint.get('meta') or {}
        path = osp.join(runner.work_dir, f'iter_{meta.get("iter")}.pth')
        if meta.get('stopped_by') and osp.isfile(path):
            self._saved = path

    def _remove_superseded(self, runner) -> None:
        """Delete the mid-epoch checkpoint this run resumed from once
        ``last_checkpoint`` names another (later) one."""
        if self._saved is None or not is_main_process():
            return
        last = _read_last_checkpoint(runner.work_dir)
        if last and osp.basename(last) != osp.basename(self._saved) \
                and osp.isfile(self._saved):
            os.remove(self._saved)
            self._saved = None

    def _stop_listening(self) -> None:
        if self._listening:
            self._listening = False
            preemption.stop_listening()


def _read_last_checkpoint(work_dir: str) -> Optional[str]:
    try:
        with open(osp.join(work_dir, LAST_CHECKPOINT)) as f:
            return f.read().strip() or None
    except OSError:
        return None
