"""Reading chains' work_dirs for the analysis tools: labels, generation
files, predictions and reports, and the errors that name what is missing."""
import json
import re

import numpy as np
import pytest

from mmtolerant.evaluation.chain_results import (chain_labels,
                                                 generation_files,
                                                 load_chain_predictions,
                                                 load_chain_report)


def test_labels_default_to_the_work_dirs_folder_names():
    assert chain_labels(['runs/strict/', 'runs/tsd']) == ['strict', 'tsd']
    assert chain_labels(['a', 'b'], ['x', 'y']) == ['x', 'y']
    with pytest.raises(ValueError, match='2 work_dirs but 1 labels'):
        chain_labels(['a', 'b'], ['x'])


def test_predictions_are_read_per_generation_in_order(tmp_path):
    saved = {}
    for m in (10, 2, 0):
        (tmp_path / f'gen_{m}').mkdir()
        scores = np.random.default_rng(m).random((4, 3)).astype(np.float32)
        labels = np.array([0, 1, 2, m % 3], dtype=np.int64)
        np.savez(tmp_path / f'gen_{m}' / 'test_predictions.npz',
                 scores=scores, labels=labels)
        saved[m] = (scores, labels)
    (tmp_path / 'gen_5').mkdir()  # started, not finished: no predictions
    loaded = load_chain_predictions(str(tmp_path))
    assert [m for m, _ in loaded] == [0, 2, 10]
    for m, (scores, labels) in loaded:
        np.testing.assert_array_equal(scores, saved[m][0])
        np.testing.assert_array_equal(labels, saved[m][1])


def test_a_work_dir_without_the_files_is_named_in_the_error(tmp_path):
    (tmp_path / 'gen_0').mkdir()
    with pytest.raises(FileNotFoundError,
                       match=re.escape(
                           f'{tmp_path}: no gen_<m>/exported_model.pth')):
        generation_files(str(tmp_path), 'exported_model.pth')
    with pytest.raises(FileNotFoundError, match='generations.json does not'):
        load_chain_report(str(tmp_path))


def test_the_report_is_the_chains_generations_json(tmp_path):
    records = [dict(generation=0, top1=90.0), dict(generation=1, top1=91.0)]
    (tmp_path / 'generations.json').write_text(json.dumps(records))
    assert load_chain_report(str(tmp_path)) == records
