"""Config helpers shared by the tools."""
import os.path as osp
from typing import Any, Optional

from mmengine.config import Config

DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def plain_data(obj: Any) -> Any:
    """``obj`` as JSON data: dicts with str keys, lists for tuples, other
    objects as their ``str``."""
    if isinstance(obj, dict):
        return {str(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_data(v) for v in obj]
    return obj if isinstance(obj, (int, float, str, bool, type(None))) \
        else str(obj)


def _replace_value(node: Any, old: str, new: str) -> int:
    count = 0
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ('data_root', 'data_prefix') and value == old:
                node[key] = new
                count += 1
            else:
                count += _replace_value(value, old, new)
    elif isinstance(node, list):
        for value in node:
            count += _replace_value(value, old, new)
    return count


def _none_to_dicts(cfg: Config, cfg_options: dict) -> None:
    """A key set below a setting that is None (``generations.teacher_cache
    .dtype=float16`` where ``teacher_cache=None``) turns that setting into
    a dict first: mmengine cannot merge into None."""
    from mmengine.config import ConfigDict
    for key in cfg_options:
        node = cfg._cfg_dict
        for part in str(key).split('.')[:-1]:
            if not isinstance(node, dict) or part not in node:
                break
            if node[part] is None:
                node[part] = ConfigDict()
            node = node[part]


def merge_cfg_options(cfg: Config, cfg_options: Optional[dict]) -> Config:
    """``cfg.merge_from_dict`` that also carries a new top-level ``data_root``
    into the datasets, and lets a key be set below a setting that is None.

    Python configs resolve ``data_root`` when the file is read, so changing
    the top-level key alone would not move the datasets. Every dataset field
    (``data_root``/``data_prefix``) that held the old value gets the new one.
    """
    if not cfg_options:
        return cfg
    _none_to_dicts(cfg, cfg_options)
    old_root = cfg.get('data_root')
    cfg.merge_from_dict(cfg_options)
    new_root = cfg.get('data_root')
    if isinstance(old_root, str) and isinstance(new_root, str) \
            and new_root != old_root:
        for name in DATALOADERS:
            if cfg.get(name) is not None:
                _replace_value(cfg[name], old_root, new_root)
    return cfg


def set_work_dir(cfg: Config, work_dir: Optional[str], config_path: str) -> None:
    """``--work-dir``, else the config's ``work_dir``, else mmpretrain's
    default ``./work_dirs/<config name>``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])


def add_flags(parser, flags) -> None:
    """``store_true`` options: ``flags`` is ``[(name, help), ...]``."""
    for name, help_text in flags:
        parser.add_argument(name, action='store_true', help=help_text)


def parse_run_args(parser):
    """Add what every run tool takes (``--cfg-options``, ``--launcher``,
    ``--local-rank``) and parse; ``LOCAL_RANK`` is set from
    ``--local-rank`` when a launcher gave only that."""
    import os

    from mmengine.config import DictAction
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, e.g. model.lam=0.3 '
        'data_root=/data/fashion_mnist')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch>=2.0)
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args
