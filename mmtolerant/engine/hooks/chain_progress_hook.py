import datetime
import time
from typing import Sequence

from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS


@HOOKS.register_module()
class ChainProgressHook(Hook):
    """Logs which generation of a chain is training and the chain's ETA.

    The GenerationRunner adds it to every generation. The ETA extrapolates
    the current seconds per iteration to the rest of this generation and to
    the generations still to come (``later_epochs`` lists their epochs; an
    epoch is assumed to have as many iterations as here).

    Args:
        generation (int): This generation's index m.
        num_generations (int): N; the chain is M^0..M^N.
        role (str): What this generation is, for the log.
        later_epochs (Sequence[int]): max_epochs of generations m+1..N.
        interval (int, optional): Log every this many iterations; defaults
            to the LoggerHook's interval.
    """
    priority = 'LOW'  # just after LoggerHook's line

    def __init__(self,
                 generation: int,
                 num_generations: int,
                 role: str = '',
                 later_epochs: Sequence[int] = (),
                 interval: int = None):
        self.generation = generation
        self.num_generations = num_generations
        self.role = role
        self.later_epochs = list(later_epochs)
        self.interval = interval

    def _tag(self) -> str:
        return f'[chain] generation {self.generation}/{self.num_generations}'

    def before_train(self, runner) -> None:
        if self.interval is None:
            logger_hook = None
            for hook in runner.hooks:
                if type(hook).__name__ == 'LoggerHook':
                    logger_hook = hook
            self.interval = getattr(logger_hook, 'interval', 50)
        self._start = time.time()
        self._start_iter = runner.iter
        runner.logger.info(f'{self._tag()} (M{self.generation}): '
                           f'{self.role}')

    def chain_eta(self, runner) -> float:
        done = runner.iter + 1 - self._start_iter
        per_iter = (time.time() - self._start) / max(done, 1)
        iters_per_epoch = len(runner.train_dataloader)
        remaining = runner.max_iters - runner.iter - 1
        remaining += sum(self.later_epochs) * iters_per_epoch
        return per_iter * remaining

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        if not self.every_n_train_iters(runner, self.interval):
            return
        eta = datetime.timedelta(seconds=int(self.chain_eta(runner)))
        runner.logger.info(f'{self._tag()}  chain ETA: {eta}  (epoch '
                           f'{runner.epoch + 1}/{runner.max_epochs} of '
                           f'M{self.generation})')
