"""Bad input at the stage-script level: one clear ``error:`` line, exit 1, nothing left behind.

Every case runs a real stage script (``stages/<name>.py``, in this process; see
`faultkit.run_stage`) in a throwaway folder with its own params.yaml, and checks that the run
fails with exactly one ``error: ...`` line naming the file or parameter, prints no traceback and
leaves neither its output nor a ``.tmp-*`` sibling behind. A few cases also run as real
subprocesses, to check the exit status and stderr of the actual command.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
import torch
from conftest import BIN, PROJECT, run, set_params
from faultkit import (
    ROOT,
    assert_user_error,
    closed_port,
    leftovers,
    member,
    rewrite_zip,
    run_stage,
    serve,
    workdir,
)
from PIL import Image

from fashiondvc import backbones
from fashiondvc.config import TrainConfig
from fashiondvc.dataset import download
from fashiondvc.errors import FashionError
from fashiondvc.net import load_net
from fashiondvc.preprocess import load_rgb
from fashiondvc.rows import FeatureSet
from fashiondvc.train import fit

OUT = Path("data/ingested")


def ingest_fails(tmp_path: Path, archive: Path, *names: str, **params: object) -> str:
    """Run the ingest stage on ``archive``; assert a clean failure naming ``names``."""
    work = workdir(tmp_path / "work", archive, **params)
    result = run_stage("ingest", OUT, cwd=work)
    return assert_user_error(result, *names, absent=(work / OUT,))


def mat_bytes(values: object, name: str = "GT") -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {name: np.asarray(values, dtype=float).reshape(-1, 1)})
    return buffer.getvalue()


def image_bytes(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# --------------------------------------------------------------------------- archives


def test_truncated_zip(tmp_path, sample_zip):
    bad = tmp_path / "truncated.zip"
    bad.write_bytes(sample_zip.read_bytes()[: sample_zip.stat().st_size // 2])
    ingest_fails(tmp_path, bad, str(bad), "not a readable zip")


def test_file_that_is_not_a_zip(tmp_path):
    bad = tmp_path / "photos.zip"
    bad.write_text("<html>Please log in to download this file</html>\n")
    ingest_fails(tmp_path, bad, str(bad), "not a readable zip")


@pytest.mark.parametrize("missing", ["labels", "images"])
def test_zip_without_labels_or_images(tmp_path, sample_zip, missing):
    bad = rewrite_zip(sample_zip, tmp_path / f"no-{missing}.zip",
                      drop=lambda inner: inner.startswith(f"{missing}/"))
    ingest_fails(tmp_path, bad, str(bad), f"{missing}/")


@pytest.mark.parametrize("name", ["../evil.jpg", f"{ROOT}/images/../../../evil.jpg",
                                  "/etc/evil.jpg", "C:/evil.jpg", "..\\evil.jpg"])
def test_member_escaping_the_archive_is_refused(tmp_path, sample_zip, name):
    bad = rewrite_zip(sample_zip, tmp_path / "slip.zip", add={name: b"x"})
    ingest_fails(tmp_path, bad, str(bad), "unsafe member path", repr(name))
    assert not (tmp_path / "evil.jpg").exists()


def test_checksum_mismatch(tmp_path, sample_zip):
    wrong = "0" * 64
    line = ingest_fails(tmp_path, sample_zip, "data.sha256", str(sample_zip), wrong,
                        **{"data.sha256": wrong})
    assert hashlib.sha256(sample_zip.read_bytes()).hexdigest() in line


def test_checksum_set_for_a_folder_is_refused(tmp_path):
    from fashiondvc.sample import make_sample_archive

    folder = make_sample_archive(tmp_path / "folder", n_images=4, folder=True)
    ingest_fails(tmp_path, folder, "data.sha256", str(folder), **{"data.sha256": "a" * 64})


def test_missing_archive_without_url(tmp_path):
    ingest_fails(tmp_path, tmp_path / "nowhere.zip", "data.archive", "nowhere.zip")


# --------------------------------------------------------------------------- downloads


def download_fails(tmp_path: Path, url: str, *names: str, **params: object) -> None:
    archive = tmp_path / "work" / "data" / "raw" / "dataset.zip"
    work = workdir(tmp_path / "work", archive, **{"data.url": url, **params})
    result = run_stage("inputs", "data/inputs", cwd=work)  # the stage that downloads
    assert_user_error(result, url, *names, absent=(work / "data" / "inputs", archive))
    # where it looked, that the download failed, and both ways to fix it (issue 23)
    assert f"data.archive: {archive} not found" in result.stderr
    assert "put the archive there, or set data.archive" in result.stderr


def test_download_404(tmp_path):
    with serve({}) as base:
        download_fails(tmp_path, f"{base}/dataset.zip", "data.url", "HTTP 404")


def test_download_connection_refused(tmp_path):
    download_fails(tmp_path, f"http://127.0.0.1:{closed_port()}/dataset.zip", "data.url",
                   "refused")


def test_download_cut_short(tmp_path, sample_zip):
    body = sample_zip.read_bytes()
    with serve({"/dataset.zip": (200, body[:5000], len(body))}) as base:
        download_fails(tmp_path, f"{base}/dataset.zip", "data.url",
                       f"5000 of {len(body)} bytes")


def test_download_missing_file_url(tmp_path):
    download_fails(tmp_path, (tmp_path / "gone.zip").as_uri(), "data.url", "No such file")


def test_downloaded_file_with_wrong_checksum_is_not_kept(tmp_path, sample_zip):
    with serve({"/dataset.zip": (200, sample_zip.read_bytes(), None)}) as base:
        download_fails(tmp_path, f"{base}/dataset.zip", "data.sha256",
                       **{"data.sha256": "f" * 64})


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so tqdm draws its bar."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("scheme", ["http", "file"])
def test_download_succeeds_with_a_progress_bar(tmp_path, sample_zip, monkeypatch, scheme):
    body = sample_zip.read_bytes()
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    dest = tmp_path / "raw" / "dataset.zip"
    digest = hashlib.sha256(body).hexdigest()
    with serve({"/dataset.zip": (200, body, None)}) as base:
        url = f"{base}/dataset.zip" if scheme == "http" else sample_zip.as_uri()
        assert download(url, dest, sha256=digest) == dest
    assert dest.read_bytes() == body
    assert "download dataset.zip" in terminal.getvalue()
    assert "100%" in terminal.getvalue()
    assert not leftovers(dest.parent)


def test_inputs_stage_downloads_then_ingest_reads_it(tmp_path, sample_zip):
    archive = tmp_path / "work" / "data" / "raw" / "dataset.zip"
    with serve({"/dataset.zip": (200, sample_zip.read_bytes(), None)}) as base:
        work = workdir(tmp_path / "work", archive, **{"data.url": f"{base}/dataset.zip"})
        result = run_stage("inputs", "data/inputs", cwd=work)
    assert result.code == 0, result.stderr
    fingerprint = json.loads((work / "data" / "inputs" / "archive.json").read_text())
    assert fingerprint["sha256"] == hashlib.sha256(sample_zip.read_bytes()).hexdigest()
    result = run_stage("ingest", OUT, cwd=work)
    assert result.code == 0, result.stderr
    assert archive.read_bytes() == sample_zip.read_bytes()
    assert len(pd.read_csv(work / OUT / "labels.csv")) == 24


# --------------------------------------------------------------------------- labels


def test_label_file_without_gt(tmp_path, sample_zip):
    bad = rewrite_zip(sample_zip, tmp_path / "bad.zip",
                      replace={"labels/collar_GT.mat": mat_bytes([1] * 24, name="labels")})
    ingest_fails(tmp_path, bad, "labels/collar_GT.mat", "GT")


@pytest.mark.parametrize("attribute", ["necktie", "red"])  # necktie is read first
def test_label_file_of_the_wrong_length_is_the_one_named(tmp_path, sample_zip, attribute):
    bad = rewrite_zip(sample_zip, tmp_path / "bad.zip",
                      replace={f"labels/{attribute}_GT.mat": mat_bytes([1] * 23)})
    ingest_fails(tmp_path, bad, f"labels/{attribute}_GT.mat", "23 rows", "24")


@pytest.mark.parametrize("attribute, value", [("red", 3), ("collar", 0), ("category", 8),
                                              ("gender", 1.5)])
def test_label_value_outside_its_range(tmp_path, sample_zip, attribute, value):
    values = [1] * 24
    values[7] = value
    bad = rewrite_zip(sample_zip, tmp_path / "bad.zip",
                      replace={f"labels/{attribute}_GT.mat": mat_bytes(values)})
    ingest_fails(tmp_path, bad, f"labels/{attribute}_GT.mat", f"value {value:g} outside")


def test_label_file_that_is_not_matlab(tmp_path, sample_zip):
    bad = rewrite_zip(sample_zip, tmp_path / "bad.zip",
                      replace={"labels/blue_GT.mat": b"this is not a MATLAB file"})
    ingest_fails(tmp_path, bad, "labels/blue_GT.mat", "MATLAB")


def test_label_missing_from_the_archive_stops_training(tmp_path, sample_zip):
    """Ingest keeps whatever attributes an archive has; training names the one it lacks."""
    bad = rewrite_zip(sample_zip, tmp_path / "no-red.zip",
                      drop=lambda inner: inner == "labels/red_GT.mat")
    work = workdir(tmp_path / "work", bad)
    steps = [("ingest", "data/ingested"), ("augment", "data/ingested", "data/augmented"),
             ("split", "data/augmented/index.csv", "data/split.csv"),
             ("featurize", "data/augmented", "data/features")]
    for stage, *args in steps:
        result = run_stage(stage, *args, cwd=work)
        assert result.code == 0, result.stderr
    result = run_stage("train", "data/ingested/labels.csv", "data/split.csv", "data/features",
                       "models/net.pt", "metrics/history.csv", cwd=work)
    assert_user_error(result, "labels", "'red'",
                      absent=(work / "models/net.pt", work / "metrics/history.csv"))


# --------------------------------------------------------------------------- images


def bad_images(sample_zip: Path) -> dict[str, bytes]:
    jpeg = member(sample_zip, "images/000003.jpg")
    return {"images/000003.jpg": jpeg[: len(jpeg) // 2],  # truncated
            "images/000005.jpg": b"GIF89a? no, just text pretending to be a photo"}


@pytest.mark.parametrize("inner, reason", [("images/000003.jpg", "truncated"),
                                           ("images/000005.jpg", "not a JPEG, PNG, WebP")])
def test_unreadable_image_fails_by_default(tmp_path, sample_zip, inner, reason):
    bad = rewrite_zip(sample_zip, tmp_path / "bad.zip",
                      replace={inner: bad_images(sample_zip)[inner]})
    ingest_fails(tmp_path, bad, str(bad), inner, reason, "on_corrupt")


def test_image_missing_for_a_label_row(tmp_path, sample_zip):
    bad = rewrite_zip(sample_zip, tmp_path / "bad.zip",
                      drop=lambda inner: inner == "images/000011.jpg")
    ingest_fails(tmp_path, bad, "images/000011.jpg", "missing")


def test_decompression_bomb_is_refused(tmp_path, sample_zip, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the sample's photos are ~10k pixels
    ingest_fails(tmp_path, sample_zip, str(sample_zip), "images/000001.jpg",
                 "decompression bomb")


def test_on_corrupt_skip_drops_and_reports(tmp_path, sample_zip):
    bad = rewrite_zip(sample_zip, tmp_path / "bad.zip", replace=bad_images(sample_zip),
                      drop=lambda inner: inner == "images/000011.jpg")
    work = workdir(tmp_path / "work", bad, **{"data.on_corrupt": "skip"})
    result = run_stage("ingest", OUT, cwd=work)
    assert result.code == 0, result.stderr
    skipped = pd.read_csv(work / OUT / "skipped.csv")
    assert skipped["image_id"].tolist() == [3, 5, 11]
    for image_id, reason in zip(skipped["image_id"], skipped["reason"], strict=True):
        assert reason.startswith(("images/", "missing member images/"))
        assert f"images/{image_id:06d}.jpg" in reason
    # an output: the same bytes wherever the archive lives and however often it runs
    assert str(tmp_path) not in skipped.to_csv() and " at 0x" not in skipped.to_csv()
    labels = pd.read_csv(work / OUT / "labels.csv")
    assert set(labels["image_id"]) == set(range(1, 25)) - {3, 5, 11}
    assert sorted(p.name for p in (work / OUT / "images").iterdir()) == [
        f"{i:06d}.jpg" for i in labels["image_id"]]
    assert "3 skipped" in result.stdout


def test_greyscale_cmyk_16bit_palette_and_rotated_photos_are_converted(tmp_path, sample_zip):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    wide = rgb.transpose(Image.Transpose.ROTATE_90)  # stored sideways (30 x 40) ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with EXIF "rotate 90 CW to display": upright it is 40 high again
    grey16 = np.array([[0, 257 * 10], [257 * 200, 65535]], dtype=np.uint16)
    variants = {
        "images/000001.jpg": image_bytes(rgb.convert("L")),
        "images/000002.jpg": image_bytes(rgb.convert("CMYK")),
        "images/000003.jpg": image_bytes(Image.fromarray(grey16), "PNG"),  # 16-bit greyscale
        "images/000004.jpg": image_bytes(rgb.convert("P"), "PNG"),
        "images/000005.jpg": image_bytes(rgb.convert("RGBA"), "PNG"),
        "images/000006.jpg": image_bytes(wide, exif=exif.tobytes()),
    }
    image = load_rgb(variants["images/000003.jpg"], "16-bit")
    assert image.mode == "RGB"
    assert np.asarray(image)[..., 0].tolist() == [[0, 10], [200, 255]]
    assert load_rgb(variants["images/000006.jpg"], "rotated").size == (30, 40)
    bad = rewrite_zip(sample_zip, tmp_path / "modes.zip", replace=variants)
    work = workdir(tmp_path / "work", bad)
    assert run_stage("ingest", OUT, cwd=work).code == 0
    result = run_stage("augment", OUT, "data/augmented", cwd=work)
    assert result.code == 0, result.stderr
    assert "24 photos -> 48 images" in result.stdout


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("param, value", [
    ("k", 0), ("k", -1), ("k", float("nan")), ("lr", 0), ("lr", -1e-3), ("lr", float("inf")),
    ("lr", "fast"), ("labels", ["red", "bogus"]), ("labels", "bogus"), ("labels", []),
    ("labels", None), ("labels", ["category"]), ("labels", ["red", "red"]),
    ("model.frozen_convs", -1), ("model.frozen_convs", 14), ("model.frozen_convs", 2.5),
    ("split.test_size", 0), ("split.test_size", 1), ("split.test_size", 1.5),
    ("augment.image_size", 31), ("augment.copies", -1), ("augment.workers", -2),
    ("model.weights", "vgg19"), ("model.weights", None), ("data.sha256", "abc"),
    ("data.on_corrupt", "ignore"), ("data.archive", ""), ("train.epochs", 0),
    ("train.optimizer", "rmsprop"), ("featurize.precision", "int4"),
    ("evaluate.threshold", 1), ("train.seed", -1), ("search.top", 0),
    ("train.epoch", 5), ("augment.size", 64), ("model.backbone", "vgg19"),
    ("model.inputs", ["side"]), ("model.inputs", ["trunk", "edges"]), ("model.head", "mlp"),
    ("model.weights", "missing-weights.pth"),
])
def test_bad_parameter_stops_before_any_work(tmp_path, sample_zip, param, value):
    """Every stage validates all of params.yaml first: even ingest refuses a bad ``lr``."""
    ingest_fails(tmp_path, sample_zip, param, **{param: value})


def test_bad_parameter_message_from_the_real_command(tmp_path, sample_zip):
    work = workdir(tmp_path / "work", sample_zip, **{"model.frozen_convs": 14})
    result = subprocess.run([str(BIN / "python"), str(PROJECT / "stages" / "ingest.py"), OUT],
                            cwd=work, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: model.frozen_convs: must be in [0, 13], got 14"
    assert not (work / OUT).exists()


def test_bad_archive_message_from_the_real_command(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 truncated")
    work = workdir(tmp_path / "work", bad)
    result = subprocess.run([str(BIN / "python"), str(PROJECT / "stages" / "ingest.py"), OUT],
                            cwd=work, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {bad}: not a readable zip archive")
    assert result.stderr.count("\n") == 1
    assert not (work / OUT).exists()


def test_missing_input_of_a_later_stage(tmp_path, sample_zip):
    work = workdir(tmp_path / "work", sample_zip)
    result = run_stage("split", "data/augmented/index.csv", "data/split.csv", cwd=work)
    assert_user_error(result, "data/augmented/index.csv", absent=(work / "data/split.csv",))


# --------------------------------------------------------------------------- weights files


def vgg16_state(**changes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """A features-only VGG-16 state_dict of zeros, with some shapes changed."""
    shapes = {f"features.{key}": tuple(value.shape)
              for key, value in backbones.vgg16_layers().state_dict().items()}
    return {key: torch.zeros(changes.get(key, shape)) for key, shape in shapes.items()}


@pytest.fixture(scope="module")
def augmented(tmp_path_factory, sample_zip) -> Path:
    """The sample ingested and augmented (FAST_PARAMS): what the featurize stage reads."""
    work = workdir(tmp_path_factory.mktemp("augmented"), sample_zip)
    assert run_stage("ingest", OUT, cwd=work).code == 0
    assert run_stage("augment", OUT, "data/augmented", cwd=work).code == 0
    return work / "data" / "augmented"


def featurize_fails(tmp_path: Path, augmented: Path, weights: Path, *names: str) -> str:
    """Run the featurize stage (the first to read the weights' tensors) with ``weights``;
    assert a clean failure naming the file and ``names``, and no features left behind."""
    work = workdir(tmp_path / "work", tmp_path / "unused.zip", **{"model.weights": str(weights)})
    (work / "data").mkdir()
    (work / "data" / "augmented").symlink_to(augmented)
    result = run_stage("featurize", "data/augmented", "data/features", cwd=work)
    return assert_user_error(result, str(weights), *names, absent=(work / "data" / "features",))


@pytest.mark.parametrize("state, named", [
    ({"conv1.weight": torch.zeros(64, 3, 7, 7)},
     "not a vgg16 state_dict: missing key 'features.0.weight'"),
    (vgg16_state(**{"features.12.weight": (256, 128, 3, 3)}),
     "not a vgg16 state_dict: 'features.12.weight' has shape (256, 128, 3, 3), "
     "expected (256, 256, 3, 3)"),
    ({**vgg16_state(), "features.0.weight": [1, 2]},
     "not a vgg16 state_dict: 'features.0.weight' is a list, not a tensor"),
    ([torch.zeros(3)], "expected a state_dict, got list"),
])
def test_weights_file_of_the_wrong_architecture(tmp_path, augmented, state, named):
    """``model.weights`` is only checked to exist in params; the featurize stage, which loads
    the tensors, names the file and the first tensor that does not fit."""
    weights = tmp_path / "weights.pt"
    torch.save(state, weights)
    line = featurize_fails(tmp_path, augmented, weights, named)
    assert line == f"error: {weights}: {named}"


def test_weights_file_with_tensors_a_part_does_not_use_is_read(tmp_path):
    """Only the tensors a part needs are read (memory-mapped): a classifier of another size, or
    tensors of layers that have none, do not stop it."""
    state = {**vgg16_state(), "features.1.running_mean": torch.zeros(64),
             "classifier.6.weight": torch.zeros(10, 4096)}
    state["features.28.weight"] = torch.ones(512, 512, 3, 3)
    torch.save(state, tmp_path / "weights.pt")
    vgg = backbones.get("vgg16")
    frozen = backbones.frozen_part(vgg, str(tmp_path / "weights.pt"), 13)
    assert torch.equal(frozen[28].weight, torch.ones(512, 512, 3, 3))
    rest = backbones.trainable_part(vgg, str(tmp_path / "weights.pt"), 12)
    assert torch.equal(rest[0].weight, torch.ones(512, 512, 3, 3))


class TouchOnLoad:
    """Pickles to a call of ``Path.touch``: unpickling it would create ``path``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickled_code_in_a_weights_file_is_never_run(tmp_path, augmented, writer):
    marker = tmp_path / "pwned"
    payload = {"features.0.weight": TouchOnLoad(marker)}
    weights = tmp_path / "weights.pt"
    if writer == "torch.save":
        torch.save(payload, weights)
    else:
        weights.write_bytes(pickle.dumps(payload))
    line = featurize_fails(tmp_path, augmented, weights, "not a weights-only state_dict",
                           "refused", "could run code")
    assert "weights_only=False" not in line and "\x1b" not in line
    with pytest.raises(FashionError, match="weights-only"):
        backbones.read_weights(weights)
    for part in (backbones.frozen_part, backbones.trainable_part):
        with pytest.raises(FashionError, match="weights-only"):
            part(backbones.get("vgg16"), str(weights), 12)
    with pytest.raises(FashionError, match="not a fashiondvc model file"):
        load_net(weights)
    assert not marker.exists()
    pickle.loads(pickle.dumps(payload))  # the payload is live: plain unpickling runs it
    assert marker.exists()


def test_pickled_code_in_a_checkpoint_is_never_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "train.pt"
    torch.save({"net": TouchOnLoad(marker)}, checkpoint)
    features = {"trunk": np.zeros((8, 4, 1, 1), dtype=np.float32)}
    data = FeatureSet(features, np.arange(8), np.zeros((8, 1), np.float32), np.ones((8, 1), bool))
    from fashiondvc.net import AttributeNet

    net = AttributeNet(torch.nn.Sequential(), {"trunk": (4, 1, 1)}, hidden=4, n_labels=1)
    history = fit(net, data, data, TrainConfig(k=1, lr=1e-3, epochs=1, batch_size=4),
                  checkpoint=checkpoint)
    assert len(history) == 1
    assert "cannot resume" in capsys.readouterr().err
    assert not marker.exists()


# --------------------------------------------------------------------------- end to end




def test_skipped_photo_is_reported_end_to_end(reference):
    """The reference ``dvc repro`` runs on a sample with photo 5 truncated, ``on_corrupt: skip``."""
    metrics = json.loads((reference / "metrics" / "metrics.json").read_text())
    assert metrics["n_skipped"] == 1
    skipped = pd.read_csv(reference / "data" / "ingested" / "skipped.csv")
    assert skipped["image_id"].tolist() == [5]
    assert "images/000005.jpg" in skipped["reason"][0]
    assert metrics["n_train"] + metrics["n_test"] == 23 * 2  # photo + 1 copy each


def test_pickled_code_in_the_imagenet_cache_is_never_run(tmp_path, monkeypatch):
    """torchvision itself would unpickle ``$TORCH_HOME/hub/checkpoints/vgg16-*.pth`` freely."""
    from torchvision.models import VGG16_Weights

    marker = tmp_path / "pwned"
    cached = tmp_path / "hub" / "checkpoints" / VGG16_Weights.IMAGENET1K_V1.url.rsplit("/")[-1]
    cached.parent.mkdir(parents=True)
    torch.save({"features.0.weight": TouchOnLoad(marker)}, cached)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("torch.hub.download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network unreachable")))
    with pytest.raises(FashionError, match="refused to load it") as error:
        backbones.frozen_part(backbones.get("vgg16"), "imagenet", 1)
    assert str(error.value).startswith(f"{cached}: not a weights-only state_dict")
    assert not marker.exists()


