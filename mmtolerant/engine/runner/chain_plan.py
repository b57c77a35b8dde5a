"""Where a chain starts: which generations are finished, which checkpoint
the first unfinished one resumes from, and the refusals that keep a
work_dir's results from being lost or mixed."""
import hashlib
import json
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import List, Optional

from mmengine.config import Config
from mmengine.logging import print_log

from mmtolerant.evaluation.generation_report import load_predictions
from mmtolerant.utils.chain_layout import (CHAIN_FILE, EXPORT_CKPT,
                                           GENERATION_FILE, PREDICTIONS,
                                           TEACHER_FILE, ChainLayout)
from mmtolerant.utils.fileio import atomic_write_text
from mmtolerant.utils.checkpoint import CheckpointLoadError, safe_torch_load
from .chain_record import ChainRecord
from .generation_settings import GenerationSettings


@dataclass
class ChainPlan:
    """What a run of the chain does.

    Attributes:
        finished (list[int]): Generations finished earlier (not retrained).
        resume_from (str, optional): The checkpoint the first unfinished
            generation resumes from.
    """
    finished: List[int] = field(default_factory=list)
    resume_from: Optional[str] = None

    @property
    def first(self) -> int:
        """The first generation to train."""
        return len(self.finished)


def plan_chain(layout: ChainLayout, cfgs: List[Config],
               settings: GenerationSettings, resume: bool,
               config: Optional[str], write: bool = True) -> ChainPlan:
    """Check the work_dir against this run, record the chain in
    ``chain.json`` (unless ``write=False``: a finished chain only
    reported) and say where to start (main process only)."""
    record = ChainRecord.of(cfgs, settings, config)
    _check_work_dir(layout, record, settings, resume)
    if write:
        os.makedirs(layout.work_dir, exist_ok=True)
        record.save(layout.path(CHAIN_FILE))
    finished = [
        m for m in range(settings.num_generations + 1)
        if layout.is_finished(m)
    ]
    plan = ChainPlan(finished=finished)
    if resume and plan.first <= settings.num_generations:
        # Half-written files of a killed write (a checkpoint, the report's
        # plot drawn beside the next generation) are never read; clear them.
        for stale in layout.stale_tmp_files(plan.first):
            os.remove(stale)
        plan.resume_from = latest_checkpoint(layout, plan.first)
        if plan.first >= 1:
            _check_teacher_export(layout, plan.first)
    return plan


def _check_teacher_export(layout: ChainLayout, m: int) -> None:
    """Generation m's teacher export loads; if not, say how to make it
    again from its generation's last checkpoint."""
    teacher = layout.gen_file(m - 1, EXPORT_CKPT)
    try:
        safe_torch_load(teacher)
    except CheckpointLoadError as e:
        raise ValueError(
            f'generation {m} cannot start: its teacher {teacher} cannot be '
            f'read ({e}). To export generation {m - 1} again from its last '
            f'checkpoint, delete {layout.gen_file(m - 1, GENERATION_FILE)} '
            '(and any later generation\'s folder) and pass --resume: '
            f'generation {m - 1} then finishes without training (export, '
            'predictions, record).') from None


def latest_checkpoint(layout: ChainLayout, m: int) -> Optional[str]:
    """The newest checkpoint of generation m that loads, if any: the one
    ``last_checkpoint`` names (MMEngine's CheckpointHook and the
    PreemptionHook write it: an epoch's and a mid-epoch checkpoint have
    numbers that do not compare), else by number."""
    ordered = [path for _, path in layout.checkpoints(m)]
    last = layout.last_checkpoint(m)
    if last in ordered:
        ordered.remove(last)
        ordered.insert(0, last)
    for path in ordered:
        try:
            safe_torch_load(path)
        except CheckpointLoadError as e:
            print_log(f'[chain] skipping unreadable checkpoint: {e}',
                      logger='current', level=30)
            continue
        return path
    return None


