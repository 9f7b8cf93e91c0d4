"""Set-up shared by the bench scripts: validated parameters for the in-process pipeline
(`fashiondvc.pipeline.Pipeline`), and the seeded random VGG-16 as a weights file.

Import it after putting ``bench/`` and the repository on ``sys.path``, as the scripts do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from fashiondvc import backbones
from fashiondvc.params import Params, override

REPO = Path(__file__).resolve().parents[1]


def params(overrides: Mapping[str, object], path: Path = REPO / "params.yaml") -> Params:
    """``path`` (this checkout's params.yaml) with dotted ``overrides`` applied
    (``{"model.frozen_convs": 12}``), then validated once (`Params.from_mapping`): a bench
    runs the pipeline with the settings it states, whatever the committed file says for
    them (its own ``model.weights`` file need not exist on a bench machine)."""
    from ruamel.yaml import YAML

    raw = YAML(typ="safe", pure=True).load(Path(path).read_text())
    return Params.from_mapping(override(raw, overrides))


def random_weights_file(path: Path) -> Path:
    """Save ``model.weights: random`` for VGG-16 (torchvision's initialisation seeded with
    `backbones.RANDOM_INIT_SEED`, as `fashiondvc.backbones` makes it) as a state_dict file of
    its conv part (``features.*``), usable as ``model.weights: <file>``; return ``path``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(backbones.RANDOM_INIT_SEED)
        model = backbones.get("vgg16").torchvision_model()
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith("features.")},
               path)
    return path
