import datetime

from mmengine.runner import LogProcessor
from mmpretrain.registry import LOG_PROCESSORS


@LOG_PROCESSORS.register_module()
class ChainLogProcessor(LogProcessor):
    """MMEngine's ``LogProcessor`` that also shows a generation's place in
    its chain and the chain's ETA, from what :class:`ChainProgressHook`
    puts in the message hub::

        Epoch(train) [2][10/23]  lr: 1.0e-01  eta: 0:00:25
            chain: M1/3 eta 0:02:41  time: ...   (one line)

    and hands ``chain/generation`` and ``chain/eta_s`` to the visualizer
    backends with the other scalars. The GenerationRunner uses it for every
    generation whose config keeps MMEngine's default processor (its
    arguments are kept).
    """

    def get_log_after_iter(self, runner, batch_idx: int, mode: str):
        tag, log_str = super().get_log_after_iter(runner, batch_idx, mode)
        info = runner.message_hub.runtime_info
        if mode != 'train' or 'chain/eta_s' not in info:
            return tag, log_str
        m, eta = info['chain/generation'], info['chain/eta_s']
        tag['chain/generation'] = m
        tag['chain/eta_s'] = round(float(eta), 1)
        chain = (f'chain: M{m}/{info["chain/num_generations"]} eta '
                 f'{datetime.timedelta(seconds=int(eta))}  ')
        if 'time: ' in log_str:  # beside the generation's own eta
            at = log_str.index('time: ')
            log_str = log_str[:at] + chain + log_str[at:]
        else:
            log_str = log_str.rstrip() + '  ' + chain.rstrip()
        return tag, log_str