def test_bad_input_through_dvc_repro(pipeline_repo):
    """DVC shows the stage's one error line, exits non-zero and records nothing."""
    set_params(pipeline_repo / "params.yaml", {"model.frozen_convs": 14})
    result = run(["dvc", "repro"], pipeline_repo, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "error: model.frozen_convs: must be in [0, 13], got 14" in output
    assert "Traceback" not in output
    assert not (pipeline_repo / "data" / "ingested").exists()
    assert not (pipeline_repo / "dvc.lock").exists()


def listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses with a socket LISTENing on ``port`` (from /proc/net)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net")
def test_fashiondvc_serve_listens_on_loopback_only_by_default(tmp_path):
    from searchkit import make_collection

    collection = make_collection(tmp_path)
    port = closed_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "fashiondvc.cli", "serve", "--port", str(port),
         "--index", str(collection.index_dir), "--model", str(collection.model)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not listening_addresses(port):
            assert server.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server never listened"
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert page.status == 200
        # 127.0.0.1 as /proc/net/tcp writes it (little-endian hex); nothing on 0.0.0.0 or ::
        assert listening_addresses(port) == {"0100007F"}
    finally:
        server.terminate()
        server.wait(timeout=30)
    # waitress, not Flask's development server, and nothing else on stderr
    assert server.stderr.read() == ""
