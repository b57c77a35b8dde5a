"""What a snapshot run writes at the end of each cycle, as a chain writes
for each generation: the export, the test predictions, ``generation.json``
and the report of the cycles so far (``SnapshotGenerationsHook``)."""
import json
import os.path as osp
from typing import List, Optional

import numpy as np
from mmengine.logging import print_log

from mmtolerant.evaluation.generation_report import (ensemble_scores,
                                                     load_predictions,
                                                     prediction_stats,
                                                     save_predictions,
                                                     topk_accuracy,
                                                     write_report)
from mmtolerant.models.classifiers.plain_classifier import export_plain_model
from mmtolerant.models.losses.utils import loss_name
from mmtolerant.utils.chain_layout import (GENERATION_FILE, PREDICTIONS,
                                           REPORT_MD, ChainLayout)
from mmtolerant.utils.config import plain_data
from mmtolerant.utils.fileio import atomic_write_text
from mmtolerant.utils.model import bare_model
from .generation_finish_hook import predict, test_loader_cfg


def cycle_test_predictions(runner, model, cycle: int):
    """Cycle ``cycle``'s test-set scores and labels on rank 0 ((None, None)
    elsewhere; every rank predicts its share). The run's built validation
    set is reused when the test set is configured alike."""
    cfg = runner.cfg
    test_cfg = test_loader_cfg(cfg)
    built_val = getattr(runner.val_loop, 'dataloader', None)
    dataset = None
    if cfg.get('val_dataloader') is not None and hasattr(
            built_val, 'dataset') and plain_data(test_cfg) == \
            plain_data(cfg.val_dataloader):
        dataset = built_val.dataset
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
    members = [cycle] if cycle == 0 else list(range(1, cycle + 1))
    all_scores = [scores if c == cycle else load_predictions(
        layout.gen_file(c, PREDICTIONS))[0] for c in members]
    teacher_top1 = None
    if cycle > 0:
        teacher_top1 = topk_accuracy(load_predictions(
            layout.gen_file(cycle - 1, PREDICTIONS))[0], labels, 1)
    record = dict(
        generation=cycle,
        trained_with=cycle_role(runner, cycle, first_cycle_loss),
        handed_on=f'last (epoch {runner.epoch + 1})',
        epochs=runner.epoch + 1,
        wall_time_s=round(wall_time_s, 1),
        **prediction_stats(scores, labels, report_k),
        report_k=report_k,
        ensemble_members=members,
        ensemble_top1=topk_accuracy(ensemble_scores(all_scores), labels, 1),
        teacher_top1=teacher_top1,
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
        ('' if teacher_top1 is None else f', teacher {teacher_top1:.2f}') +
        f' (report: {layout.path(REPORT_MD)})',
        logger='current')
    return record
