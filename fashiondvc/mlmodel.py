"""The trained network as a registered MLflow model: photos in, attribute probabilities out.

`log_model` saves a pyfunc model (`PhotoAttributes`) into the evaluate stage's MLflow run
(artifact folder ``model``) and registers it as one version of `REGISTERED_NAME`, tagged with
the DVC experiment and the dataset hash. ``predict`` takes a DataFrame with a ``photo`` column
(each a path or encoded JPEG/PNG bytes; the signature enforces the column) and returns one
row per photo with one probability column per attribute, computed exactly as ``fashiondvc
search`` computes them (`fashiondvc.predictor.Predictor`: the feature extractor the featurize
stage ran, in its precision, then the network).

Disk: the model folder holds the trained part only (``net.pt``: the unfrozen layers and the
head) plus the code. The frozen part (about 59 MB for VGG-16's 13 convs in fp32) is stored
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


def trunk_key(config) -> str:
    """What identifies the frozen part of a `ModelConfig` without building it: backbone,
    weights source and cut."""
    from fashiondvc import backbones

    ex = config.extractor
    identity = backbones.weights_identity(backbones.get(ex.backbone), ex.weights)
    return f"{ex.backbone}:{','.join(f'{k}={v}' for k, v in identity.items())}:frozen={ex.frozen}"


def store_trunk(run, config) -> tuple[str, str]:
    """``(uri, sha256)`` of the trunk's weights in the store, logging them on first use."""
    from fashiondvc.tracking import active_experiment, artifact_location, store_lock

    client, key = run.client, trunk_key(config)
    exp_id = active_experiment(client, TRUNK_EXPERIMENT, artifact_location("trunks"))
    with store_lock():  # queue workers logging at once store the trunk once (SQLite)
        return _find_or_log_trunk(client, exp_id, key, config)


def _find_or_log_trunk(client, exp_id: str, key: str, config) -> tuple[str, str]:
    import torch

    from fashiondvc.tracking import with_retries

    query = f"tags.`{TRUNK_TAG}` = '{key}' and attributes.status = 'FINISHED'"
    found = with_retries(lambda: client.search_runs([exp_id], query, max_results=1),
                         "search trunks")
    if found:
        return f"runs:/{found[0].info.run_id}/frozen.pt", found[0].data.tags["sha256"]
    from fashiondvc import backbones

    ex = config.extractor
    state = backbones.frozen_part(backbones.get(ex.backbone), ex.weights, ex.frozen).state_dict()
    digest = state_sha256(state)
    trunk_run = with_retries(lambda: client.create_run(
        exp_id, run_name=key, tags={TRUNK_TAG: key, "sha256": digest}), "create trunk run")
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / "frozen.pt")
        with_retries(lambda: client.log_artifact(trunk_run.info.run_id,
                                                 str(Path(tmp) / "frozen.pt")), "log trunk")
    with_retries(lambda: client.set_terminated(trunk_run.info.run_id), "end trunk run")
    return f"runs:/{trunk_run.info.run_id}/frozen.pt", digest


def predictor_from_store(net_path: str | os.PathLike, settings: dict, tta: str | None = None,
                         embedding: str | None = None):
    """The `Predictor` of a logged model: its ``net.pt`` plus the trunk in the store.

    ``settings`` is the pyfunc's ``model_config`` (``trunk_uri``, ``trunk_sha256``, ``tta``,
    ``embedding``); ``tta`` and ``embedding`` override the logged ones. Only the frozen layers
    are built, allocated empty and filled from the store after the sha256 check.

    Raises
    ------
    FashionError
        If the stored trunk's content no longer matches the sha256 logged with the model.
    """
    import mlflow
    import torch

    from fashiondvc import backbones
    from fashiondvc.errors import FashionError
    from fashiondvc.features import FeatureExtractor
    from fashiondvc.net import load_net
    from fashiondvc.predictor import Predictor
    from fashiondvc.tracking import quiet_downloads

    net, config = load_net(net_path)
    if config.extractor.precision == "int8":  # the quantized trunk travels in net.pt
        return Predictor(net, config, tta=tta or settings.get("tta", "none"),
                         embedding=embedding or settings.get("embedding", "hidden"))
    with quiet_downloads():
        path = mlflow.artifacts.download_artifacts(artifact_uri=settings["trunk_uri"])
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state_sha256(state) != settings["trunk_sha256"]:
        raise FashionError(f"{settings['trunk_uri']}: trunk weights changed (sha256 mismatch)")
    ex = config.extractor
    part = backbones.empty_part(backbones.get(ex.backbone), ex.frozen, trainable=False)
    part.load_state_dict(state)
    return Predictor(net, config, FeatureExtractor(ex, part=part),
                     tta=tta or settings.get("tta", "none"),
                     embedding=embedding or settings.get("embedding", "hidden"))


