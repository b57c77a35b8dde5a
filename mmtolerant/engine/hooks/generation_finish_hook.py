"""The end of a chain's generation, as one hook."""
import copy
import json
import os.path as osp
import time
from typing import Optional, Sequence, Tuple

import numpy as np
from mmengine.config import Config
from mmengine.dist import collect_results, is_main_process
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS

from mmtolerant.datasets import innermost_dataset
from mmtolerant.evaluation.generation_report import (
    ensemble_scores, load_predictions, predict_scores, prediction_stats,
    save_predictions, topk_accuracy)
from mmtolerant.models.classifiers.plain_classifier import export_plain_model
from mmtolerant.utils.chain_layout import (GENERATION_FILE, PREDICTIONS,
                                           ChainLayout)
from mmtolerant.utils.checkpoint import extract_state_dict, safe_torch_load
from mmtolerant.utils.config import plain_data
from mmtolerant.utils.distributed import agree, use_rank0_buffers
from mmtolerant.utils.fileio import atomic_write_text
from mmtolerant.utils.model import bare_model
from mmtolerant.utils.progress import track
from .final_val_predictions import FinalValPredictions


def test_loader_cfg(cfg: Config):
    loader_cfg = cfg.get('test_dataloader') or cfg.get('val_dataloader')
    if loader_cfg is None:
        raise ValueError('the chain report needs a test_dataloader (or '
                         'val_dataloader) in the config')
    return copy.deepcopy(loader_cfg)


def train_eval_loader_cfg(cfg: Config):
    """The training set seen through the test pipeline (for
    ``generations.report_train``)."""
    test_cfg = test_loader_cfg(cfg)
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    if (loader_cfg.get('dataset') or {}).get('type') == \
            'AugmentationViews':  # set up by teacher_cache.views
        loader_cfg.dataset = loader_cfg.dataset.dataset
        loader_cfg.sampler = dict(type='DefaultSampler', shuffle=False)
    dataset = loader_cfg.get('dataset')
    if not isinstance(dataset, dict) or 'pipeline' not in dataset \
            or 'pipeline' not in test_cfg.get('dataset', {}):
        name = dataset.get('type') if isinstance(dataset, dict) \
            else dataset
        raise ValueError(
            'generations.report_train needs train_dataloader.dataset and '
            'test_dataloader.dataset to have a `pipeline` (a wrapped '
            f'dataset such as {name!r} is not supported); set '
            'report_train=False')
    dataset['pipeline'] = test_cfg.dataset.pipeline
    loader_cfg['batch_size'] = test_cfg.get('batch_size',
                                            loader_cfg.batch_size)
    loader_cfg.pop('batch_sampler', None)
    # Every training sample is predicted, also where training drops the
    # last incomplete batch.
    loader_cfg['drop_last'] = False
    return loader_cfg


def test_set(runner):
    """The run's test loader config, and its built validation set when the
    test set is configured alike (predicted from it with no second parse
    of its files), else None."""
    cfg = runner.cfg
    test_cfg = test_loader_cfg(cfg)
    built_val = getattr(runner.val_loop, 'dataloader', None)
    same_as_val = cfg.get('val_dataloader') is not None and \
        plain_data(test_cfg) == plain_data(cfg.val_dataloader)
    dataset = built_val.dataset if same_as_val and hasattr(
        built_val, 'dataset') else None
    return test_cfg, dataset


def chain_columns(layout: ChainLayout, m: int, scores: np.ndarray,
                  labels: np.ndarray, teachers: Sequence[int]) -> dict:
    """Generation m's ensemble of the students M1..Mm (M0 alone for m = 0)
    and its teacher's top-1, from the earlier generations' saved
    predictions (``scores``: m's own)."""
    members = [m] if m == 0 else list(range(1, m + 1))
    all_scores = [
        scores if g == m else load_predictions(
            layout.gen_file(g, PREDICTIONS))[0] for g in members
    ]
    teacher_top1: Optional[float] = None
    if teachers:
        # The teacher's prediction: its generation's (the average of its
        # members' for an ensemble, as EnsembleTeacher predicts).
        teacher_top1 = topk_accuracy(
            ensemble_scores([
                load_predictions(layout.gen_file(g, PREDICTIONS))[0]
                for g in teachers
            ]), labels, 1)
    return dict(
        ensemble_members=members,
        ensemble_top1=topk_accuracy(ensemble_scores(all_scores), labels, 1),
        teacher_top1=teacher_top1)


