"""A snapshot run's ``chain.json`` and the refusals that keep two runs, or
a run and a hand edit, from mixing one work_dir (``SnapshotGenerationsHook``,
rank 0, holding the work_dir's lock)."""
import json
import os.path as osp
from typing import Optional

from mmengine.config import Config

from mmtolerant.utils.chain_layout import (CHAIN_FILE, GENERATION_FILE,
                                           PREDICTIONS, ChainLayout)
from mmtolerant.utils.fileio import atomic_write_text

# The checkpoint's entry: the cycle's teacher weights (plain tensors, so a
# resume reads them weights-only) and the time spent in each cycle so far.
CHECKPOINT_KEY = 'snapshot_generations'


def snapshot_record(cfg: Config, num_cycles: int, cycle_epochs: int,
                    first_cycle_loss: Optional[dict], report_k: int) -> dict:
    """``chain.json`` of a snapshot run: its cycles and what the run
    computes (as a chain records each generation)."""
    # Imported here: the runner package imports the hooks.
    from mmtolerant.engine.runner.chain_record import run_record
    return json.loads(json.dumps(dict(
        kind='snapshot',
        num_generations=num_cycles - 1,
        num_cycles=num_cycles,
        cycle_epochs=cycle_epochs,
        first_cycle_loss=first_cycle_loss,
        report_k=report_k,
        run=run_record(cfg)), sort_keys=True))


def check_work_dir(layout: ChainLayout, record: dict, resume: bool) -> None:
    """Refuse a work_dir that holds another run: any run without
    ``--resume``, a snapshot run under other settings (each difference
    named), generation folders without ``chain.json``."""
    from mmtolerant.engine.runner.chain_record import differences
    path = layout.path(CHAIN_FILE)
    work_dir = layout.work_dir
    if osp.isfile(path):
        with open(path) as f:
            try:
                found = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f'{path} is not valid JSON ({e}): use '
                                 'another --work-dir') from None
        if not resume:
            raise ValueError(
                f'{work_dir} already holds a run ({path}): pass --resume '
                'to continue it, or use another --work-dir')
        changes = differences(found, record)
        if changes:
            raise ValueError(
                f'{work_dir} holds a snapshot run under other settings: ' +
                '; '.join(changes[:5]) + '. Resume it with its own settings '
                'or use another --work-dir')
    elif layout.existing():
        raise ValueError(
            f'{work_dir} holds generation folders {layout.existing()} but '
            f'no {CHAIN_FILE}: use another --work-dir')


def check_resumed(layout: ChainLayout, epoch: int, cycle: int,
                  has_entry: bool) -> None:
    """A run resumed at ``epoch`` (in ``cycle``) comes from a checkpoint
    with the snapshot entry, and has the records of the cycles before."""
    if not has_entry:
        raise ValueError(
            f'the checkpoint resumed at epoch {epoch} in {layout.work_dir} '
            f'is not one of a snapshot run (no {CHECKPOINT_KEY!r} entry): '
            "its cycles' teachers are unknown. Use another --work-dir")
    missing = [
        c for c in range(cycle)
        if not osp.isfile(layout.gen_file(c, GENERATION_FILE))
        or not osp.isfile(layout.gen_file(c, PREDICTIONS))
    ]
    if missing:
        raise ValueError(
            f'{layout.work_dir} resumes at epoch {epoch} (cycle {cycle}) '
            f'but the records of cycles {missing} are missing '
            f'(gen_<c>/{GENERATION_FILE} and {PREDICTIONS}): the report '
            'would be incomplete. Use another --work-dir')


def write_record(layout: ChainLayout, record: dict) -> None:
    atomic_write_text(json.dumps(record, indent=2), layout.path(CHAIN_FILE))
