"""Test hook: park one stage at a fixed point so a test can SIGKILL it there.

Active only when ``FASHIONDVC_TEST_HANG=<stage>`` is set and this process runs
``python -m stages.<stage>`` (tests/faultkit.py puts this folder on PYTHONPATH for
`dvc repro`). At the hang point the process writes its pid to
``$FASHIONDVC_TEST_HANG_MARKER`` and sleeps until killed:

- ingest: at the 5th decoded image (the ingested folder is half-written in its .tmp- sibling)
- augment: at the 5th image appended to a shard
- featurize: at the 2nd batch (trunk.npy, side.npy and colour.npy half-written)
- train: right after the checkpoint of epoch 1 is saved
- evaluate: after the metrics files are written, before the MLflow run is logged
- index: when the finished index is about to be saved
"""

import os
import sys
import time
from pathlib import Path

_STAGE = os.environ.get("FASHIONDVC_TEST_HANG")


def _park() -> None:
    Path(os.environ["FASHIONDVC_TEST_HANG_MARKER"]).write_text(str(os.getpid()))
    while True:
        time.sleep(1)


def _after(count: int, function):
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == count:
            _park()
        return function(*args, **kwargs)

    return wrapper


def _install(stage: str) -> None:
    if stage == "ingest":
        import fashiondvc.dataset as module

        module.load_rgb = _after(5, module.load_rgb)
    elif stage == "augment":
        import fashiondvc.augment as module

        module.ShardWriter.append = _after(5, module.ShardWriter.append)
    elif stage == "featurize":
        import fashiondvc.features as module

        # call 1 is FeatureExtractor.shapes() (one black image), then one call per batch
        module.normalize = _after(3, module.normalize)
    elif stage == "train":
        import fashiondvc.train as module

        save = module.save_checkpoint

        def save_then_park(*args, **kwargs):
            save(*args, **kwargs)
            _park()

        module.save_checkpoint = save_then_park
    elif stage == "evaluate":
        import fashiondvc.tracking as module

        module.log_evaluation = _after(1, module.log_evaluation)
    elif stage == "index":
        import fashiondvc.index as module

        module.SearchIndex.save = _after(1, module.SearchIndex.save)


# dvc.yaml runs `python -m stages.<name>`; at start-up sys.argv[0] is still "-m", so look at
# the interpreter's own command line
_ARGV = getattr(sys, "orig_argv", sys.argv)
if _STAGE and (f"stages.{_STAGE}" in _ARGV
               or any(a.replace("\\", "/").endswith(f"stages/{_STAGE}.py") for a in _ARGV)):
    _install(_STAGE)
