"""The backbones: VGG-16 built without torchvision has torchvision's layers, cuts, shapes and
outputs; every backbone's entry matches its torchvision model."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models
from searchkit import LABELS, N_PHOTOS
from torch import nn
from torchvision.models import VGG16_Weights, vgg16

from fashiondvc import backbones
from fashiondvc.choices import BACKBONES, N_CONVS
from fashiondvc.config import ExtractorConfig, ModelConfig, TrainConfig
from fashiondvc.errors import FashionError
from fashiondvc.features import FeatureExtractor
from fashiondvc.index import SearchIndex, build_index
from fashiondvc.net import AttributeNet, build_net, load_net, save_net
from fashiondvc.predictor import Predictor
from fashiondvc.sample import make_sample_archive

#: Modules a one-off `fashiondvc search` must not import (each costs 0.5-3 s of start-up).
HEAVY = ("torchvision", "pandas", "matplotlib", "mlflow", "dvc", "sympy", "flask", "scipy")
VGG = backbones.get("vgg16")


def torchvision_vgg(weights: Path | None = None) -> nn.Module:
    """torchvision's VGG-16 as ``model.weights: random`` initialises it, or with a file's
    features.* weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(backbones.RANDOM_INIT_SEED)
        model = vgg16(weights=None)
    if weights is not None:
        model.load_state_dict(torch.load(weights, weights_only=True), strict=False)
    return model.eval()


def torchvision_cut(features: nn.Sequential, frozen_convs: int) -> int:
    """Where the trainable layers start in torchvision's ``vgg16().features``: past the ReLU
    of the last frozen conv, and past a max-pool right after it."""
    if frozen_convs == 0:
        return 0
    convs = [i for i, layer in enumerate(features) if isinstance(layer, nn.Conv2d)]
    cut = convs[frozen_convs - 1] + 2
    return cut + 1 if cut < len(features) and isinstance(features[cut], nn.MaxPool2d) else cut


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """A features-only VGG-16 state_dict file (torchvision's layers, seeded random weights)."""
    path = tmp_path_factory.mktemp("vgg") / "vgg16_features.pth"
    model = torchvision_vgg()
    torch.save({f"features.{k}": v for k, v in model.features.state_dict().items()}, path)
    return path


def config_for(weights: str, frozen_convs: int, shape: tuple[int, ...], *, hidden: int = 16,
               head: str = "flatten") -> ModelConfig:
    return ModelConfig(labels=tuple(LABELS),
                       extractor=ExtractorConfig("vgg16", weights, frozen_convs, 32, "fp32"),
                       input_shapes={"trunk": shape},
                       train=TrainConfig(k=2, lr=1e-3, epochs=1, batch_size=16),
                       head=head, hidden=hidden, dropout=0.5)


def test_layers_cuts_and_shapes_equal_torchvision(weights_file):
    layers = vgg16(weights=None).features
    assert repr(backbones.vgg16_layers()) == repr(layers)
    assert repr(VGG.meta_layers()) == repr(layers)
    assert all(p.is_meta for p in backbones.vgg16_layers().parameters())
    with torch.device("meta"):
        meta = vgg16(weights=None).features
    for frozen_convs in range(0, N_CONVS + 1):
        cut = torchvision_cut(layers, frozen_convs)
        assert VGG.cut(frozen_convs) == cut
        # side features: average and max of every max-pool inside the frozen part
        pools = [i for i in range(cut - 1) if isinstance(layers[i], nn.MaxPool2d)]
        side = 2 * sum(layers[i - 2].out_channels for i in pools)
        part = backbones.frozen_part(VGG, str(weights_file), frozen_convs)
        assert part.taps == tuple(pools)
        for size in (32, 224):
            config = ExtractorConfig("vgg16", str(weights_file), frozen_convs, size, "fp32")
            shapes = FeatureExtractor(config, part=part).shapes()
            expected = tuple(meta[:cut](torch.empty(1, 3, size, size, device="meta")).shape)
            assert shapes["trunk"] == expected[1:]
            assert shapes["side"] == (side,)
    assert Path(VGG16_Weights.IMAGENET1K_V1.url).name == VGG.imagenet_file
    assert VGG.weights == "VGG16_Weights.IMAGENET1K_V1"


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_every_backbone_entry_matches_its_torchvision_model(name):
    """Layers, unit count, weights file name; random frozen + trainable parts compose to the
    torchvision model's conv part (its randomly initialised copy, seeded the same)."""
    backbone = backbones.get(name)
    enum, member = backbone.weights.split(".")
    weights = getattr(getattr(torchvision.models, enum), member)
    assert Path(weights.url).name == backbone.imagenet_file
    assert backbone.units == BACKBONES[name][1]
    assert backbone.unit_ends == tuple(sorted(backbone.unit_ends))
    assert backbone.unit_ends[-1] == len(backbone.modules)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(backbones.RANDOM_INIT_SEED)
        model = backbone.torchvision_model()
    conv_part = backbone.layers_of(model).eval()
    assert repr(backbone.meta_layers()) == repr(conv_part)
    frozen = backbones.frozen_part(backbone, "random", 2)
    rest = backbones.trainable_part(backbone, "random", 2).eval()
    assert len(frozen) == backbone.cut(2) and len(frozen) + len(rest) == len(conv_part)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(rest(frozen(x)), conv_part(x))


