"""mmpretrain's own tools on a chain config: its tools/test.py (what ``mim
test`` runs) builds the GenerationRunner from ``runner_type`` and tests
like ours."""
import json
import os.path as osp

import mmpretrain
import pytest

from conftest import CHAIN, chain_cfg, run_tool
from mmtolerant.engine.runner import GenerationRunner

STOCK_TEST = osp.join(
    osp.dirname(mmpretrain.__file__), '.mim', 'tools', 'test.py')
# The chain fixture's settings, for the tools' command lines.
CHAIN_OPTIONS = ['--cfg-options', 'train_cfg.max_epochs=1',
                 'generations.num_generations=2']


def _top1(path):
    with open(path) as f:
        return json.load(f)['accuracy/top1']


@pytest.mark.slow
@pytest.mark.parametrize('generation', [1, 2])
def test_mmpretrains_test_tool_tests_a_chain_generation(
        chain, python, tmp_path, generation):
    work_dir, records = chain
    # gen_2's export, and gen_1's last training checkpoint (the student
    # alone): each tested as its generation's model, as the chain did.
    checkpoint = (work_dir / 'gen_2' / 'exported_model.pth'
                  if generation == 2 else work_dir / 'gen_1' / 'epoch_1.pth')
    out = tmp_path / 'metrics.json'
    run_tool([python, STOCK_TEST, CHAIN, str(checkpoint), '--work-dir',
              str(work_dir), '--out', str(out), '--out-item', 'metrics',
              *CHAIN_OPTIONS])
    assert _top1(out) == pytest.approx(records[generation]['top1'],
                                       abs=1e-4)


@pytest.mark.slow
def test_our_test_tool_without_checkpoint_tests_the_handed_on_model(
        chain, python, tmp_path):
    work_dir, records = chain
    out = tmp_path / 'metrics.json'
    run_tool([python, 'tools/test.py', CHAIN, '--work-dir', str(work_dir),
              '--out', str(out), *CHAIN_OPTIONS])
    assert _top1(out) == pytest.approx(records[-1]['top1'], abs=1e-4)


def test_testing_an_unfinished_chain_without_checkpoint_says_what_to_do(
        tmp_path):
    (tmp_path / 'gen_0').mkdir()
    with pytest.raises(FileNotFoundError,
                       match=r'not finished its last generation 2 \(finished:'
                       r' none\).*Give a checkpoint.*--resume'):
        GenerationRunner(chain_cfg(tmp_path)).test()


def test_training_refuses_a_load_from(tmp_path):
    runner = GenerationRunner(chain_cfg(tmp_path, load_from='x.pth'))
    with pytest.raises(ValueError, match="use --resume without a path "
                       r"\(got load_from='x.pth'\)"):
        runner.train()
    assert not (tmp_path / 'gen_0').exists()
