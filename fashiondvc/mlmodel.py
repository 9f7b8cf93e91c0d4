"""The trained network as a registered MLflow model: photos in, attribute probabilities out.

`log_model` saves a pyfunc model (`PhotoAttributes`) into the evaluate stage's MLflow run
(artifact folder ``model``) and registers it as one version of `REGISTERED_NAME`, tagged with
the DVC experiment and the dataset hash. ``predict`` takes a DataFrame with a ``photo`` column
(each a path or encoded JPEG/PNG bytes; the signature enforces the column) and returns one
row per photo with one probability column per attribute, computed exactly as ``fashiondvc
search`` computes them (`fashiondvc.index.Featurizer`: the training preprocessing, the trunk
in ``featurize.precision``).

Disk: the model folder holds the trained part only (``net.pt``: the unfrozen convs and the
head) plus the code. The frozen VGG-16 trunk (about 59 MB for 13 convs in fp32) is stored
once per distinct trunk, as an artifact of a run in experiment `TRUNK_EXPERIMENT`, and the
model refers to it by URI and content sha256 (checked when the model loads); 14 experiments on
one trunk store it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

REGISTERED_NAME = "fashiondvc-attributes"
TRUNK_EXPERIMENT = "fashiondvc-trunks"
TRUNK_TAG = "fashiondvc.trunk_key"


def state_sha256(state: dict) -> str:
    """A content hash of a state_dict (names, dtypes, shapes and values), independent of how
    the file holding it was written."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in state.items():
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8)
                      .numpy().tobytes())
    return digest.hexdigest()


def trunk_key(config: dict) -> str:
    """What identifies the frozen trunk without building it: weights source and cut."""
    from fashiondvc.io import repo_path, sha256_file
    from fashiondvc.trunk import RANDOM_INIT_SEED

    weights = config["weights"]
    if weights == "imagenet":
        source = "imagenet:IMAGENET1K_V1"
    elif weights == "random":
        source = f"random:{RANDOM_INIT_SEED}"
    else:
        source = f"file:{sha256_file(repo_path(weights))}"
    return f"{source}:frozen_convs={config['frozen_convs']}"


def store_trunk(run, config: dict) -> tuple[str, str]:
    """``(uri, sha256)`` of the trunk's weights in the store, logging them on first use."""
    from fashiondvc.tracking import artifact_location, store_lock, with_retries

    client, key = run.client, trunk_key(config)

    def experiment() -> str:
        found = client.get_experiment_by_name(TRUNK_EXPERIMENT)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(TRUNK_EXPERIMENT,
                                        artifact_location=artifact_location("trunks"))

    exp_id = with_retries(experiment, "open the trunk experiment")
    with store_lock():  # queue workers logging at once store the trunk once (SQLite)
        return _find_or_log_trunk(client, exp_id, key, config)


def _find_or_log_trunk(client, exp_id: str, key: str, config: dict) -> tuple[str, str]:
    import torch

    from fashiondvc.tracking import with_retries

    query = f"tags.`{TRUNK_TAG}` = '{key}' and attributes.status = 'FINISHED'"
    found = with_retries(lambda: client.search_runs([exp_id], query, max_results=1),
                         "search trunks")
    if found:
        return f"runs:/{found[0].info.run_id}/frozen.pt", found[0].data.tags["sha256"]
    from fashiondvc.index import frozen_trunk

    state = frozen_trunk(config["weights"], config["frozen_convs"]).state_dict()
    digest = state_sha256(state)
    trunk_run = with_retries(lambda: client.create_run(
        exp_id, run_name=key, tags={TRUNK_TAG: key, "sha256": digest}), "create trunk run")
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / "frozen.pt")
        with_retries(lambda: client.log_artifact(trunk_run.info.run_id,
                                                 str(Path(tmp) / "frozen.pt")), "log trunk")
    with_retries(lambda: client.set_terminated(trunk_run.info.run_id), "end trunk run")
    return f"runs:/{trunk_run.info.run_id}/frozen.pt", digest


