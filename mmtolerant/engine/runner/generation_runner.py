import copy
import json
import logging
import os
import os.path as osp
import shutil
import threading
import time
from typing import Any, List

from mmengine.config import Config
from mmengine.dist import barrier, is_main_process
from mmengine.logging import MMLogger, print_log
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.runner import BaseLoop, Runner
from mmpretrain.registry import RUNNERS

from mmtolerant.evaluation.generation_report import (plot_report,
                                                     render_markdown,
                                                     write_report)
from mmtolerant.utils.chain_layout import (EXPORT_CKPT, GENERATION_FILE,
                                           LOCK_FILE, REPORT_MD, ChainLayout)
from mmtolerant.utils import preemption
from mmtolerant.utils.distributed import (agree, check_shared_dir,
                                          init_distributed)
from mmtolerant.utils.work_dir_lock import WorkDirLock
from .chain_plan import ChainPlan, plan_chain, record_teacher
from .chain_visualizer import write_generation_scalars
from .generation_config import (check_cache_input, check_generation_cfgs,
                                generation_cfgs, generation_test_cfg,
                                preemption_hook_cfg, teacher_checkpoints)
from .generation_settings import GenerationSettings


def _log(msg: str, level: int = logging.INFO) -> None:
    print_log(f'[chain] {msg}', logger='current', level=level)


