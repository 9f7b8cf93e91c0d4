"""The typed configs a run carries from stage to stage: what made the features, how the
network was trained, and everything that rebuilds the network (saved in its file).

They are frozen dataclasses, built once from the validated parameters (`fashiondvc.params`),
so nothing downstream checks a value again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ExtractorConfig:
    """What the features are a function of: the frozen part, its weights, size and precision."""

    backbone: str
    weights: str
    frozen: int
    image_size: int
    precision: str

    @classmethod
    def from_params(cls, params) -> ExtractorConfig:
        """The extractor of validated `fashiondvc.params.Params`."""
        model = params.model
        return cls(backbone=model.backbone, weights=model.weights, frozen=model.frozen,
                   image_size=params.augment.image_size, precision=params.featurize.precision)

    @property
    def storage_dtype(self) -> np.dtype:
        """On-disk dtype of ``trunk``: float16 halves the size; fp32 runs keep float32."""
        return np.dtype(np.float32 if self.precision == "fp32" else np.float16)


@dataclass(frozen=True)
class TrainConfig:
    """What one training run needs besides the network and the data (from `params.Params`).

    ``pos_weight`` is one weight per label (`losses.positive_weights`); empty means ``k`` for
    every label.
    """

    k: float
    lr: float
    epochs: int
    batch_size: int
    optimizer: str = "adam"
    weight_decay: float = 0.0
    loss: str = "wbce"
    gamma: float = 2.0
    pos_weight: tuple[float, ...] = ()
    select: str = "last"
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"

    def weights_for(self, n_labels: int) -> torch.Tensor:
        """The positive weights as a tensor of shape (n_labels,)."""
        if self.pos_weight:
            return torch.tensor(self.pos_weight, dtype=torch.float32)
        return torch.full((n_labels,), float(self.k))


@dataclass(frozen=True)
class ModelConfig:
    """Everything that rebuilds a trained network, saved in its file (``version`` 2).

    ``extractor`` says which features it takes (backbone, weights, cut, image size and the
    precision they were computed in); ``input_shapes`` the shape of each input for one image;
    ``train`` the training settings it ran with.
    """

    labels: tuple[str, ...]
    extractor: ExtractorConfig
    input_shapes: dict[str, tuple[int, ...]]
    train: TrainConfig
    head: str = "flatten"
    hidden: int = 256
    dropout: float = 0.5
    label_pca: int = 0

    VERSION = 2

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.input_shapes)

    def to_dict(self) -> dict:
        return {"version": self.VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, saved: Mapping) -> ModelConfig:
        """Rebuild from `to_dict`'s output; raise `ValueError` for another version."""
        if saved.get("version") != cls.VERSION:
            raise ValueError(f"model config version {saved.get('version')}, this code reads "
                             f"{cls.VERSION}: retrain it (dvc repro train)")
        values = dict(saved)
        values.pop("version")
        values["labels"] = tuple(values["labels"])
        values["extractor"] = ExtractorConfig(**values["extractor"])
        values["input_shapes"] = {k: tuple(v) for k, v in values["input_shapes"].items()}
        values["train"] = TrainConfig(**{**values["train"],
                                         "pos_weight": tuple(values["train"]["pos_weight"])})
        return cls(**values)


