import os.path as osp
from typing import Optional

from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS

from mmtolerant.models.classifiers.plain_classifier import export_plain_model


@HOOKS.register_module()
class ExportModelHook(Hook):
    """Export the trained model as a plain mmpretrain classifier.

    When training ends, writes ``exported_model.pth`` (weights and class
    names only: loads under ``weights_only=True`` with stock mmpretrain) and
    ``exported_model.py`` (a stock ``ImageClassifier`` config) to
    ``out_dir``. For a ``DistillImageClassifier`` the export is the student;
    the teacher is never part of it.

    Args:
        out_dir (str, optional): Where to write; defaults to the work_dir.
    """
    priority = 'LOW'

    def __init__(self, out_dir: Optional[str] = None):
        self.out_dir = out_dir

    @master_only
    def after_train(self, runner) -> None:
        out_dir = self.out_dir or runner.work_dir
        dataset_meta = getattr(runner.train_dataloader.dataset, 'metainfo',
                               None)
        ckpt, cfg = export_plain_model(
            runner.cfg,
            runner.model,
            out_dir,
            dataset_meta=dataset_meta,
            extra_meta=dict(epoch=runner.epoch, iter=runner.iter))
        runner.logger.info(f'[mmtolerant] exported the trained model to '
                           f'{osp.abspath(ckpt)} (config {osp.abspath(cfg)})')