@MMENGINE_RUNNERS.register_module()
class GenerationRunner:
    """Trains a chain of generations M^0 -> M^1 -> ... -> M^N from one config.

    Select it with ``runner_type = 'GenerationRunner'`` in any mmpretrain
    classifier config and add a ``generations`` section (see
    :class:`GenerationSettings`). Stock ``tools/train.py`` and
    ``tools/dist_train.sh`` build it through MMEngine's ``RUNNERS`` and call
    :meth:`train`.

    Each generation is an ordinary MMEngine ``Runner`` run in
    ``work_dir/gen_<m>/`` (its own logs, checkpoints and config), built
    from :func:`generation_cfg`. The patriarch trains the config's model on
    data (with ``teacher_loss`` when it is tolerant); generation m >= 1 is a
    ``DistillImageClassifier`` whose frozen teacher is generation m-1's
    export. Its :class:`GenerationFinishHook` ends it (export, test
    predictions, ``gen_<m>/generation.json``, written last: the generation
    is finished once it exists).

    ``resume=True`` (``tools/train.py CONFIG --resume``) skips finished
    generations and resumes the running one from its newest readable
    checkpoint (:func:`plan_chain`). Without it, a work_dir that already
    holds generations is refused rather than overwritten.

    After each generation, ``generations.json``, ``generations.md`` and
    ``generations.png`` in the work_dir report every generation so far.

    :meth:`test` tests a model of the chain the way stock ``tools/test.py``
    (mmpretrain's, which builds this runner from ``runner_type``, or ours)
    asks: the checkpoint in ``load_from``, else the handed-on last
    generation.
    """

    def __init__(self, cfg: Config):
        if not isinstance(cfg, Config):
            cfg = Config(copy.deepcopy(dict(cfg)))
        self.cfg = copy.deepcopy(cfg)
        self.settings = GenerationSettings.from_cfg(cfg.get('generations'))
        if cfg.get('work_dir') is None:
            raise ValueError('GenerationRunner needs a work_dir')
        # A test's checkpoint (stock tools/test.py); training refuses it.
        self.load_from = cfg.get('load_from')
        self.layout = ChainLayout(cfg.work_dir)
        self._lock = WorkDirLock(self.layout.path(LOCK_FILE))
        self.launcher = cfg.get('launcher', 'none')
        self.resume = bool(cfg.get('resume', False))
        self.num_generations = self.settings.num_generations
        self.generation_cfgs = generation_cfgs(self.cfg, self.settings)
        check_generation_cfgs(self.generation_cfgs, self.settings)
        self.records: List[dict] = []
        self._plotter = None
        self._test_runner = None
        self._running = None  # the generation's runner, once built
        self._env_logged = False

    @classmethod
    def from_cfg(cls, cfg: Config) -> 'GenerationRunner':
        return cls(cfg)

    @property
    def work_dir(self) -> str:
        return self.layout.work_dir

    @property
    def logger(self) -> MMLogger:
        """The logger of the generation running now (MMEngine's current)."""
        return MMLogger.get_current_instance()

    @property
    def title(self) -> str:
        name = osp.splitext(osp.basename(self.cfg.filename or 'chain'))[0]
        return f'{name}: tolerant={self.settings.tolerant}'

    def train(self) -> List[dict]:
        """Train the generations not finished yet; returns every
        generation's record."""
        if self.load_from:
            raise ValueError(
                'a chain resumes from its own work_dir: use --resume without '
                f'a path (got load_from={self.load_from!r}); to start a '
                "generation from weights, use generations.overrides, e.g. "
                "{0: {'model.init_cfg': dict(type='Pretrained', "
                "checkpoint=...)}}")
        init_distributed(self.launcher,
                         (self.cfg.get('env_cfg') or {}).get('dist_cfg'))
        # A signal that comes between two generations stops the chain there.
        preemption.listen(
            preemption_hook_cfg(self.generation_cfgs[0]).get(
                'signals', preemption.DEFAULT_SIGNALS))
        try:
            return self._train_chain()
        finally:
            preemption.stop_listening()
            self._lock.release()

    def _train_chain(self) -> List[dict]:
        plan = self._agreed_plan()
        student = max(1, plan.first)  # the first student still to train
        if student <= self.num_generations:
            check_cache_input(self.generation_cfgs[student], student)
        chain_start = time.time()
        for m in range(self.num_generations + 1):
            if m in plan.finished:
                self.records.append(self._read_record(m))
                _log(f'generation {m}/{self.num_generations} is finished: '
                     f'top-1 {self.records[-1]["top1"]:.2f}; not retrained')
                continue
            if self._stops_before(m):
                break
            self._train_generation(m, plan)
            self.records.append(self._read_record(m))
            if is_main_process():
                self._report(m)
        self._join_plot()
        if is_main_process():
            done = 'chain finished' if len(
                self.records) > self.num_generations else (
                    f'stopped after generation {len(self.records) - 1} as '
                    'generations.stop_after asks (--resume continues)')
            _log(f'{done} in {time.time() - chain_start:.0f} s (this '
                 f'process); report in {self.layout.path(REPORT_MD)}\n' +
                 render_markdown(self.records, self.title))
        return self.records

    def _stops_before(self, m: int) -> bool:
        """Whether the chain ends before training generation m: True as
        ``stop_after`` asks; raises :class:`Requeue` after a signal (every
        rank, at the same point)."""
        signal_name = preemption.agree()
        if signal_name is not None:
            self._join_plot()
            message = (f'[chain] {signal_name}: stopped before generation '
                       f'{m} (generations 0..{m - 1} are finished); exiting '
                       f'with code {preemption.REQUEUE_EXIT_CODE} (requeue); '
                       f'--resume starts generation {m}')
            _log(message, logging.WARNING)
            raise preemption.Requeue(message)
        stop = self.settings.stop_after
        return stop is not None and m > stop

    def test(self) -> dict:
        """Test a model of the chain on the config's test set, as stock
        ``tools/test.py CONFIG CHECKPOINT`` (and ``mim test``) asks: the
        given checkpoint (``load_from``), as the model of the generation
        whose folder holds it (else of the last generation); without one,
        the last generation's handed-on export. Returns the metrics."""
        return self.test_runner.test()

    @property
    def test_evaluator(self):
        """The test's evaluator (stock ``tools/test.py --out`` adds its
        ``DumpResults`` here before it calls :meth:`test`)."""
        return self.test_runner.test_evaluator

    @property
    def test_runner(self) -> Runner:
        """The ordinary MMEngine runner that :meth:`test` runs."""
        if self._test_runner is None:
            cfg = self.test_cfg()
            init_distributed(self.launcher,
                             (cfg.get('env_cfg') or {}).get('dist_cfg'))
            self._test_runner = Runner.from_cfg(cfg)
        return self._test_runner

    def test_cfg(self) -> Config:
        """The config of :meth:`test`'s run: an ordinary mmpretrain test
        config of the tested generation."""
        checkpoint = self.load_from or self._handed_on_model()
        m = self.layout.generation_of(checkpoint)
        if m is None or m > self.num_generations:
            m = self.num_generations
        return generation_test_cfg(self.generation_cfgs[m], self.cfg,
                                   checkpoint)

    def _handed_on_model(self) -> str:
        last = self.num_generations
        if not self.layout.is_finished(last):
            finished = [
                m for m in self.layout.existing()
                if self.layout.is_finished(m)
            ]
            raise FileNotFoundError(
                f'no checkpoint to test: the chain in {self.work_dir} has '
                f'not finished its last generation {last} (finished: '
                f'{finished or "none"}). Give a checkpoint (e.g. '
                'gen_<m>/exported_model.pth) or finish the chain with '
                'tools/train.py CONFIG --resume.')
        return self.layout.gen_file(last, EXPORT_CKPT)

    def _agreed_plan(self) -> ChainPlan:
        """Rank 0 locks the work_dir for the run and plans (it reads and
        writes the work_dir); every rank follows it, or stops with rank 0's
        error."""
        plan = error = failure = None
        if is_main_process():
            try:
                # A finished chain in a read-only work_dir (an archive, a
                # shared results folder) is checked and reported, unwritten.
                read_only = self.resume and not os.access(
                    self.work_dir, os.W_OK) and all(
                        self.layout.is_finished(m)
                        for m in range(self.num_generations + 1))
                if not read_only:
                    self._lock.acquire()
                plan = plan_chain(self.layout, self.generation_cfgs,
                                  self.settings, self.resume,
                                  self.cfg.filename, write=not read_only)
            except Exception as e:  # every rank must stop, not only rank 0
                failure, error = e, f'{type(e).__name__}: {e}'
        plan, error = agree((plan, error))
        if failure is not None:
            raise failure  # its own type and traceback
        if error is not None:
            raise RuntimeError(f'rank 0 could not plan the chain: {error}')
        check_shared_dir(self.work_dir)
        return plan

    def _train_generation(self, m: int, plan: ChainPlan) -> None:
        """Train generation m; a generation that fails before its first
        training step leaves no folder behind (a corrected rerun then
        needs no --resume)."""
        fresh = not osp.isdir(self.layout.gen_dir(m))
        self._running = None
        try:
            self._run_generation(m, plan)
        except BaseException:
            # (runner.iter would build a loop that could not be built)
            loop = getattr(self._running, '_train_loop', None)
            steps = loop.iter if isinstance(loop, BaseLoop) else 0
            if fresh and is_main_process() and steps == 0 \
                    and not self.layout.checkpoints(m):
                shutil.rmtree(self.layout.gen_dir(m), ignore_errors=True)
            raise

    def _run_generation(self, m: int, plan: ChainPlan) -> None:
        cfg = copy.deepcopy(self.generation_cfgs[m])
        for checkpoint in teacher_checkpoints(cfg.model) if m >= 1 else ():
            if not osp.isfile(checkpoint):
                raise FileNotFoundError(
                    f'generation {m} needs its teacher {checkpoint}, which '
                    'does not exist')
        if m == plan.first and plan.resume_from:
            cfg.resume = True
            cfg.load_from = plan.resume_from
            _log(f'generation {m}: resuming from {plan.resume_from}')
        elif m >= 1 and is_main_process():
            record_teacher(self.layout, m, self.settings.teachers_of(m))
        started = time.time()
        # The environment and config are logged once per chain (the config
        # of each generation is dumped in its folder).
        runner_cls = _GenerationRun if self._env_logged else Runner
        self._env_logged = True
        runner = runner_cls.from_cfg(cfg)
        # What the chain adds to the run, for the generation's record and
        # the chain's ETA (GenerationFinishHook and ChainProgressHook read
        # it before a resume loads the hub).
        hub = runner.message_hub
        hub.update_info('chain/started', started)
        hub.update_info('chain/build_time_s', time.time() - started)
        for key, value in _past_costs(self.records).items():
            hub.update_info(f'chain/{key}', value)
        self._running = runner
        runner.train()
        barrier()  # rank 0 has written generation.json

    def _read_record(self, m: int) -> dict:
        with open(self.layout.gen_file(m, GENERATION_FILE)) as f:
            return json.load(f)

    def _report(self, m: int) -> None:
        """Write the report's tables now and draw its plot (a few tenths of
        a second) while the next generation builds and trains."""
        record = self.records[-1]
        write_report(self.work_dir, self.records, self.title, plot=False)
        self._join_plot()
        self._plotter = _Background(plot_report, self.work_dir,
                                    list(self.records), self.title)
        write_generation_scalars(self.cfg.get('visualizer'), self.work_dir,
                                 record)
        members = record['ensemble_members']
        _log(f'generation {m}/{self.num_generations} finished: top-1 '
             f'{record["top1"]:.2f}, ensemble M{members[0]}..M{members[-1]} '
             f'{record["ensemble_top1"]:.2f}, mean top-1 prob '
             f'{record["mean_top1_prob"]:.3f} ({record["wall_time_s"]:.0f} s)')

    def _join_plot(self) -> None:
        if self._plotter is not None:
            plotter, self._plotter = self._plotter, None
            plotter.join()


