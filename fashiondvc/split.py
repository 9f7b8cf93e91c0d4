"""Train/test split of the augmented images, grouped by source photo by default.

The paper split its 20412 augmented images per image: variants of one photo then sit on both
sides, and the test set measures how well the model recognises photos it has already seen.
Grouping by source photo keeps every photo's variants on one side.
"""

from __future__ import annotations

import os

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit

from fashiondvc.errors import FashionError


def split_test_mask(source_ids: np.ndarray, test_size: float, *, group_by_source: bool = True,
                    seed: int = 0) -> np.ndarray:
    """Boolean mask of test images.

    Parameters
    ----------
    source_ids : ndarray of int, shape (n_images,)
        The source photo of each (augmented) image.
    test_size : float
        Share of photos (grouped) or images (ungrouped) in the test set, in (0, 1).
    group_by_source : bool
        Keep all variants of a photo on the same side.
    seed : int
        Random seed.
    """
    source_ids = np.asarray(source_ids)
    n_groups = len(np.unique(source_ids)) if group_by_source else len(source_ids)
    if n_groups < 2:
        raise FashionError(f"split: need at least 2 {'photos' if group_by_source else 'images'}")
    splitter_cls = GroupShuffleSplit if group_by_source else ShuffleSplit
    splitter = splitter_cls(n_splits=1, test_size=test_size, random_state=seed)
    groups = source_ids if group_by_source else None
    _, test = next(splitter.split(np.zeros(len(source_ids)), groups=groups))
    mask = np.zeros(len(source_ids), dtype=bool)
    mask[test] = True
    return mask


def assign_subsets(source_ids: np.ndarray, test_size: float, *, val_size: float = 0.0,
                   group_by_source: bool = True, seed: int = 0) -> np.ndarray:
    """``"train"``, ``"val"`` or ``"test"`` for every image, shape (n_images,), dtype object.

    The test images are exactly `split_test_mask`'s, whatever ``val_size``. Validation images
    are then carved from the training ones, always grouped by source photo (a model choice
    must not be made on copies of training photos): ``val_size`` is their share of all photos.
    """
    source_ids = np.asarray(source_ids)
    is_test = split_test_mask(source_ids, test_size, group_by_source=group_by_source, seed=seed)
    subsets = np.where(is_test, "test", "train").astype(object)
    if val_size > 0:
        train_ids = np.unique(source_ids[~is_test])
        n_val = int(round(val_size * len(np.unique(source_ids))))
        if not 0 < n_val < len(train_ids):
            raise FashionError(f"split.val_size: {val_size} leaves {n_val} of "
                               f"{len(train_ids)} training photos for validation")
        rng = np.random.default_rng([seed, 1])
        val_ids = rng.choice(train_ids, size=n_val, replace=False)
        subsets[~is_test & np.isin(source_ids, val_ids)] = "val"
    return subsets


def split_index(index_csv: str | os.PathLike, out_csv: str | os.PathLike, params) -> dict:
    """The split stage: the augmented store's index -> ``out_csv`` (index, image_id, copy,
    subset) with `fashiondvc.params.SplitParams` ``params``; returns the images per subset."""
    import pandas as pd

    from fashiondvc.io import write_csv

    index = pd.read_csv(index_csv)
    subsets = assign_subsets(index["image_id"].to_numpy(), params.test_size,
                             val_size=params.val_size, group_by_source=params.group_by_source,
                             seed=params.seed)
    write_csv(out_csv, index[["index", "image_id", "copy"]].assign(subset=subsets))
    counts = pd.Series(subsets).value_counts()
    return {name: int(counts.get(name, 0)) for name in ("train", "val", "test")}
