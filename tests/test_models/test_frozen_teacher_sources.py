"""Where a frozen teacher comes from: a config of mmpretrain's package
(``mmpretrain::...``), a checkpoint URL (downloaded to torch's hub cache and
loaded weights-only, like a local file), a model of mmpretrain's zoo by
name. Offline: URLs are served from 127.0.0.1, the zoo's download is
replaced by a local copy."""
import functools
import http.server
import os
import os.path as osp
import shutil
import threading

import mmpretrain
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import load_checkpoint
from mmpretrain.apis import get_model
from mmpretrain.apis.model import ModelHub
from mmpretrain.registry import MODELS

from conftest import assert_same_weights, student_cfg, weights
from mmtolerant.models.classifiers.frozen_teacher import FrozenTeacher
from mmtolerant.models.classifiers.teacher_source import (teacher_model_cfg,
                                                          zoo_teacher)
from mmtolerant.utils import CheckpointLoadError, safe_torch_load

PACKAGED_CONFIGS = osp.join(
    osp.dirname(mmpretrain.__file__), '.mim', 'configs')
ZOO_MODEL = 'resnet18_8xb16_cifar10'
# What a load that executed a crafted file's code would say it did.
NOT_PLAIN_WEIGHTS = ('it holds objects that are not plain weights (loading '
                     'it would execute code from the file)')