def _past_costs(records: List[dict]) -> dict:
    """What the finished generations cost, for the chain's ETA: the last
    finish (export, predictions), and a student's seconds per epoch."""
    costs = {}
    if records:
        costs['finish_time_s'] = records[-1].get('finish_time_s')
    for record in reversed(records):
        if record['generation'] >= 1 and record.get('epochs'):
            costs['student_epoch_s'] = (
                (record['wall_time_s'] - record.get('build_time_s', 0.0)) /
                record['epochs'])
            break
    return {k: v for k, v in costs.items() if v is not None}


class _GenerationRun(Runner):
    """An ordinary MMEngine Runner that logs one line instead of the
    environment and the config (the chain's first generation logged them)."""

    def _log_env(self, env_cfg: dict) -> None:
        self.logger.info(
            '[chain] environment and config: as logged at the start of the '
            f'chain; this config is dumped to {self.work_dir}')


class _Background(threading.Thread):
    """``fn(*args)`` in a thread; :meth:`join` raises what it raised."""

    def __init__(self, fn, *args: Any):
        super().__init__(name='chain-plot')
        self._call = (fn, args)
        self._error = None
        self.start()

    def run(self) -> None:
        fn, args = self._call
        try:
            fn(*args)
        except Exception as e:  # raised again by join
            self._error = e

    def join(self, timeout=None) -> None:
        super().join(timeout)
        if self._error is not None:
            raise self._error


# Tools build runners from MMEngine's root registry before any default scope
# is set (mmpretrain's tools/train.py does); mmpretrain-scoped lookups go to
# mmpretrain's registry. Be found by both.
RUNNERS.register_module(module=GenerationRunner)