def _check_work_dir(layout: ChainLayout, record: ChainRecord,
                    settings: GenerationSettings, resume: bool) -> None:
    """Refuse what would lose or mix results."""
    existing = layout.existing()
    n = settings.num_generations
    started = [
        m for m in existing if layout.is_finished(m) or layout.checkpoints(m)
    ]
    if os.path.isfile(layout.path(CHAIN_FILE)):
        recorded = ChainRecord.load(layout.path(CHAIN_FILE))
        for m in started:
            if m <= n:
                _refuse_changed(layout, record, recorded, settings, m)
    elif started:
        raise ValueError(
            f'{layout.work_dir} holds started generations {started} but no '
            f'{CHAIN_FILE}, which records the settings they were trained '
            'under: this run cannot check that it would continue them '
            f'under the same ones. Restore {layout.path(CHAIN_FILE)} (every '
            'run writes it before training), or start the chain in another '
            '--work-dir; nothing was changed.')
    for m in existing:
        if layout.is_finished(m):
            _check_finished_files(layout, m)
    beyond = [m for m in existing if m > n]
    if beyond:
        raise ValueError(
            f'{layout.work_dir} holds generations {beyond} beyond '
            f'num_generations={n}; resuming would drop them from the '
            f'report. Keep num_generations >= {max(beyond)} or use another '
            '--work-dir.')
    if existing and not resume:
        finished = [m for m in existing if layout.is_finished(m)]
        raise ValueError(
            f'{layout.work_dir} already holds generations {existing} '
            f'(finished: {finished}). Pass --resume to continue the chain, '
            'or choose another --work-dir; nothing was overwritten.')
    for m in range(1, n + 1):
        if layout.is_finished(m) and not layout.is_finished(m - 1):
            raise ValueError(
                f'generation {m} is finished but its teacher, generation '
                f'{m - 1}, is not ({layout.gen_file(m - 1, GENERATION_FILE)}'
                f' is missing): {layout.work_dir} is inconsistent. Restore '
                f'that file, or delete {layout.gen_dir(m)} and the later '
                "generations' folders and pass --resume (generation "
                f'{m - 1} finishes again from its last checkpoint); nothing '
                'was changed.')
    first = next((m for m in range(n + 1) if not layout.is_finished(m)),
                 n + 1)
    leftovers = [m for m in existing if m > first and layout.checkpoints(m)]
    if leftovers:
        raise ValueError(
            f'generations {leftovers} hold checkpoints, but generation '
            f'{first} before them is not finished and will train again: '
            'those checkpoints would belong to another teacher. Delete '
            f'{", ".join(layout.gen_dir(m) for m in leftovers)} to train '
            'them under the new one; nothing was changed.')
    for m in started:
        if 1 <= m <= n and layout.is_finished(m - 1):
            check_teacher(layout, m)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def record_teacher(layout: ChainLayout, m: int, teachers: List[int]) -> None:
    """Record, as generation m starts, the teacher exports it trains under
    (``gen_<m>/teacher.json``; those of ``teachers``, its generations): its
    checkpoints and results belong to those files."""
    exports = [layout.gen_file(g, EXPORT_CKPT) for g in teachers]
    os.makedirs(layout.gen_dir(m), exist_ok=True)
    atomic_write_text(
        json.dumps(dict(teachers=[
            dict(teacher=path, sha256=_sha256(path)) for path in exports
        ]), indent=2), layout.gen_file(m, TEACHER_FILE))


def check_teacher(layout: ChainLayout, m: int) -> None:
    """Refuse to keep started generation m (its checkpoints or results)
    when one of its teachers' exports is no longer the file it trained
    under. Generations started before teachers were recorded are not
    checked."""
    path = layout.gen_file(m, TEACHER_FILE)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        recorded = json.load(f)
    # (One teacher, as chains recorded it before ensembles.)
    entries = recorded.get('teachers', [recorded])
    for entry in entries:
        # Found by its generation: the work_dir may have moved.
        folder = osp.basename(osp.dirname(entry['teacher']))
        teacher = osp.join(layout.work_dir, folder, EXPORT_CKPT)
        now = _sha256(teacher) if os.path.isfile(teacher) else 'missing'
        if now != entry['sha256']:
            state = 'finished' if layout.is_finished(m) else 'started'
            raise ValueError(
                f'generation {m} ({state}) was trained under the teacher '
                f'{teacher} with sha256 {entry["sha256"][:12]}..., but that '
                f'file is now {now[:12]}: its checkpoints and results '
                f'belong to another teacher. Delete {layout.gen_dir(m)} and '
                'the folders of the later generations to train them under '
                'the current one; nothing was changed.')


def _check_finished_files(layout: ChainLayout, m: int) -> None:
    """The files of finished generation m that the chain reads again (its
    record, its test predictions for the report's ensembles) are readable:
    a damaged one is named now, not after the next generation trained."""
    remedy = (f'Restore it, or delete {layout.gen_dir(m)} and the folders '
              'of the later generations and pass --resume to train them '
              'again; nothing was changed.')
    path = layout.gen_file(m, GENERATION_FILE)
    try:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record, dict) or 'top1' not in record:
            raise ValueError('not a generation record')
    except (OSError, ValueError) as e:
        raise ValueError(f'generation {m} is finished but {path} is '
                         f'damaged ({type(e).__name__}: {e}). {remedy}') \
            from None
    path = layout.gen_file(m, PREDICTIONS)
    try:
        load_predictions(path)
    except Exception as e:  # missing, truncated, not an .npz, pickled
        raise ValueError(
            f'generation {m} is finished but its test predictions {path} '
            f'cannot be read ({type(e).__name__}: {e}); the report\'s '
            f'ensembles need them. {remedy}') from None


def _refuse_changed(layout: ChainLayout, record: ChainRecord,
                    recorded: ChainRecord, settings: GenerationSettings,
                    m: int) -> None:
    """Refuse a resume that would keep started generation m (finished, or
    with a checkpoint) trained under other settings than this config gives
    it. Generations not started yet may change: a resume trains them with
    this config."""
    changes = record.changes(recorded, m)
    if not changes:
        return
    shown = '; '.join(changes[:4]) + (
        f'; and {len(changes) - 4} more' if len(changes) > 4 else '')
    if layout.is_finished(m):
        state, remedy = 'finished', ''
    else:
        state = 'started'
        remedy = (f' To train generation {m} anew under these settings, '
                  f'delete {layout.gen_dir(m)};')
    hint = ''
    if settings.tolerant == 'all' and \
            recorded.num_generations != settings.num_generations:
        hint = (" (with tolerant='all' the chain's last generation is not "
                'tolerant, so extending or shrinking the chain changes it)')
    raise ValueError(
        f'{layout.work_dir}: generation {m} ({state}) was trained under '
        f'other settings than this config gives it{hint}: {shown}.{remedy} '
        'Use the config and options that made it, or another --work-dir.')