class RunsCode:
    """Pickles as a call of ``os.system`` that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """torch's hub cache in a fresh folder: no download reaches
    ~/.cache, none is reused from an earlier test."""
    home = tmp_path / 'torch_home'
    monkeypatch.setenv('TORCH_HOME', str(home))
    monkeypatch.setenv('no_proxy', '127.0.0.1')
    assert torch.hub.get_dir() == str(home / 'hub')
    return home


@pytest.fixture
def served(tmp_path, torch_home):
    """A folder served over HTTP on 127.0.0.1: (folder, base URL)."""
    folder = tmp_path / 'served'
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05, ),
                              daemon=True)
    thread.start()
    yield folder, f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def crafted(tmp_path):
    """A checkpoint whose unpickling would create ``marker``."""
    marker = tmp_path / 'code_ran'
    path = tmp_path / 'crafted.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)},
                'meta': RunsCode(marker)}, path)
    return path, marker


@pytest.fixture(scope='module')
def zoo_weights(tmp_path_factory):
    """Random weights of ``ZOO_MODEL`` as built by mmpretrain's own
    ``get_model`` (no weights downloaded), saved as a state dict."""
    torch.manual_seed(0)
    model = get_model(ZOO_MODEL)
    path = tmp_path_factory.mktemp('zoo') / 'zoo_model.pth'
    torch.save(model.state_dict(), path)
    return path


# --- configs of mmpretrain's package ---------------------------------------


def test_a_package_scope_teacher_config_builds_the_packaged_model(tmp_path):
    cfg = Config.fromfile(osp.join(PACKAGED_CONFIGS, 'lenet',
                                   'lenet5_mnist.py'))
    cfg.model.data_preprocessor = cfg.data_preprocessor
    torch.manual_seed(0)
    reference = MODELS.build(cfg.model).eval()
    torch.save(reference.state_dict(), tmp_path / 'lenet.pth')

    teacher = FrozenTeacher(config='mmpretrain::lenet/lenet5_mnist.py',
                            checkpoint=str(tmp_path / 'lenet.pth'))

    assert type(teacher.model.backbone).__name__ == 'LeNet5'
    assert teacher.model.data_preprocessor.mean.flatten().tolist() == [
        pytest.approx(33.46)]
    assert_same_weights(teacher.model.state_dict(), reference.state_dict())
    inputs = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = reference(inputs, mode='tensor')
    assert torch.equal(teacher(inputs), expected)


def test_the_readme_package_config_is_mmpretrains_packaged_file():
    model = teacher_model_cfg('mmpretrain::resnet/resnet18_8xb16_cifar10.py')
    packaged = Config.fromfile(
        osp.join(PACKAGED_CONFIGS, 'resnet', 'resnet18_8xb16_cifar10.py'))
    assert model.backbone == packaged.model.backbone
    assert model.head == packaged.model.head
    assert model.data_preprocessor == packaged.data_preprocessor


@pytest.mark.parametrize('config, error', [
    ('mmpretrain::resnet/no_such_config.py', FileNotFoundError),
    ('nopackage::resnet/resnet18.py', ValueError),
    ('mmpretrain::lenet5_mnist.py', ValueError),
])
def test_a_bad_package_scope_teacher_config_is_named(config, error):
    with pytest.raises(error, match=f'teacher config {config!r}'):
        teacher_model_cfg(config)


# --- checkpoints at a URL ----------------------------------------------------


def test_a_url_teacher_checkpoint_loads_the_served_files_weights(
        digits_teacher, served, torch_home, tmp_path):
    folder, base = served
    shutil.copy(digits_teacher / 'exported_model.pth', folder)
    url = f'{base}/exported_model.pth'
    cfg = student_cfg(digits_teacher, tmp_path,
                      **{'model.teacher.checkpoint': url})
    cfg.model.data_preprocessor = cfg.data_preprocessor

    model = MODELS.build(cfg.model)

    assert model.frozen_teacher.checkpoint == url
    assert_same_weights(model.teacher.state_dict(),
                        weights(digits_teacher / 'exported_model.pth'))
    # Downloaded where MMEngine's own URL loader puts it, under a name
    # of its URL.
    cached = list((torch_home / 'hub' / 'checkpoints').glob('*'))
    assert [p.name.split('-', 1)[1] for p in cached] == ['exported_model.pth']

    # Another server's exported_model.pth is another teacher.
    (folder / 'other').mkdir()
    shutil.copy(digits_teacher / 'epoch_1.pth',
                folder / 'other' / 'exported_model.pth')
    cfg.model.teacher.checkpoint = f'{base}/other/exported_model.pth'
    other = MODELS.build(cfg.model)
    assert_same_weights(other.teacher.state_dict(),
                        weights(digits_teacher / 'epoch_1.pth'))
    assert len(list((torch_home / 'hub' / 'checkpoints').glob('*'))) == 2


def test_a_crafted_checkpoint_served_over_http_is_refused_and_nothing_runs(
        crafted, digits_teacher, served):
    path, marker = crafted
    folder, base = served
    shutil.copy(path, folder)
    url = f'{base}/crafted.pth'

    with pytest.raises(CheckpointLoadError) as local:
        safe_torch_load(str(path))
    with pytest.raises(CheckpointLoadError) as remote:
        FrozenTeacher(config=str(digits_teacher / 'exported_model.py'),
                      checkpoint=url)
    # MMEngine's own loader (load_from, init_cfg=Pretrained) too.
    with pytest.raises(CheckpointLoadError) as by_mmengine:
        load_checkpoint(torch.nn.Linear(1, 1), url)

    assert NOT_PLAIN_WEIGHTS in str(local.value)
    for error in (remote, by_mmengine):
        assert str(error.value).startswith(
            f'refused to load checkpoint {url!r} (downloaded to ')
        assert NOT_PLAIN_WEIGHTS in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize('name', ['missing.pth', 'no_such_folder/'])
def test_a_checkpoint_url_that_gives_no_file_is_named(digits_teacher, served,
                                                      name):
    url = f'{served[1]}/{name}'
    with pytest.raises(CheckpointLoadError,
                       match=f'checkpoint (URL )?{url!r}'):
        FrozenTeacher(config=str(digits_teacher / 'exported_model.py'),
                      checkpoint=url)


def test_a_teacher_checkpoint_of_another_scheme_is_named(digits_teacher):
    with pytest.raises(CheckpointLoadError,
                       match="'torchvision://resnet18' does not exist.*URL"):
        FrozenTeacher(config=str(digits_teacher / 'exported_model.py'),
                      checkpoint='torchvision://resnet18')


# --- models of mmpretrain's zoo ----------------------------------------------


def test_a_zoo_teacher_by_name_has_the_zoo_models_config_and_given_weights(
        zoo_weights):
    teacher = FrozenTeacher.from_cfg(
        dict(model_name=ZOO_MODEL, checkpoint=str(zoo_weights)))

    metainfo = ModelHub.get(ZOO_MODEL)
    assert metainfo.config.filename == osp.join(
        PACKAGED_CONFIGS, 'resnet', f'{ZOO_MODEL}.py')
    assert type(teacher.model.backbone).__name__ == 'ResNet_CIFAR'
    assert teacher.checkpoint == str(zoo_weights)
    assert_same_weights(teacher.model.state_dict(), weights(zoo_weights))


def test_a_zoo_teacher_without_checkpoint_loads_the_published_weights_url(
        zoo_weights, torch_home, monkeypatch):
    fetched = []

    def download(url, dst, *args, **kwargs):  # instead of the network
        fetched.append(url)
        shutil.copy(zoo_weights, dst)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', download)

    teacher = FrozenTeacher.from_cfg(dict(model_name=ZOO_MODEL))

    url = ModelHub.get(ZOO_MODEL).weights
    assert url.startswith('https://download.openmmlab.com/')
    assert fetched == [url]
    assert teacher.checkpoint == url
    assert [p.name.split('-', 1)[1] for p in (
        torch_home / 'hub' / 'checkpoints').glob('*')] == [osp.basename(url)]
    assert_same_weights(teacher.model.state_dict(), weights(zoo_weights))


def test_an_unknown_zoo_model_name_is_named_with_a_pointer_to_list_models():
    with pytest.raises(ValueError,
                       match="'resnet18_8xb16_cifar1000'.*list_models"):
        FrozenTeacher.from_cfg(dict(model_name='resnet18_8xb16_cifar1000'))


def test_a_zoo_model_without_published_weights_needs_a_checkpoint():
    name = 'vit-base-p16_mae-300e-pre_8xb128-coslr-100e_in1k'
    assert ModelHub.get(name).weights is None
    with pytest.raises(CheckpointLoadError,
                       match=f'{name!r} has no published weights'):
        zoo_teacher(name)


@pytest.mark.parametrize('teacher, match', [
    (dict(config='teacher.py', model_name=ZOO_MODEL, checkpoint='t.pth'),
     "exactly one of config and model_name, got config='teacher.py', "
     f"model_name='{ZOO_MODEL}'"),
    (dict(checkpoint='t.pth'), 'or with `model_name`'),
    (dict(model='resnet18'), 'or with `model_name`'),
])
def test_a_teacher_needs_exactly_one_of_config_and_model_name(teacher, match):
    with pytest.raises(ValueError, match=match):
        FrozenTeacher.from_cfg(teacher)
