"""Install mmtolerant: ``pip install -e .`` (see README for the tested versions)."""
import os.path as osp

from setuptools import find_packages, setup


def read_version():
    namespace = {}
    with open(osp.join(osp.dirname(__file__), 'mmtolerant', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


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
    # Ranges, not pins: GPU machines ship their own torch. torch >= 2.6 is
    # required because the plugin keeps checkpoint loading on
    # ``weights_only=True`` and allow-lists what mmengine writes.
    install_requires=[
        'torch>=2.6,<2.15',
        'torchvision>=0.21,<0.30',
        # mmengine imports pkg_resources, which setuptools 81 removed.
        'setuptools<81',
        'mmengine>=0.10.7,<0.11',
        # mmcv is not listed: mmcv-lite and a full mmcv install the same
        # `mmcv` package, and users of OpenMMLab often have a full one. The
        # README's install command adds mmcv-lite (enough for classifiers).
        'mmpretrain>=1.2.0,<1.3',
        'numpy',
        'scikit-learn>=1.0',
        'matplotlib',
    ],
    extras_require={'tests': ['pytest>=7']},
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