def _python_model():
    import mlflow.pyfunc

    class PhotoAttributes(mlflow.pyfunc.PythonModel):
        """Photos (paths or bytes) -> a DataFrame of attribute probabilities, one row each."""

        def load_context(self, context) -> None:
            import mlflow
            import torch
            from torch import nn

            from fashiondvc.errors import FashionError
            from fashiondvc.index import Featurizer
            from fashiondvc.net import load_net
            from fashiondvc.vgg import cut_index, features

            settings = context.model_config
            net, config = load_net(context.artifacts["net"])
            path = mlflow.artifacts.download_artifacts(artifact_uri=settings["trunk_uri"])
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state_sha256(state) != settings["trunk_sha256"]:
                raise FashionError(f"{settings['trunk_uri']}: trunk weights changed "
                                   "(sha256 mismatch)")
            # only the frozen layers, allocated empty and filled (cast to float32) from the
            # store: no whole VGG-16 with its 124M classifier weights initialised for nothing
            frozen = nn.Sequential(*features()[:cut_index(config["frozen_convs"])])
            frozen = frozen.to_empty(device="cpu")
            frozen.load_state_dict(state)
            frozen.requires_grad_(False).eval()
            self.featurizer = Featurizer(net, config, frozen=frozen,
                                         precision=settings["precision"])

        def predict(self, context, model_input, params=None):
            import pandas as pd

            photos = (model_input["photo"] if isinstance(model_input, pd.DataFrame)
                      else model_input)
            rows = []
            for i, photo in enumerate(list(photos)):
                if isinstance(photo, (bytes, bytearray)):
                    data, name = bytes(photo), f"photo {i}"
                else:
                    data, name = Path(photo).read_bytes(), str(photo)
                probs, _ = self.featurizer.photo(data, name)
                rows.append(probs.astype(float))
            return pd.DataFrame(rows, columns=self.featurizer.labels)

    return PhotoAttributes()


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Silence save_model's advice that does not apply here, so that a stage's stderr keeps only
    real warnings: type hints on ``predict`` (the signature is given explicitly), a missing
    ``input_example`` (photos), and CloudPickle for ``python_model`` (the pickled class is ours,
    its code ships in ``code_paths``, and the store is the team's own)."""
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            yield
    finally:
        logger.setLevel(level)


def signature(labels: list[str]):
    """Input: a ``photo`` column (path or bytes); output: one double column per attribute."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec(AnyType(), "photo")]),
                          outputs=Schema([ColSpec("double", name) for name in labels]))


def log_model(run, model_path: str | os.PathLike, precision: str, dataset_sha256: str) -> str:
    """Save the pyfunc model into ``run`` (a `fashiondvc.tracking.TrackedRun`), register it;
    return ``models:/<name>/<version>``."""
    import mlflow.pyfunc

    import fashiondvc
    from fashiondvc.net import load_net
    from fashiondvc.tracking import with_retries

    _, config = load_net(model_path)
    trunk_uri, trunk_sha = store_trunk(run, config)
    with tempfile.TemporaryDirectory() as tmp, _quiet_mlflow():
        folder = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            folder, python_model=_python_model(), artifacts={"net": str(model_path)},
            model_config={"trunk_uri": trunk_uri, "trunk_sha256": trunk_sha,
                          "precision": precision},
            signature=signature(list(config["labels"])),
            code_paths=[str(Path(fashiondvc.__file__).parent)],
            pip_requirements=["torch", "torchvision", "pillow", "numpy", "pandas", "mlflow"])
        with_retries(lambda: run.client.log_artifacts(run.run_id, str(folder), "model"),
                     "log model")
    client = run.client

    def registered() -> None:
        if client.search_registered_models(f"name = '{REGISTERED_NAME}'", max_results=1):
            return
        try:
            client.create_registered_model(REGISTERED_NAME)
        except Exception:
            if not client.search_registered_models(f"name = '{REGISTERED_NAME}'"):
                raise

    with_retries(registered, "register model")
    tags = {"dvc.experiment": os.environ.get("DVC_EXP_NAME", "workspace"),
            "dataset.sha256": dataset_sha256, "mlflow.run_name": run.name}
    version = with_retries(lambda: client.create_model_version(
        REGISTERED_NAME, f"runs:/{run.run_id}/model", run_id=run.run_id, tags=tags),
        "create model version")
    uri = f"models:/{REGISTERED_NAME}/{version.version}"
    print(f"mlflow: registered {uri} (trunk {trunk_uri})")
    return uri
