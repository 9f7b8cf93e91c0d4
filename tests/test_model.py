"""Which parameters are frozen for every frozen_convs, and where VGG-16 weights come from."""

import pytest
import torch
from torch import nn
from torchvision.models import vgg16

from fashiondvc.errors import FashionError
from fashiondvc.net import build_net, load_net, save_net
from fashiondvc.trunk import N_CONVS, feature_shape, load_vgg16, split_vgg


@pytest.fixture(scope="module")
def random_vgg():
    return load_vgg16("random")


@pytest.mark.parametrize("frozen_convs", range(N_CONVS + 1))
def test_frozen_part_holds_exactly_the_first_convs(random_vgg, frozen_convs):
    frozen, trainable = split_vgg(random_vgg, frozen_convs)
    frozen_convs_found = [m for m in frozen if isinstance(m, nn.Conv2d)]
    trainable_convs = [m for m in trainable if isinstance(m, nn.Conv2d)]
    assert len(frozen_convs_found) == frozen_convs
    assert len(trainable_convs) == N_CONVS - frozen_convs
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in trainable.parameters())
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        assert tuple(frozen(x).shape[1:]) == feature_shape(frozen_convs, 64)
        assert trainable(frozen(x)).shape == random_vgg.features(x).shape


def test_frozen_convs_out_of_range():
    with pytest.raises(FashionError, match="model.frozen_convs"):
        split_vgg(vgg16(), 14)


def test_random_weights_are_seeded():
    a, b = load_vgg16("random"), load_vgg16("random")
    assert torch.equal(a.features[0].weight, b.features[0].weight)


def test_weights_from_a_local_file(tmp_path, random_vgg):
    reference = vgg16()
    full, features_only = tmp_path / "full.pt", tmp_path / "features.pt"
    torch.save(reference.state_dict(), full)
    torch.save({k: v for k, v in reference.state_dict().items() if k.startswith("features.")},
               features_only)
    for path in (full, features_only):
        loaded = load_vgg16(str(path))
        assert torch.equal(loaded.features[28].weight, reference.features[28].weight)
        assert not torch.equal(loaded.features[28].weight, random_vgg.features[28].weight)


def test_weights_file_of_the_wrong_architecture_names_the_key(tmp_path):
    path = tmp_path / "other.pt"
    state = {k: v for k, v in vgg16().state_dict().items() if k.startswith("features.")}
    state["features.28.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(FashionError, match="'features.28.weight' has shape"):
        load_vgg16(str(path))


def test_imagenet_weights_resolve_offline_from_torch_home(tmp_path, monkeypatch):
    """torchvision's own cache: $TORCH_HOME/hub/checkpoints/<file name of the weights URL>."""
    from torchvision.models import VGG16_Weights

    reference = vgg16()
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    file_name = VGG16_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    torch.save(reference.state_dict(), checkpoints / file_name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    loaded = load_vgg16("imagenet")
    assert torch.equal(loaded.features[0].weight, reference.features[0].weight)


def test_imagenet_without_cache_or_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("torch.hub.download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network unreachable")))
    with pytest.raises(FashionError, match="model.weights: cannot fetch ImageNet weights"):
        load_vgg16("imagenet")


def test_saved_net_round_trips(tmp_path):
    net = build_net("random", 13, 32, hidden=8, n_labels=3, dropout=0.5, seed=0).eval()
    config = {"labels": ["red", "blue", "black"], "image_size": 32, "weights": "random",
              "frozen_convs": 13, "hidden": 8, "dropout": 0.5}
    save_net(net, tmp_path / "net.pt", config)
    loaded, loaded_config = load_net(tmp_path / "net.pt")
    x = torch.randn(2, *feature_shape(13, 32))
    assert loaded_config == {**config, "head": "flatten", "side_width": 0, "label_pca": 0}
    assert torch.equal(loaded(x), net(x))
