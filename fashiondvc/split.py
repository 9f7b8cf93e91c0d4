"""Train/test split of the augmented images, grouped by source photo by default.

The paper split its 20412 augmented images per image: variants of one photo then sit on both
sides, and the test set measures how well the model recognises photos it has already seen.
Grouping by source photo keeps every photo's variants on one side.
"""

from __future__ import annotations

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
    if not 0 < test_size < 1:
        raise FashionError(f"split.test_size: must be in (0, 1), got {test_size}")
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
