"""VGG-16 built without torchvision: the same layers, cuts, shapes and outputs as the trunk's."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from searchkit import LABELS, N_PHOTOS
from torchvision.models import VGG16_Weights, vgg16

from fashiondvc import trunk, vgg
from fashiondvc.errors import FashionError
from fashiondvc.index import Featurizer, SearchIndex, build_index, frozen_trunk
from fashiondvc.net import build_net, load_net, save_net
from fashiondvc.sample import make_sample_archive

#: Modules a one-off `fashiondvc search` must not import (each costs 0.5-3 s of start-up).
HEAVY = ("torchvision", "pandas", "matplotlib", "mlflow", "dvc", "sympy", "flask", "scipy")


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """A features-only VGG-16 state_dict file (seeded random weights)."""
    path = tmp_path_factory.mktemp("vgg") / "vgg16_features.pth"
    model = trunk.load_vgg16("random")
    torch.save({f"features.{k}": v for k, v in model.features.state_dict().items()}, path)
    return path


def test_layers_cuts_and_shapes_equal_torchvision_and_trunk():
    assert repr(vgg.features()) == repr(vgg16(weights=None).features)
    layers = vgg16(weights=None).features
    for frozen_convs in range(0, 14):
        assert vgg.cut_index(frozen_convs) == trunk.frozen_cut(layers, frozen_convs)
        for size in (32, 224):
            assert vgg.feature_shape(frozen_convs, size) == trunk.feature_shape(frozen_convs, size)
    with pytest.raises(FashionError, match="frozen_convs"):
        vgg.cut_index(14)
    assert Path(VGG16_Weights.IMAGENET1K_V1.url).name == vgg.IMAGENET_FILE


@pytest.mark.parametrize("frozen_convs", [12, 13])
def test_frozen_part_equals_the_trunk_split_of_the_same_file(weights_file, frozen_convs):
    expected, _ = trunk.split_vgg(trunk.load_vgg16(str(weights_file)), frozen_convs)
    built = frozen_trunk(str(weights_file), frozen_convs)
    assert repr(built) == repr(expected)
    assert not any(p.requires_grad for p in built.parameters()) and not built.training
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(built(x), expected(x))


@pytest.mark.parametrize("frozen_convs", [10, 12, 13])
def test_build_net_from_a_file_equals_the_torchvision_split(weights_file, frozen_convs):
    """The train stage's net: the same layers, weights, trainability and head as when it was
    built from torchvision's whole VGG-16 (`trunk.split_vgg`)."""
    from fashiondvc.net import AttributeNet, trainable_convs

    _, expected = trunk.split_vgg(trunk.load_vgg16(str(weights_file)), frozen_convs)
    built = trainable_convs(str(weights_file), frozen_convs)
    assert repr(built) == repr(expected) and built.training
    for ours, theirs in zip(built.parameters(), expected.parameters(), strict=True):
        assert ours.requires_grad and torch.equal(ours, theirs)
    net = build_net(str(weights_file), frozen_convs, 32, 16, len(LABELS), 0.5, seed=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        before = AttributeNet(expected, trunk.feature_shape(frozen_convs, 32), 16, len(LABELS),
                              0.5)
    assert list(net.state_dict()) == list(before.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(net.state_dict().values(),
                                                 before.state_dict().values(), strict=True))


def test_frozen_part_refuses_a_file_without_the_frozen_convs(tmp_path, weights_file):
    state = torch.load(weights_file, weights_only=True)
    del state["features.24.weight"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(FashionError, match=r"missing key 'features\.24\.weight'"):
        vgg.frozen_part(tmp_path / "cut.pth", 12)
    state = torch.load(weights_file, weights_only=True)
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(FashionError, match="not a VGG-16 state_dict"):
        vgg.frozen_part(tmp_path / "shape.pth", 12)


def test_load_net_without_torchvision_gives_the_saved_network(tmp_path):
    net = build_net("random", 12, 32, 16, len(LABELS), 0.5, seed=3)
    save_net(net, tmp_path / "net.pt", {"labels": LABELS, "image_size": 32, "weights": "random",
                                        "frozen_convs": 12, "hidden": 16, "dropout": 0.5})
    loaded, _ = load_net(tmp_path / "net.pt")
    x = torch.randn(3, 512, 2, 2)
    with torch.inference_mode():
        assert torch.equal(loaded(x), net.eval()(x))


def test_search_command_imports_only_what_a_query_needs(tmp_path, weights_file):
    images = make_sample_archive(tmp_path / "sample", n_images=N_PHOTOS, folder=True) / "images"
    config = {"labels": LABELS, "image_size": 32, "weights": str(weights_file),
              "frozen_convs": 13, "hidden": 16, "dropout": 0.5}
    net = build_net(str(weights_file), 13, 32, 16, len(LABELS), 0.5, seed=0)
    save_net(net, tmp_path / "net.pt", config)
    index, _ = build_index(tmp_path / "net.pt", images, tmp_path / "index")
    photo = images / index.paths[3]
    code = (
        "import json, sys\n"
        "from fashiondvc.cli import main\n"
        f"main(['search', {str(photo)!r}, '--index', {str(tmp_path / 'index')!r},"
        f" '--model', {str(tmp_path / 'net.pt')!r}, '--json'])\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, check=True)
    answer, _, loaded = done.stdout.rstrip().rpartition("\n")
    assert json.loads(loaded) == []
    result = json.loads(answer)
    # the answer equals the in-process one through the torchvision-built trunk
    featurizer = Featurizer(load_net(tmp_path / "net.pt")[0], config,
                            trunk.split_vgg(trunk.load_vgg16("random"), 13)[0])
    probs, _ = featurizer.photo(photo.read_bytes(), photo.name)
    got = {a["name"]: a["probability"] for a in result["attributes"]}
    assert np.allclose([got[name] for name in LABELS], probs, atol=1e-6)
    assert 3 not in [hit["row"] for hit in result["results"]]  # its own bytes left out
    assert len(SearchIndex.load(tmp_path / "index")) == N_PHOTOS
