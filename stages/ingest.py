"""Stage ingest: the archive -> labels.csv, images/, manifest.json."""

import sys

from fashiondvc.dataset import ingest
from fashiondvc.errors import run_main
from fashiondvc.io import repo_path
from fashiondvc.params import load_params


def main() -> None:
    data = load_params().data
    archive = repo_path(data.archive)  # the inputs stage downloaded it if it was absent
    report = ingest(archive, sys.argv[1], sha256=data.sha256, on_corrupt=data.on_corrupt)
    print(f"ingest: {report.n_images} images, {report.n_attributes} attributes, "
          f"{len(report.skipped)} skipped, from {archive}")
    if not data.sha256 and archive.is_file():
        print(f"ingest: to pin this archive, set data.sha256: {report.archive_sha256}")


if __name__ == "__main__":
    run_main(main)
