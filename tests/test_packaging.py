"""The installed package declares what requirements/ lists (setup.py reads
those files), so the files and the install cannot drift apart."""
import importlib.metadata
import os

from packaging.requirements import Requirement

from conftest import REPO


def _listed(name):
    with open(os.path.join(REPO, 'requirements', name)) as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return {Requirement(line) for line in lines if line}


def test_the_install_declares_the_requirements_files():
    declared = [Requirement(r)
                for r in importlib.metadata.requires('mmtolerant')]
    runtime = {r for r in declared if r.marker is None}
    by_extra = {}
    for r in declared:
        if r.marker is not None:
            extra = str(r.marker).split('==')[1].strip(' "\'')
            r.marker = None
            by_extra.setdefault(extra, set()).add(r)
    assert {str(r) for r in runtime} == {str(r) for r in _listed(
        'runtime.txt')}
    for extra, name in (('tests', 'tests.txt'), ('mim', 'mminstall.txt'),
                        ('cluster', 'cluster.txt')):
        assert {str(r) for r in by_extra[extra]} == {
            str(r) for r in _listed(name)}, extra


def test_torch_has_no_upper_bound():
    # requirements/runtime.txt: no test has shown a newer torch breaking.
    torch = [r for r in _listed('runtime.txt') if r.name == 'torch']
    assert torch and not any(s.operator in ('<', '<=', '==', '~=')
                             for r in torch for s in r.specifier)
