"""Stage inputs: resolve the external inputs (download the archive if absent), fingerprint them."""

import sys

from fashiondvc.errors import run_main
from fashiondvc.inputs import write_fingerprints
from fashiondvc.params import load_params


def main() -> None:
    out_dir = sys.argv[1]
    for name, value in write_fingerprints(load_params(), out_dir).items():
        print(f"inputs: {name} {value.get('sha256', value.get('url', ''))[:16] or '-'}")


if __name__ == "__main__":
    run_main(main)