def test_an_unknown_backbone_is_a_clear_error():
    with pytest.raises(FashionError, match=r"^model\.backbone: unknown backbone 'vgg19'"):
        backbones.get("vgg19")


@pytest.mark.parametrize("frozen_convs", [12, 13])
def test_frozen_part_equals_the_torchvision_split_of_the_same_file(weights_file, frozen_convs):
    features = torchvision_vgg(weights_file).features
    expected = features[:torchvision_cut(features, frozen_convs)]
    built = backbones.frozen_part(VGG, str(weights_file), frozen_convs)
    assert isinstance(built, backbones.FrozenPart)
    assert [repr(m) for m in built] == [repr(m) for m in expected]
    assert not any(p.requires_grad for p in built.parameters()) and not built.training
    assert not built.train().training  # frozen stays in eval mode
    for ours, theirs in zip(built.state_dict().values(), expected.state_dict().values(),
                            strict=True):
        assert torch.equal(ours, theirs)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(built(x), expected(x))
        out, _ = built.forward_with_side(x)
        assert torch.equal(out, expected(x))


@pytest.mark.parametrize("frozen_convs", [10, 12, 13])
def test_build_net_from_a_file_equals_the_torchvision_split(weights_file, frozen_convs):
    """The train stage's net: the same layers, weights, trainability and head as when it is
    built from torchvision's whole VGG-16 split at the same place."""
    features = torchvision_vgg(weights_file).features
    cut = torchvision_cut(features, frozen_convs)
    expected = nn.Sequential(*features[cut:]).train()
    built = backbones.trainable_part(VGG, str(weights_file), frozen_convs)
    assert repr(built) == repr(expected) and built.training
    for ours, theirs in zip(built.parameters(), expected.parameters(), strict=True):
        assert ours.requires_grad and torch.equal(ours, theirs)
        assert ours.data_ptr() != theirs.data_ptr()
    with torch.device("meta"):
        shape = tuple(vgg16(weights=None).features[:cut](
            torch.empty(1, 3, 32, 32, device="meta")).shape[1:])
    net = build_net(config_for(str(weights_file), frozen_convs, shape), seed=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        before = AttributeNet(expected, {"trunk": shape}, 16, len(LABELS), 0.5)
    assert list(net.state_dict()) == list(before.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(net.state_dict().values(),
                                                 before.state_dict().values(), strict=True))


def test_frozen_part_refuses_a_file_without_the_frozen_convs(tmp_path, weights_file):
    state = torch.load(weights_file, weights_only=True)
    del state["features.24.weight"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(FashionError, match=r"not a vgg16 state_dict: missing key "
                                           r"'features\.24\.weight'"):
        backbones.frozen_part(VGG, str(tmp_path / "cut.pth"), 12)
    backbones.frozen_part(VGG, str(tmp_path / "cut.pth"), 10)  # conv 11 is not needed there
    state = torch.load(weights_file, weights_only=True)
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(FashionError, match=r"not a vgg16 state_dict: 'features\.0\.weight' has "
                                           r"shape \(64, 3, 5, 5\), expected \(64, 3, 3, 3\)"):
        backbones.frozen_part(VGG, str(tmp_path / "shape.pth"), 12)


def test_load_net_without_torchvision_gives_the_saved_network(tmp_path):
    config = config_for("random", 12, (512, 2, 2))
    net = build_net(config, seed=3)
    save_net(net, tmp_path / "net.pt", config)
    loaded, loaded_config = load_net(tmp_path / "net.pt")
    assert loaded_config == config
    x = {"trunk": torch.randn(3, 512, 2, 2)}
    with torch.inference_mode():
        assert torch.equal(loaded(x), net.eval()(x))
    code = ("import sys\nfrom fashiondvc.net import load_net\n"
            f"load_net({str(tmp_path / 'net.pt')!r})\n"
            "print('torchvision' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


def test_search_command_imports_only_what_a_query_needs(tmp_path, weights_file):
    images = make_sample_archive(tmp_path / "sample", n_images=N_PHOTOS, folder=True) / "images"
    config = config_for(str(weights_file), 13, (512, 1, 1))
    net = build_net(config, seed=0)
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
    # the answer equals the in-process one through the torchvision-built frozen part
    features = torchvision_vgg().features
    trunk = backbones.FrozenPart(list(features[:torchvision_cut(features, 13)]), VGG.taps)
    saved_net, saved_config = load_net(tmp_path / "net.pt")
    predictor = Predictor(saved_net, saved_config,
                          FeatureExtractor(saved_config.extractor, part=trunk))
    probs, _ = predictor.photo(photo.read_bytes(), photo.name)
    got = {a["name"]: a["probability"] for a in result["attributes"]}
    assert np.allclose([got[name] for name in LABELS], probs, atol=1e-6)
    assert 3 not in [hit["row"] for hit in result["results"]]  # its own bytes left out
    assert len(SearchIndex.load(tmp_path / "index")) == N_PHOTOS