#: Environment variable naming the one folder a served model may read photos from by path.
PHOTO_ROOT_ENV = "FASHIONDVC_PHOTO_ROOT"
#: Largest encoded photo accepted, in bytes (a JPEG of `fashiondvc.predictor.MAX_PIXELS`
#: pixels is far smaller).
MAX_PHOTO_BYTES = 50_000_000
_NO_PATHS = ("paths are not accepted: this model reads no file a client names (send the "
             "photo's bytes, base64 in JSON, in the `photo` column; the operator may allow "
             f"one folder with {PHOTO_ROOT_ENV})")


def photo_root(config: dict | None) -> Path | None:
    """The folder a loaded model may read photos from by path, or None (the default: none).

    Only the operator sets it: ``$FASHIONDVC_PHOTO_ROOT`` in the serving process, or
    ``model_config={"photo_root": ...}`` given to ``mlflow.pyfunc.load_model``; never a request.

    Raises
    ------
    FashionError
        If the named folder does not exist.
    """
    from fashiondvc.errors import FashionError

    root = (config or {}).get("photo_root") or os.environ.get(PHOTO_ROOT_ENV)
    if not root:
        return None
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise FashionError(f"{PHOTO_ROOT_ENV} / photo_root: {root} is not a folder")
    return folder.resolve()


def _is_missing(value) -> bool:
    """None, NaN, NaT or pd.NA: how pandas fills a gap in a column."""
    import pandas as pd

    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def photo_bytes(i: int, photo, path, root: Path | None) -> bytes:
    """The encoded photo of row ``i``: its ``photo`` bytes, or the file ``path`` names under
    ``root``.

    A path is read only when the operator set a root (`photo_root`); it may be relative to the
    root or absolute, must not hold ``..``, and must resolve (symlinks followed) inside the
    root. Every refused or unreadable path gets the same message, so a client learns nothing
    about files outside the root.

    Raises
    ------
    FashionError
        One line naming the row: no photo, a value of the wrong type, both columns set, a path
        refused, an empty or too large photo.
    """
    from fashiondvc.errors import FashionError

    has_photo, has_path = not _is_missing(photo), not _is_missing(path)
    if has_photo and has_path:
        raise FashionError(f"row {i}: both `photo` and `path` are set; give one")
    if has_path:
        if not isinstance(path, str):
            raise FashionError(f"row {i}: `path` is of type {type(path).__name__}, not a "
                              "string")
        if root is None:
            raise FashionError(f"row {i}: {_NO_PATHS}")
        data = _read_under(root, path)
        if data is None:
            raise FashionError(f"row {i}: no such photo under the photo root")
        photo = data
    elif not has_photo:
        raise FashionError(f"row {i}: no photo (null): send the photo's bytes, base64 in JSON")
    if isinstance(photo, str):
        raise FashionError(f"row {i}: `photo` holds text, not bytes; {_NO_PATHS}")
    if not isinstance(photo, (bytes, bytearray, memoryview)):
        raise FashionError(f"row {i}: `photo` is of type {type(photo).__name__}, not bytes "
                           "(base64 in JSON)")
    data = bytes(photo)
    if not data:
        raise FashionError(f"row {i}: empty photo (0 bytes)")
    if len(data) > MAX_PHOTO_BYTES:
        raise FashionError(f"row {i}: photo too large ({len(data) / 1e6:.0f} MB; at most "
                           f"{MAX_PHOTO_BYTES // 1_000_000} MB)")
    return data


