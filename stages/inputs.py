"""Stage inputs: resolve the external inputs (download the archive if absent), fingerprint them."""

import sys

from fashiondvc.errors import run_main
from fashiondvc.inputs import write_fingerprints
from fashiondvc.params import load_params


def main() -> None:
    for name, value in write_fingerprints(load_params(), sys.argv[1]).items():
        print(f"inputs: {name} {value.get('sha256', value.get('weights', ''))[:16] or '-'}")


if __name__ == "__main__":
    run_main(main)
