"""The pipeline in one process: the steps DVC runs, called in order, for benchmarks and tests.

Each step calls the same library function as its stage script in ``stages/`` (which only reads
``params.yaml``, calls it and prints), with the output paths ``dvc.yaml`` gives, under ``root``.
No MLflow tracking: that is the stage scripts' business. No stage imports this module, so it is
no dependency of any stage.

>>> from fashiondvc.params import Params, load_params
>>> pipeline = Pipeline(load_params(), "/tmp/run")            # doctest: +SKIP
>>> pipeline.run(until="train")                                # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from fashiondvc.params import Params

#: The steps, in ``dvc.yaml``'s order (``inputs`` aside: in process the paths are read as given).
STEPS = ("ingest", "augment", "split", "featurize", "train", "evaluate", "index")


class Pipeline:
    """``params`` (validated) and a working folder ``root`` laid out as the repository's."""

    def __init__(self, params: Params, root: str | os.PathLike):
        self.params, self.root = params, Path(root)
        data = self.root / "data"
        self.ingested, self.augmented = data / "ingested", data / "augmented"
        self.split_csv, self.features, self.index_dir = data / "split.csv", data / "features", \
            data / "index"
        self.labels_csv = self.ingested / "labels.csv"
        self.model, self.metrics = self.root / "models" / "net.pt", self.root / "metrics"
        self.history = self.metrics / "history.csv"

    def ingest(self):
        from fashiondvc.dataset import ingest
        from fashiondvc.io import repo_path

        data = self.params.data
        return ingest(repo_path(data.archive), self.ingested, sha256=data.sha256,
                      on_corrupt=data.on_corrupt)

    def augment(self):
        from fashiondvc.augment import augment_ingested

        return augment_ingested(self.ingested, self.augmented, self.params.augment)

    def split(self):
        from fashiondvc.split import split_index

        return split_index(self.augmented / "index.csv", self.split_csv, self.params.split)

    def featurize(self, extractor=None):
        """``extractor``: a `FeatureExtractor` to use instead of the params' one."""
        from fashiondvc.config import ExtractorConfig
        from fashiondvc.features import FeatureExtractor, featurize
        from fashiondvc.store import ImageStore

        options = self.params.featurize
        extractor = extractor or FeatureExtractor(ExtractorConfig.from_params(self.params),
                                                  device=options.device)
        return featurize(ImageStore(self.augmented), extractor, self.features,
                         batch_size=options.batch_size, workers=options.workers,
                         mirror=options.mirror)

    def train(self, **kwargs):
        from fashiondvc.train import train

        return train(self.params, self.labels_csv, self.split_csv, self.features, self.model,
                     self.history, checkpoint_dir=self.root / ".checkpoints", **kwargs)

    def evaluate(self):
        from fashiondvc.evaluate import run_evaluation

        return run_evaluation(self.params, self.labels_csv, self.split_csv, self.features,
                              self.model, self.history, self.metrics)

    def index(self):
        from fashiondvc.index import index_collection

        return index_collection(self.params, self.model, self.ingested, self.split_csv,
                                self.features, self.index_dir)

    def run(self, *, start: str = "ingest", until: str = "index") -> dict:
        """Run the steps from ``start`` to ``until`` (both included); return their results."""
        steps = STEPS[STEPS.index(start):STEPS.index(until) + 1]
        return {step: getattr(self, step)() for step in steps}
