"""The MLflow model registry as the search engine uses it: promote a model, open one by URI.

Every evaluate stage registers its network as a version of
`fashiondvc.mlmodel.REGISTERED_NAME`, tagged with its DVC experiment (``dvc.experiment``).
`promote` points an alias (``champion`` by default) at the version of one experiment, as MLflow's
registry users do (https://mlflow.org/docs/latest/model-registry.html, "aliases"); `open_model`
turns ``models:/fashiondvc-attributes@champion`` (or ``/<version>``) into the `Predictor` that
search, serve and ``fashiondvc index`` run, with the sha256 of its ``net.pt``: an index is only
used with the model that built it. The default pipeline keeps reproducing the paper; the alias
says which model the search engine serves.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fashiondvc.errors import FashionError

DEFAULT_ALIAS = "champion"
#: MLflow's alias rule: letters, digits, ``_`` and ``-``, not a version reference.
_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")
_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]+)|@(?P<alias>[^/@]+))")


def is_model_uri(model: str | Path) -> bool:
    """Whether ``model`` is a registry URI (``models:/...``) rather than a file path."""
    return str(model).startswith("models:/")


def _not_found(exc: Exception) -> bool:
    """An MLflow error for an unknown name or version, or (``INVALID_PARAMETER_VALUE``) alias."""
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST",
                                              "INVALID_PARAMETER_VALUE")


def promote(experiment: str, alias: str = DEFAULT_ALIAS, client=None):
    """Point ``alias`` at the newest registered version from DVC experiment ``experiment``
    (or at version ``experiment`` when it is a number). Returns that ``ModelVersion``.

    Raises
    ------
    FashionError
        If the alias is not a valid MLflow alias, or no registered version matches (the
        message lists the experiments that have one).
    """
    from fashiondvc.mlmodel import REGISTERED_NAME
    from fashiondvc.tracking import open_client, with_retries

    if not _ALIAS.fullmatch(alias) or alias == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise FashionError(f"--alias: {alias!r} is not a valid alias (letters, digits, _ and -; "
                           "not 'latest' nor v<number>)")
    client = client or open_client()
    versions = with_retries(lambda: client.search_model_versions(f"name = '{REGISTERED_NAME}'"),
                            "search model versions")
    if experiment.isdigit():
        chosen = [v for v in versions if str(v.version) == experiment]
    else:
        chosen = [v for v in versions if v.tags.get("dvc.experiment") == experiment]
    if not chosen:
        known = sorted({v.tags.get("dvc.experiment", "?") for v in versions})
        raise FashionError(f"promote: no registered version of {REGISTERED_NAME} comes from "
                           f"experiment {experiment!r}; experiments with one: "
                           f"{', '.join(known) or 'none (run dvc exp run first)'}")
    version = max(chosen, key=lambda v: int(v.version))
    with_retries(lambda: client.set_registered_model_alias(REGISTERED_NAME, alias,
                                                           version.version), "set alias")
    return version


@dataclass
class OpenedModel:
    """A model ready to score photos: its `Predictor`, the sha256 of its ``net.pt`` (what an
    index records) and a description for messages."""

    predictor: object
    sha256: str
    description: str


def open_model(model: str | Path, tta: str | None = None, embedding: str | None = None
               ) -> OpenedModel:
    """A model file (``models/net.pt``) or registry URI -> `OpenedModel`.

    ``tta`` (``none``, ``flip``) and ``embedding`` (``hidden``, ``attributes``) default to the
    registered version's (as it was evaluated), or ``none`` and ``hidden`` for a file.

    A URI's version is resolved (``@alias`` or ``/<version>``), its ``net.pt`` downloaded and
    its trunk taken from the store, as the logged pyfunc model does
    (`fashiondvc.mlmodel.predictor_from_store`).

    Raises
    ------
    FashionError
        If the file is missing, the URI malformed, or the name, version or alias unknown.
    """
    from fashiondvc.io import sha256_file

    if not is_model_uri(model):
        from fashiondvc.predictor import Predictor

        if not Path(model).exists():
            raise FashionError(f"{model} does not exist: run the train stage first")
        return OpenedModel(Predictor.from_file(model, tta or "none", embedding or "hidden"),
                           sha256_file(model), str(model))
    net_path, settings, description = download(str(model))
    from fashiondvc.mlmodel import predictor_from_store

    predictor = predictor_from_store(net_path, settings, tta, embedding)
    return OpenedModel(predictor, sha256_file(net_path), description)


def download(uri: str) -> tuple[Path, dict, str]:
    """``(net.pt path, pyfunc model_config, description)`` of a registered model version."""
    import mlflow.artifacts
    from ruamel.yaml import YAML

    from fashiondvc.tracking import open_client, quiet_downloads, with_retries

    match = _URI.fullmatch(uri)
    if match is None:
        raise FashionError(f"{uri}: expected models:/<name>/<version> or models:/<name>@<alias>")
    name, number, alias = match["name"], match["version"], match["alias"]
    client = open_client()
    try:
        version = (client.get_model_version_by_alias(name, alias) if alias
                   else client.get_model_version(name, number))
    except Exception as exc:
        if _not_found(exc):
            raise FashionError(f"{uri}: no such registered model version "
                               f"({getattr(exc, 'message', exc)}); see `fashiondvc promote "
                               "--help`") from None
        raise
    description = (f"{uri} (version {version.version}, experiment "
                   f"{version.tags.get('dvc.experiment', '?')})")
    _check_artifacts(client, version, description)
    folder = Path(tempfile.mkdtemp(prefix="fashiondvc-model-"))
    source = version.source.rstrip("/")
    with quiet_downloads():
        mlmodel = with_retries(lambda: mlflow.artifacts.download_artifacts(
            artifact_uri=f"{source}/MLmodel", dst_path=str(folder)), "download MLmodel")
    try:
        flavor = YAML(typ="safe", pure=True).load(Path(mlmodel).read_text())[
            "flavors"]["python_function"]
        settings, net_file = flavor["config"], flavor["artifacts"]["net"]["path"]
    except (KeyError, TypeError) as exc:
        raise FashionError(f"{description}: not a fashiondvc model (MLmodel lacks {exc})"
                           ) from None
    with quiet_downloads():
        net = with_retries(lambda: mlflow.artifacts.download_artifacts(
            artifact_uri=f"{source}/{net_file}", dst_path=str(folder)),
            "download the network")
    return Path(net), settings, description


def _check_artifacts(client, version, description: str) -> None:
    """Refuse in one line a version whose artifacts, in a local folder, are gone.

    Raises
    ------
    FashionError
        Naming the folder the store records and the likely reasons (the repository moved while
        ``MLFLOW_TRACKING_URI`` named its store, or ``mlartifacts`` was deleted).
    """
    from urllib.parse import unquote, urlparse

    from fashiondvc.tracking import with_retries

    location = with_retries(lambda: client.get_model_version_download_uri(
        version.name, version.version), "locate the model's artifacts")
    if run := re.fullmatch(r"runs:/([^/]+)/?(.*)", location):
        run_uri = with_retries(lambda: client.get_run(run[1]).info.artifact_uri, "get the run")
        location = f"{run_uri.rstrip('/')}/{run[2]}"
    if not location.startswith("file:") and ":" in location.split("/")[0]:
        return  # a server or a bucket: its own errors say what is wrong
    folder = Path(unquote(urlparse(location).path)) if location.startswith("file:") \
        else Path(location)
    if not (folder / "MLmodel").is_file():
        raise FashionError(f"{description}: its artifacts were stored at {folder}, which holds "
                           "no MLmodel any more (moved or deleted: a store that follows the "
                           "repository is <repo>/mlflow.db with <repo>/mlartifacts; register "
                           "the model again with `fashiondvc track`)")
