"""The dataset's attribute vocabulary, the named label sets, and per-image targets.

Binary attributes are coded 1 = no, 2 = yes in the archive; NaN means the six annotators
disagreed, so the label is *missing* (masked out of the loss and every metric), not negative.
Kept free of heavy imports (no torch, PIL or scipy): validating ``params.yaml`` stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fashiondvc.errors import FashionError

COLOURS = (
    "red", "yellow", "green", "cyan", "blue", "purple", "brown", "white", "gray", "black",
    "many_colors",
)
PATTERNS = (
    "pattern_solid", "pattern_floral", "pattern_spot", "pattern_graphics", "pattern_plaid",
    "pattern_stripe",
)
BINARY_ATTRIBUTES = (
    "necktie", "collar", "gender", "placket", "skin_exposure", "scarf", *PATTERNS, *COLOURS,
)
#: Multi-class attributes and their number of classes.
MULTICLASS_ATTRIBUTES = {"sleevelength": 3, "neckline": 3, "category": 7}
ATTRIBUTES = (*BINARY_ATTRIBUTES, *MULTICLASS_ATTRIBUTES)
N_CLASSES = {**dict.fromkeys(BINARY_ATTRIBUTES, 2), **MULTICLASS_ATTRIBUTES}

#: Named label sets. ``attrs20`` drops gender and skin_exposure (they describe the wearer, not
#: the clothes) and placket (rarely visible in street photos); the paper does not list its 20.
LABEL_SETS: dict[str, tuple[str, ...]] = {
    "colors11": COLOURS,
    "attrs20": tuple(
        a for a in BINARY_ATTRIBUTES if a not in {"gender", "skin_exposure", "placket"}
    ),
    "binary23": BINARY_ATTRIBUTES,
}


def resolve_label_set(labels: str | Sequence[str]) -> list[str]:
    """Return the attribute names a ``labels`` parameter stands for.

    Parameters
    ----------
    labels : str or sequence of str
        A named set (``colors11``, ``attrs20``, ``binary23``), a single attribute name, or a list
        of binary attribute names.

    Raises
    ------
    FashionError
        For unknown names, multi-class attributes, duplicates or an empty set.
    """
    if isinstance(labels, str):
        if labels in LABEL_SETS:
            return list(LABEL_SETS[labels])
        labels = [labels]
    if not isinstance(labels, (list, tuple)) or not all(isinstance(n, str) for n in labels):
        raise FashionError(f"labels: expected a set name or a list of attribute names, "
                           f"got {labels!r}")
    names = list(labels)
    if not names:
        raise FashionError("labels: the label set is empty")
    for name in names:
        if name in MULTICLASS_ATTRIBUTES:
            raise FashionError(
                f"labels: {name!r} is multi-class; only binary attributes can be predicted"
            )
        if name not in BINARY_ATTRIBUTES:
            known = ", ".join([*LABEL_SETS, *BINARY_ATTRIBUTES])
            raise FashionError(f"labels: unknown label {name!r} (known: {known})")
    if len(set(names)) != len(names):
        raise FashionError(f"labels: duplicate names in {names}")
    return names


def binary_targets(table: pd.DataFrame, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Targets (1 = yes) and an observed-mask for binary attributes coded 1 = no, 2 = yes.

    Returns
    -------
    targets : ndarray of float32, shape (n_images, n_labels)
        1.0 where the attribute is present, 0.0 where absent or missing.
    mask : ndarray of bool, shape (n_images, n_labels)
        True where the label was observed (not NaN).
    """
    missing = [name for name in names if name not in table.columns]
    if missing:
        raise FashionError(f"labels: the archive has no attribute {missing[0]!r}")
    values = table[list(names)].to_numpy(dtype=np.float64)
    mask = ~np.isnan(values)
    targets = np.where(mask, values == 2, False).astype(np.float32)
    return targets, mask


def targets_for(table: pd.DataFrame, image_ids: Sequence[int], names: Sequence[str]
                ) -> tuple[np.ndarray, np.ndarray]:
    """`binary_targets` for a sequence of image ids (augmented copies repeat their photo's)."""
    by_id = table.set_index("image_id")
    unknown = set(image_ids) - set(by_id.index)
    if unknown:
        raise FashionError(f"labels.csv: no labels for image {min(unknown)}")
    return binary_targets(by_id.loc[list(image_ids)].reset_index(), names)
