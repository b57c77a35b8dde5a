import time
from typing import Optional, Sequence

from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS


@HOOKS.register_module()
class ChainProgressHook(Hook):
    """Puts the chain's place and ETA into MMEngine's message hub.

    The GenerationRunner adds it to every generation. It sets the runtime
    information ``chain/generation`` and ``chain/num_generations`` when
    training starts and updates ``chain/eta_s`` (seconds left in the whole
    chain) after each training iteration. :class:`ChainLogProcessor` shows
    them once in each ordinary training log line and passes them to the
    visualizer backends.

    The ETA extrapolates this run's wall time per iteration (validation
    and checkpoints included as they happen) to the rest of this
    generation and to the generations still to come (``later_epochs``),
    adding each one's build and finish. Once a student has finished, its
    measured seconds per epoch (``chain/student_epoch_s``, from the
    GenerationRunner) prices the later students, whose teacher makes an
    epoch dearer than the patriarch's.

    Args:
        generation (int): This generation's index m.
        num_generations (int): N; the chain is M^0..M^N.
        role (str): What this generation is, for the log.
        later_epochs (Sequence[int]): max_epochs of generations m+1..N.
    """
    priority = 'NORMAL'  # after IterTimerHook, before LoggerHook's line

    def __init__(self,
                 generation: int,
                 num_generations: int,
                 role: str = '',
                 later_epochs: Sequence[int] = ()):
        self.generation = generation
        self.num_generations = num_generations
        self.role = role
        self.later_epochs = list(later_epochs)
        self._past = {}

    def before_run(self, runner) -> None:
        # What the GenerationRunner told this run (before a resume loads
        # the message hub of its checkpoint).
        hub = runner.message_hub
        self._past = {
            key: hub.get_info(f'chain/{key}')
            for key in ('build_time_s', 'finish_time_s', 'student_epoch_s')
        }

    def before_train(self, runner) -> None:
        self._start = time.time()
        self._start_iter = runner.iter
        hub = runner.message_hub
        hub.update_info('chain/generation', self.generation)
        hub.update_info('chain/num_generations', self.num_generations)
        runner.logger.info(
            f'[chain] generation {self.generation}/{self.num_generations} '
            f'(M{self.generation}): {self.role}')

    def chain_eta(self, runner) -> float:
        """Seconds until the chain's last generation has finished."""
        done = runner.iter + 1 - self._start_iter
        per_iter = (time.time() - self._start) / max(done, 1)
        overhead = ((self._past.get('build_time_s') or 0.0) +
                    (self._past.get('finish_time_s') or 0.0))
        remaining = (per_iter * (runner.max_iters - runner.iter - 1) +
                     (self._past.get('finish_time_s') or 0.0))
        epoch_s: Optional[float] = self._past.get('student_epoch_s')
        if epoch_s is None:
            epoch_s = per_iter * len(runner.train_dataloader)
        for epochs in self.later_epochs:
            remaining += epoch_s * epochs + overhead
        return remaining

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        runner.message_hub.update_info('chain/eta_s', self.chain_eta(runner))
