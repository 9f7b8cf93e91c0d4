"""Which parameters are frozen for every frozen_convs, and where VGG-16 weights come from."""

import copy

import pytest
import torch
from conftest import PROJECT
from torch import nn
from torchvision.models import vgg16

from fashiondvc import backbones
from fashiondvc.choices import N_CONVS
from fashiondvc.config import ExtractorConfig, ModelConfig, TrainConfig
from fashiondvc.errors import FashionError
from fashiondvc.features import FeatureExtractor
from fashiondvc.net import LabelPCA, build_net, load_net, save_net
from fashiondvc.params import load_params, validate

VGG = backbones.get("vgg16")


@pytest.fixture(scope="module")
def random_vgg():
    """torchvision's VGG-16 initialised as ``model.weights: random`` is."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(backbones.RANDOM_INIT_SEED)
        return vgg16().eval()


@pytest.fixture(scope="module")
def random_file(tmp_path_factory, random_vgg):
    """Those weights as a state_dict file (parts built from it are read memory-mapped)."""
    path = tmp_path_factory.mktemp("weights") / "vgg16.pth"
    torch.save(random_vgg.state_dict(), path)
    return str(path)


@pytest.mark.parametrize("frozen_convs", range(N_CONVS + 1))
def test_frozen_part_holds_exactly_the_first_convs(random_vgg, random_file, frozen_convs):
    frozen = backbones.frozen_part(VGG, random_file, frozen_convs)
    trainable = backbones.trainable_part(VGG, random_file, frozen_convs)
    frozen_convs_found = [m for m in frozen if isinstance(m, nn.Conv2d)]
    trainable_convs = [m for m in trainable if isinstance(m, nn.Conv2d)]
    assert len(frozen_convs_found) == frozen_convs
    assert len(trainable_convs) == N_CONVS - frozen_convs
    assert len(frozen) + len(trainable) == len(random_vgg.features)
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    assert all(p.requires_grad for p in trainable.parameters()) and trainable.training
    x = torch.randn(1, 3, 64, 64)
    extractor = FeatureExtractor(ExtractorConfig("vgg16", random_file, frozen_convs, 64, "fp32"),
                                 part=backbones.frozen_part(VGG, random_file, frozen_convs))
    with torch.no_grad():
        assert tuple(frozen(x).shape[1:]) == extractor.shapes()["trunk"]
        torch.testing.assert_close(trainable.eval()(frozen(x)), random_vgg.features(x),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", [-1, 14, 2.5])
def test_frozen_convs_out_of_range(value):
    """Checked once, in params (`Backbone.cut` trusts its input): one line naming it."""
    params = copy.deepcopy(dict(load_params(PROJECT / "params.yaml").raw))
    params["model"] = {**params["model"], "backbone": "vgg16", "frozen_convs": value}
    with pytest.raises(FashionError) as error:
        validate(params)
    message = str(error.value)
    assert message.startswith("model.frozen_convs: ") and "\n" not in message
    assert str(value) in message


def test_random_weights_are_seeded(random_vgg):
    a, b = backbones.frozen_part(VGG, "random", 1), backbones.frozen_part(VGG, "random", 1)
    assert torch.equal(a[0].weight, b[0].weight)
    assert torch.equal(a[0].weight, random_vgg.features[0].weight)
    rest = backbones.trainable_part(VGG, "random", 12)
    assert torch.equal(rest[0].weight, random_vgg.features[28].weight)


def test_weights_from_a_local_file(tmp_path, random_vgg):
    reference = vgg16()
    full, features_only = tmp_path / "full.pt", tmp_path / "features.pt"
    torch.save(reference.state_dict(), full)
    torch.save({k: v for k, v in reference.state_dict().items() if k.startswith("features.")},
               features_only)
    for path in (full, features_only):
        frozen = backbones.frozen_part(VGG, str(path), 13)
        rest = backbones.trainable_part(VGG, str(path), 12)
        assert torch.equal(frozen[28].weight, reference.features[28].weight)
        assert torch.equal(rest[0].weight, reference.features[28].weight)
        assert not torch.equal(frozen[28].weight, random_vgg.features[28].weight)


def test_weights_file_of_the_wrong_architecture_names_the_key(tmp_path):
    path = tmp_path / "other.pt"
    state = {k: v for k, v in vgg16().state_dict().items() if k.startswith("features.")}
    state["features.28.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(FashionError, match="'features.28.weight' has shape"):
        backbones.frozen_part(VGG, str(path), 13)
    with pytest.raises(FashionError, match="'features.28.weight' has shape"):
        backbones.trainable_part(VGG, str(path), 12)


def test_imagenet_weights_resolve_offline_from_torch_home(tmp_path, monkeypatch):
    """torchvision's own cache: $TORCH_HOME/hub/checkpoints/<file name of the weights URL>."""
    from torchvision.models import VGG16_Weights

    reference = vgg16()
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    file_name = VGG16_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    torch.save(reference.state_dict(), checkpoints / file_name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("torch.hub.download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network unreachable")))
    assert backbones.weights_file(VGG, "imagenet") == checkpoints / file_name
    loaded = backbones.frozen_part(VGG, "imagenet", 1)
    assert torch.equal(loaded[0].weight, reference.features[0].weight)


