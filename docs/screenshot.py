"""Take docs/search.png: the search page in headless Chromium, after a query and one filter.

Run it in a checkout where ``dvc repro`` has built ``models/net.pt`` and ``data/index``::

    python docs/screenshot.py --photo data/ingested/images/000005.jpg --where white

Needs Chromium (``.ci/install-browser``) and Playwright for Python.
"""

from __future__ import annotations

import argparse
import io
import logging
import threading

from PIL import Image
from playwright.sync_api import sync_playwright
from werkzeug.serving import make_server

from fashiondvc.search import Searcher
from fashiondvc.web import create_app

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", required=True, help="the photo to upload")
    parser.add_argument("--where", default="", help="a comma-separated filter to click")
    parser.add_argument("--index", default="data/index")
    parser.add_argument("--model", default="models/net.pt")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--out", default="docs/search.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(Searcher.open(args.index, args.model), top=args.top)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(f"http://127.0.0.1:{server.server_port}/")
            page.wait_for_selector("#picks img")
            page.set_input_files("#photo-input", args.photo)
            page.wait_for_selector("#results .card")
            for name in filter(None, args.where.split(",")):
                page.click(f'.chip[data-name="{name}"]')
                page.wait_for_function(
                    f"document.querySelector('#status').textContent.includes('{name}')")
            page.wait_for_function("[...document.images].every(i => i.complete)")
            shot = page.screenshot(full_page=True)
            browser.close()
    finally:
        server.shutdown()
    # the page is flat colours: a 256-colour palette keeps it sharp at a third of the size
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