def predict(model, loader_cfg, dataset=None, desc='[chain] predictions'):
    """Scores and labels of ``model`` on a dataloader's samples, each rank
    predicting its share; gathered in dataset order on rank 0 ((None,
    None) elsewhere). ``dataset``: an already built dataset to use instead
    of building the config's again. Rank 0 logs its progress as ``desc``
    (a line about every 10%, when slow, and a last one)."""
    from mmengine.runner import Runner
    loader_cfg = copy.deepcopy(loader_cfg)
    loader_cfg.sampler = dict(type='DefaultSampler', shuffle=False)
    if dataset is not None:
        # build_dataloader deep-copies it: a copy of the parsed data (one
        # array when serialised, mmengine's default), not a parse.
        loader_cfg.dataset = dataset
    loader = Runner.build_dataloader(loader_cfg)
    scores, labels = predict_scores(model, track(loader, desc))
    rows = collect_results(list(zip(scores, labels)), len(loader.dataset),
                           device='cpu')
    if rows is None:
        return None, None
    return (np.stack([r[0] for r in rows]),
            np.array([r[1] for r in rows], dtype=np.int64))


@HOOKS.register_module()
class GenerationFinishHook(Hook):
    """Ends generation m of a chain: hands on its weights, exports them,
    predicts the test set and writes ``gen_<m>/generation.json``.

    The GenerationRunner adds it to every generation. When the training run
    ends, after MMEngine's own hooks (all ranks take part in the
    predictions; rank 0 writes):

    1. the handed-on weights: the final ones, or with ``hand_on='best'``
       the newest ``best_*.pth`` loaded into the model;
    2. their test-set scores: kept from the validation pass that ended
       training when the test set is the validation set and that pass
       validated exactly these weights (see :class:`FinalValPredictions`),
       else a test pass (on the built validation set when the loaders are
       configured alike); with ``report_train`` also the training set
       through the test pipeline;
    3. ``exported_model.pth/.py``, ``test_predictions.npz`` and last
       ``generation.json`` (accuracy, secondary information, the ensemble
       of the students so far, the teacher's accuracy, timings), which
       marks the generation finished.

    Args:
        generation (int): m.
        chain_dir (str): The chain's work_dir.
        role (str): What the generation is, for its record.
        hand_on (str): ``'last'`` or ``'best'``.
        report_k (int): K of the top-K secondary mass.
        report_train (bool): Also report the training set.
        teachers (Sequence[int], optional): The generations that teach
            this one (several: an ensemble teacher), whose saved test
            predictions give the teacher's top-1. Default: generation m-1.
    """
    # Last, after MMEngine's own hooks have ended the run (the logger's
    # after_run closes the visualizer): generation.json is the last file.
    priority = 'LOWEST'

    def __init__(self, generation: int, chain_dir: str, role: str = '',
                 hand_on: str = 'last', report_k: int = 3,
                 report_train: bool = False,
                 teachers: Optional[Sequence[int]] = None):
        self.generation = generation
        self.teachers = list(
            teachers if teachers is not None else
            ([generation - 1] if generation else []))
        self.layout = ChainLayout(chain_dir)
        self.role = role
        self.hand_on = hand_on
        self.report_k = report_k
        self.report_train = report_train
        self.final_val = FinalValPredictions()
        self._timing = dict(started=None, build_time_s=None)

    def before_run(self, runner) -> None:
        # What the GenerationRunner told this run (before a resume loads
        # the message hub of its checkpoint).
        self._timing = {key: runner.message_hub.get_info(f'chain/{key}')
                        for key in ('started', 'build_time_s')}

    # The validation pass that ends training is kept by final_val.
    def before_train(self, runner) -> None:
        self.final_val.training = True

    def before_val_epoch(self, runner) -> None:
        self.final_val.start(runner)

    def after_val_iter(self, runner, batch_idx, data_batch=None,
                       outputs=None) -> None:
        self.final_val.add(outputs)

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.final_val.finish(runner)

    def after_run(self, runner) -> None:
        if not self.final_val.training:  # a validation or test run
            return
        started = time.time()
        parts = {}
        model, handed_on = self._handed_on_model(runner)
        (scores, labels), source = self._test_predictions(runner, model)
        parts['test_predictions'] = time.time() - started
        train_stats = {}
        if self.report_train:
            train_stats = self._train_stats(runner, model)
            parts['report_train'] = time.time() - started - sum(
                parts.values())
        if not is_main_process():
            return
        m = self.generation
        export_plain_model(
            runner.cfg, model, self.layout.gen_dir(m),
            dataset_meta=getattr(runner.train_dataloader.dataset, 'metainfo',
                                 None),
            extra_meta=dict(generation=m, handed_on=handed_on))
        parts['export'] = time.time() - started - sum(parts.values())
        scores = save_predictions(self.layout.gen_file(m, PREDICTIONS),
                                  scores, labels)
        record = dict(
            generation=m,
            trained_with=self.role,
            handed_on=handed_on,
            epochs=runner.epoch,
            wall_time_s=round(started - (self._timing['started'] or started),
                              1),
            **prediction_stats(scores, labels, self.report_k),
            **train_stats,
            report_k=self.report_k,
            **chain_columns(self.layout, m, scores, labels, self.teachers))
        # What the chain adds to an ordinary mmpretrain run: building the
        # runner (teacher included) and this step.
        record['build_time_s'] = round(self._timing['build_time_s'] or 0.0,
                                       2)
        record['finish_time_s'] = round(time.time() - started, 2)
        parts['statistics'] = time.time() - started - sum(parts.values())
        record['finish_parts_s'] = {k: round(v, 3) for k, v in parts.items()}
        record['test_predictions_from'] = source
        atomic_write_text(json.dumps(record, indent=2),
                          self.layout.gen_file(m, GENERATION_FILE))

    def _handed_on_model(self, runner):
        model = bare_model(runner.model)
        if self.hand_on == 'best':
            best = self.layout.best_checkpoints(self.generation)
            if not best:
                raise FileNotFoundError(
                    f'generations.hand_on="best" but generation '
                    f'{self.generation} saved no best checkpoint: set '
                    'default_hooks.checkpoint.save_best')
            # Every rank loads (and fails) alike: MMEngine's strict
            # load_checkpoint raises on rank 0 only.
            model.load_state_dict(
                extract_state_dict(safe_torch_load(best[-1]), best[-1]),
                strict=True)
            return model, osp.basename(best[-1])
        return model, f'last (epoch {runner.epoch})'

    def _test_predictions(self, runner, model) -> Tuple[tuple, str]:
        """The handed-on model's test-set scores and labels (rank 0), and
        where they come from."""
        cfg = runner.cfg
        test_cfg, dataset = test_set(runner)
        # Under DDP each rank validated its own copy: the same weights, but
        # BatchNorm statistics of its own share of the data unless buffers
        # are broadcast. The report describes rank 0's model, the exported.
        ranks_agree = use_rank0_buffers(model)
        # A final validation in autocast, or of other weights than those
        # handed on (EMA), is not the handed-on model's float32 prediction.
        fp16_val = bool((cfg.get('val_cfg') or {}).get('fp16'))
        if self.hand_on == 'last' and dataset is not None and ranks_agree \
                and not fp16_val and agree(
                    self.final_val.describes(runner, model)):
            kept = self.final_val.gather(len(dataset))
            if agree(kept is not None):
                return (kept if is_main_process() else (None, None)), \
                    'final validation pass'
        return predict(model, test_cfg, dataset,
                       f'[chain] M{self.generation} test set'), 'test pass'

    def _train_stats(self, runner, model) -> dict:
        """Top-1 and mean top-1 probability on the training set seen
        through the test pipeline, from the run's built training set with
        the test pipeline swapped in (no second parse of its files)."""
        from mmengine.dataset import BaseDataset, Compose
        loader_cfg = train_eval_loader_cfg(runner.cfg)
        built = innermost_dataset(runner.train_dataloader.dataset)
        dataset = None
        if isinstance(built, BaseDataset) and built._fully_initialized:
            dataset = copy.copy(built)
            dataset.pipeline = Compose(loader_cfg.dataset.pipeline)
        scores, labels = predict(
            model, loader_cfg, dataset,
            f'[chain] M{self.generation} training set (report_train)')
        if scores is None:
            return {}
        stats = prediction_stats(scores, labels, self.report_k)
        return dict(train_top1=stats['top1'],
                    train_mean_top1_prob=stats['mean_top1_prob'])
