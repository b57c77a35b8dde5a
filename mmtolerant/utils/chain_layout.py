"""Every path of a chain's work_dir, named in one place::

    work_dir/
        chain.json                 what each generation is trained under
        chain.lock                 held by the run using the work_dir
        generations.json/.md/.png  the report of the generations so far
        vis_data/                  the report's numbers for the visualizer
                                   backends (engine/runner/chain_visualizer)
        gen_<m>/                   generation m: an ordinary MMEngine run
            epoch_<n>.pth, iter_<n>.pth, best_*.pth, <timestamp>/ (logs)
            last_checkpoint        names the newest checkpoint
            exported_model.pth/.py the handed-on model, as stock mmpretrain
            test_predictions.npz   its softmax scores on the test set
            teacher.json           (m >= 1) the teacher exports it trains under
            generation.json        its record; written last: m is finished
"""
import glob
import os
import os.path as osp
import re
from typing import List, Optional, Tuple

from .fileio import TMP_MARK

CHAIN_FILE = 'chain.json'
LOCK_FILE = 'chain.lock'
GENERATION_FILE = 'generation.json'
EXPORT_CKPT = 'exported_model.pth'
LAST_CHECKPOINT = 'last_checkpoint'  # MMEngine's pointer to the newest
EXPORT_CFG = 'exported_model.py'
PREDICTIONS = 'test_predictions.npz'
TEACHER_FILE = 'teacher.json'
REPORT_JSON = 'generations.json'
REPORT_MD = 'generations.md'
REPORT_PNG = 'generations.png'


def generation_paths(work_dir: str, name: str = '') -> List[Tuple[int, str]]:
    """``[(m, path)]`` of the existing ``work_dir/gen_<m>/<name>``, by m
    (with ``name=''``: the generation folders themselves)."""
    found = []
    for path in glob.glob(osp.join(work_dir, 'gen_*', name)):
        gen_dir = osp.dirname(path) if name else path.rstrip(os.sep)
        match = re.fullmatch(r'gen_(\d+)', osp.basename(gen_dir))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


class ChainLayout:
    """The paths of the chain in ``work_dir``."""

    def __init__(self, work_dir: str):
        self.work_dir = osp.abspath(work_dir)

    def path(self, name: str) -> str:
        """A file of the chain itself (``CHAIN_FILE``, ``REPORT_*``)."""
        return osp.join(self.work_dir, name)

    def gen_dir(self, m: int) -> str:
        return osp.join(self.work_dir, f'gen_{m}')

    def gen_file(self, m: int, name: str) -> str:
        """A file of generation m (``EXPORT_*``, ``PREDICTIONS``,
        ``GENERATION_FILE``)."""
        return osp.join(self.gen_dir(m), name)

    def generation_of(self, path: str) -> Optional[int]:
        """m when ``path`` lies in ``gen_<m>/`` of this work_dir."""
        rel = osp.relpath(osp.abspath(path), self.work_dir)
        match = re.match(r'gen_(\d+)' + re.escape(os.sep), rel)
        return int(match.group(1)) if match else None

    def existing(self) -> List[int]:
        """The generations that have a folder."""
        return [m for m, _ in generation_paths(self.work_dir)]

    def is_finished(self, m: int) -> bool:
        return osp.isfile(self.gen_file(m, GENERATION_FILE))

    def checkpoints(self, m: int) -> List[Tuple[int, str]]:
        """``[(epoch or iteration, path)]`` of generation m's training
        checkpoints (``epoch_<n>.pth``, ``iter_<n>.pth``), newest first."""
        found = []
        for path in glob.glob(osp.join(self.gen_dir(m), '*.pth')):
            name = re.fullmatch(r'(epoch|iter)_(\d+)\.pth', osp.basename(path))
            if name:
                found.append((int(name.group(2)), path))
        return sorted(found, reverse=True)

    def last_checkpoint(self, m: int) -> Optional[str]:
        """The checkpoint of generation m that its ``last_checkpoint`` file
        names (by file name: the work_dir may have moved since), if that
        file exists and names one in its folder."""
        try:
            with open(self.gen_file(m, LAST_CHECKPOINT)) as f:
                name = osp.basename(f.read().strip())
        except OSError:
            return None
        path = self.gen_file(m, name)
        return path if name and osp.isfile(path) else None

    def best_checkpoints(self, m: int) -> List[str]:
        """Generation m's ``best_*.pth``, oldest first."""
        return sorted(glob.glob(osp.join(self.gen_dir(m), 'best_*.pth')),
                      key=osp.getmtime)

    def stale_tmp_files(self, m: int) -> List[str]:
        """Half-written files of a killed write in generation m's folder
        and in the chain's own (its report)."""
        return [
            path for folder in (self.work_dir, self.gen_dir(m))
            for path in glob.glob(osp.join(folder, f'*{TMP_MARK}*'))
        ]
