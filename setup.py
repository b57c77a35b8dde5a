"""Install mmtolerant: ``pip install -e .`` (see README for the tested versions)."""
import os.path as osp

from setuptools import find_packages, setup


def read_version():
    namespace = {}
    with open(osp.join(osp.dirname(__file__), 'mmtolerant', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


def read_requirements(name):
    """The requirement lines of ``requirements/<name>`` (comments and
    blank lines left out)."""
    path = osp.join(osp.dirname(__file__), 'requirements', name)
    with open(path) as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line]


with open(osp.join(osp.dirname(__file__), 'README.md'), encoding='utf-8') as f:
    long_description = f.read()

setup(
    name='mmtolerant',
    version=read_version(),
    description='Training image classifiers in generations with a tolerant '
    'teacher: an OpenMMLab (MMEngine/mmpretrain) plugin',
    long_description=long_description,
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=['mmtolerant', 'mmtolerant.*']),
    include_package_data=True,
    # Ranges, not pins: GPU machines ship their own torch (requirements/
    # runtime.txt says why each bound is there).
    install_requires=read_requirements('runtime.txt'),
    extras_require={
        'tests': read_requirements('tests.txt'),
        # A full mmcv, for `mim install -e .` users (mim reads
        # requirements/mminstall.txt itself).
        'mim': read_requirements('mminstall.txt'),
        # submitit, for sweeps on a SLURM cluster (tools/analysis/sweep.py
        # --launcher slurm).
        'cluster': read_requirements('cluster.txt'),
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