def test_imagenet_without_cache_or_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("torch.hub.download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network unreachable")))
    assert backbones.weights_file(VGG, "imagenet") is None
    with pytest.raises(FashionError, match="model.weights: cannot fetch ImageNet weights") as e:
        backbones.frozen_part(VGG, "imagenet", 1)
    assert "network unreachable" in str(e.value) and "\n" not in str(e.value)


def model_config(head="flatten", inputs=None, label_pca=0) -> ModelConfig:
    """A 32-px, frozen_convs=13 network config on random weights (trunk (512, 1, 1))."""
    shapes = {"trunk": (512, 1, 1), **(inputs or {})}
    return ModelConfig(labels=("red", "blue", "black"),
                       extractor=ExtractorConfig("vgg16", "random", 13, 32, "fp32"),
                       input_shapes=shapes, train=TrainConfig(k=2, lr=1e-3, epochs=1,
                                                              batch_size=4),
                       head=head, hidden=8, dropout=0.5, label_pca=label_pca)


@pytest.mark.parametrize("head, inputs, label_pca", [
    ("flatten", None, 0), ("gap", {"colour": (7,)}, 0), ("multiscale", {"side": (6,)}, 2)])
def test_saved_net_round_trips(tmp_path, head, inputs, label_pca):
    config = model_config(head, inputs, label_pca)
    pca = None
    if label_pca:
        targets = (torch.rand(20, 3) < 0.5).float()
        pca = LabelPCA.fit(targets, torch.ones_like(targets, dtype=torch.bool), label_pca)
    net = build_net(config, seed=0, label_pca=pca).eval()
    save_net(net, tmp_path / "net.pt", config)
    loaded, loaded_config = load_net(tmp_path / "net.pt")
    x = {name: torch.randn(2, *shape) for name, shape in config.input_shapes.items()}
    assert loaded_config == config
    assert not loaded.training
    assert torch.equal(loaded(x), net(x))
    # the label-PCA decode is a matmul with a memory-mapped buffer: last-bit GEMM differences
    # between memory layouts are possible (seen once under load), nothing larger
    assert torch.allclose(loaded.probabilities(loaded(x)), net.probabilities(net(x)),
                          rtol=0, atol=1e-6)


def test_regions_head_pools_bands_quadrants_and_the_centre():
    from fashiondvc.net import REGION_GRIDS, centre_prior

    prior = centre_prior(7, 7)
    assert prior.sum().item() == pytest.approx(1.0) and prior.argmax().item() == 24  # centre
    assert torch.allclose(prior, prior.flip(0)) and torch.allclose(prior, prior.flip(1))
    shapes = {"trunk": (4, 6, 6)}
    config = ModelConfig(labels=("red", "blue"),
                         extractor=ExtractorConfig("vgg16", "random", 13, 192, "fp32"),
                         input_shapes=shapes, train=TrainConfig(k=1, lr=1e-3, epochs=1,
                                                                batch_size=4),
                         head="regions", hidden=8, dropout=0.0)
    net = build_net(config, seed=0).eval()
    x = torch.zeros(1, 4, 6, 6)
    x[0, 0, 4:, :] = 1.0  # channel 0 lit in the bottom third only
    net.norm = nn.Identity()  # look at the pooled values themselves
    pooled = net.pooled({"trunk": x})[0]
    n_regions = 2 + sum(r * c for r, c in REGION_GRIDS) + 1
    assert pooled.shape == (n_regions * 4,)
    gap, gmp, bands = pooled[0:4], pooled[4:8], pooled[8:20].reshape(4, 3)
    assert gap[0] == pytest.approx(1 / 3) and gmp[0] == 1
    assert torch.allclose(bands[0], torch.tensor([0.0, 0.0, 1.0]))  # top, middle, bottom
    quadrants = pooled[20:36].reshape(4, 2, 2)[0]
    assert torch.allclose(quadrants, torch.tensor([[0.0, 0.0], [2 / 3, 2 / 3]]))
    centre = pooled[36:40]
    assert 0 < centre[0] < 1 / 3  # the lit band is off-centre: weighted below its mean


def test_regions_head_round_trips(tmp_path):
    config = model_config("regions", {"colour": (5,)})
    net = build_net(config, seed=0).eval()
    save_net(net, tmp_path / "net.pt", config)
    loaded, _ = load_net(tmp_path / "net.pt")
    x = {name: torch.randn(3, *shape) for name, shape in config.input_shapes.items()}
    assert torch.equal(loaded(x), net(x))