def _read_under(root: Path, name: str) -> bytes | None:
    """The bytes of file ``name`` resolved inside ``root``; None when it is not a regular
    file there (outside, missing, a folder, unreadable, too large: not told apart)."""
    relative = Path(name)
    if "\0" in name or ".." in relative.parts:
        return None
    try:
        target = (root / relative).resolve()  # an absolute ``name`` replaces root
        if not target.is_relative_to(root) or not target.is_file():
            return None
        with target.open("rb") as handle:
            data = handle.read(MAX_PHOTO_BYTES + 1)
    except (OSError, RuntimeError, ValueError):  # loops, permissions, odd names
        return None
    return data if len(data) <= MAX_PHOTO_BYTES else None


def _python_model():
    import mlflow.pyfunc

    class PhotoAttributes(mlflow.pyfunc.PythonModel):
        """Photos -> a DataFrame of attribute probabilities, one row each (see `predict`)."""

        # the signature is given explicitly (`signature`): MLflow's type-hint validation, and
        # its "Add type hints to the `predict` method" warning on every definition, do not apply
        _skip_type_hint_validation = True

        def load_context(self, context) -> None:
            self.predictor = predictor_from_store(context.artifacts["net"],
                                                  context.model_config)
            self.root = photo_root(context.model_config)

        def predict(self, context, model_input, params=None):
            """``model_input``: a DataFrame with a ``photo`` column (encoded JPEG/PNG/... bytes;
            base64 strings in JSON, which MLflow's scoring server decodes) and/or a ``path``
            column (read only under the operator's photo root), or a list of bytes.

            Returns one row per input row: one float column per attribute and ``error`` (None,
            or one line saying why the row was not scored; its probabilities are then None).
            """
            import logging

            import pandas as pd

            from fashiondvc.errors import FashionError

            if isinstance(model_input, pd.DataFrame):
                n = len(model_input)
                photos = (model_input["photo"].tolist() if "photo" in model_input
                          else [None] * n)
                paths = (model_input["path"].tolist() if "path" in model_input
                         else [None] * n)
            else:
                photos = list(model_input)
                paths = [None] * len(photos)
            rows, errors = [], []
            for i, (photo, path) in enumerate(zip(photos, paths, strict=True)):
                try:
                    data = photo_bytes(i, photo, path, getattr(self, "root", None))
                    probs, _ = self.predictor.photo(data, f"row {i}")
                    rows.append([float(p) for p in probs])
                    errors.append(None)
                except FashionError as exc:
                    rows.append([None] * len(self.predictor.labels))
                    errors.append(str(exc))
                except Exception:  # a bug: its traceback goes to the server's log only
                    logging.getLogger(__name__).exception("row %d: scoring failed", i)
                    rows.append([None] * len(self.predictor.labels))
                    errors.append(f"row {i}: internal error while scoring this photo (the "
                                  "server's log has the details)")
            table = pd.DataFrame(rows, columns=self.predictor.labels,
                                 dtype=object if any(errors) else "float64")
            table["error"] = pd.Series(errors, index=table.index, dtype=object)
            return table

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
    """Input: ``photo`` (binary: encoded photo bytes, base64 in JSON requests; MLflow's scoring
    server decodes them) and ``path`` (string, read only under the operator's photo root),
    both optional, one per row; output: one double column per attribute and ``error``
    (string, set on the rows that were not scored)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "photo", required=False),
                       ColSpec("string", "path", required=False)]),
        outputs=Schema([*(ColSpec("double", name) for name in labels),
                        ColSpec("string", "error", required=False)]))


def log_model(run, model_path: str | os.PathLike, dataset_sha256: str, tta: str = "none",
              embedding: str = "hidden") -> str:
    """Save the pyfunc model into ``run`` (a `fashiondvc.tracking.TrackedRun`), register it;
    return ``models:/<name>/<version>``. ``tta`` (``evaluate.tta``) is how it scores photos
    and ``embedding`` (``search.embedding``) what search ranks by, as evaluated."""
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
            model_config={"trunk_uri": trunk_uri, "trunk_sha256": trunk_sha, "tta": tta,
                          "embedding": embedding},
            signature=signature(list(config.labels)),
            code_paths=[str(Path(fashiondvc.__file__).parent)],
            pip_requirements=["torch", "torchvision", "pillow", "numpy", "pandas", "mlflow",
                              # an int8 model runs its trunk in OpenVINO (the int8 extra)
                              *(["openvino"] if config.extractor.precision == "int8" else [])])
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
