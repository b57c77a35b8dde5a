"""What a snapshot run writes at the end of each cycle, as a chain writes
for each generation: the export, the test predictions, ``generation.json``
and the report of the cycles so far (``SnapshotGenerationsHook``)."""
import json
import os.path as osp
from typing import List, Optional

import numpy as np
from mmengine.logging import print_log

from mmtolerant.evaluation.generation_report import (prediction_stats,
                                                     save_predictions,
                                                     write_report)
from mmtolerant.models.classifiers.plain_classifier import export_plain_model
from mmtolerant.models.losses.utils import loss_name
from mmtolerant.utils.chain_layout import (GENERATION_FILE, PREDICTIONS,
                                           REPORT_MD, ChainLayout)
from mmtolerant.utils.fileio import atomic_write_text
from mmtolerant.utils.model import bare_model
from .generation_finish_hook import chain_columns, predict, test_set


def cycle_test_predictions(runner, model, cycle: int):
    """Cycle ``cycle``'s test-set scores and labels on rank 0 ((None, None)
    elsewhere; every rank predicts its share)."""
    test_cfg, dataset = test_set(runner)
    return predict(model, test_cfg, dataset,
                   f'[snapshot] cycle {cycle} test set')


def _head_loss_cfg(runner) -> dict:
    loss = (runner.cfg.model.get('head') or {}).get('loss')
    return loss if isinstance(loss, dict) and 'type' in loss else dict(
        type="the head's loss")


def cycle_role(runner, cycle: int, first_cycle_loss: Optional[dict]) -> str:
    """What cycle ``cycle`` trains with, for its record."""
    head_loss = loss_name(_head_loss_cfg(runner))
    if cycle == 0:
        first = loss_name(first_cycle_loss) if first_cycle_loss \
            else head_loss
        return f'cycle 0, trained on data with {first}'
    model = bare_model(runner.model)
    return (f'student of the snapshot of cycle {cycle - 1} '
            f'(lam={model.lam:g}, {type(model.distill_loss).__name__}'
            f'(tau={getattr(model.distill_loss, "tau", 1.0):g})), '
            f'head loss {head_loss}')


def cycle_records(layout: ChainLayout, upto: int) -> List[dict]:
    """The records of cycles 0..upto that exist."""
    records = []
    for c in range(upto + 1):
        path = layout.gen_file(c, GENERATION_FILE)
        if osp.isfile(path):
            with open(path) as f:
                records.append(json.load(f))
    return records


def write_cycle(runner, layout: ChainLayout, model, cycle: int,
                scores: np.ndarray, labels: np.ndarray, *, num_cycles: int,
                cycle_epochs: int, report_k: int,
                first_cycle_loss: Optional[dict],
                wall_time_s: float) -> dict:
    """Rank 0, at the end of cycle ``cycle``: ``gen_<c>/exported_model
    .pth/.py``, ``test_predictions.npz``, then ``generation.json`` (top-1,
    the ensemble of cycles 1..c, the teacher's top-1, confidence, wall
    time) and the report of the cycles so far. Returns the record."""
    export_plain_model(
        runner.cfg, model, layout.gen_dir(cycle),
        dataset_meta=getattr(runner.train_dataloader.dataset, 'metainfo',
                             None),
        extra_meta=dict(generation=cycle, snapshot_cycle=cycle,
                        epoch=runner.epoch + 1))
    scores = save_predictions(layout.gen_file(cycle, PREDICTIONS), scores,
                              labels)
    columns = chain_columns(layout, cycle, scores, labels,
                            [cycle - 1] if cycle else [])
    record = dict(
        generation=cycle,
        trained_with=cycle_role(runner, cycle, first_cycle_loss),
        handed_on=f'last (epoch {runner.epoch + 1})',
        epochs=runner.epoch + 1,
        wall_time_s=round(wall_time_s, 1),
        **prediction_stats(scores, labels, report_k),
        report_k=report_k,
        **columns,
        snapshot=dict(cycle=cycle, cycle_epochs=cycle_epochs))
    atomic_write_text(json.dumps(record, indent=2),
                      layout.gen_file(cycle, GENERATION_FILE))
    title = (f'Snapshot generations of {osp.basename(runner.work_dir)} '
             f'({num_cycles} cycles of {cycle_epochs} epochs)')
    write_report(layout.work_dir, cycle_records(layout, cycle), title)
    print_log(
        f'[snapshot] cycle {cycle}/{num_cycles - 1} finished: top-1 '
        f"{record['top1']:.2f}, ensemble 1..{cycle} "
        f"{record['ensemble_top1']:.2f}, mean top-1 prob "
        f"{record['mean_top1_prob']:.4f}" +
        ('' if columns['teacher_top1'] is None else
         f", teacher {columns['teacher_top1']:.2f}") +
        f' (report: {layout.path(REPORT_MD)})',
        logger='current')
    return record
