"""``fashiondvc serve``: the search engine as a small local web page (Flask).

Routes
------
``GET /``
    The page (``templates/search.html``).
``POST /api/query``
    Multipart ``photo`` (at most `MAX_UPLOAD_BYTES`), optional ``where`` and ``top``: the
    photo's attributes and its most similar collection photos (`Searcher.query`). The photo is
    accepted by its content (`fashiondvc.preprocess.IMAGE_FORMATS`: JPEG whatever its name,
    ``.jfif`` included, PNG, WebP, AVIF, GIF, BMP, TIFF), not by its file name.
``GET /api/text?q=<words>``
    Collection photos matching words such as "red stripes, no scarf" (`Searcher.text`), with
    optional ``top``.
``GET /api/photo/<row>``
    The same for a collection photo, which is left out of its own results.
``POST /api/similar``
    JSON ``{embedding, where, top, exclude}`` from an earlier answer: new results, e.g. filtered.
``GET /api/collection``
    A few collection rows to pick from (``n``, ``seed``).
``GET /photos/<row>``
    A collection photo, by row number only: the file the index recorded for that row
    (symbolic links followed, as the indexer followed them); paths never come from the
    client.

User errors answer JSON ``{"error": message}`` with a 4xx status, never a server error.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import numpy as np
from flask import Flask, jsonify, render_template, request, send_file
from PIL import Image
from werkzeug.exceptions import HTTPException

from fashiondvc.errors import FashionError
from fashiondvc.preprocess import (
    FORMAT_NAMES,
    IMAGE_FORMATS,
    IMAGE_SUFFIXES,
    display_name,
    image_format,
)
from fashiondvc.search import Searcher, default_top

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_TOP = 100
#: The file picker's ``accept``: the suffixes, and the MIME types browsers give those files.
ACCEPT = ",".join([*IMAGE_SUFFIXES, "image/jpeg", "image/png", "image/webp", "image/avif",
                   "image/gif", "image/bmp", "image/tiff"])
#: Photo names the product cannot read, with the reason given instead of "not an image".
UNREADABLE = {".heic": "HEIC", ".heif": "HEIF", ".jxl": "JPEG XL", ".svg": "SVG",
              ".psd": "Photoshop"}


def _error(status: int, message: str):
    return jsonify({"error": message}), status


def _int(value: object, default: int, name: str = "top", low: int = 1,
         high: int = MAX_TOP) -> int:
    """A whole number from a form, query or JSON field; `FashionError` when out of range."""
    if value in (None, ""):
        return default
    if isinstance(value, bool):
        value = repr(value)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise FashionError(f"{name}: expected a whole number, got {value!r}") from None
    if not low <= number <= high:
        raise FashionError(f"{name}: must be in {low}..{high}, got {number}")
    return number


def _where(value: object, name: str = "where") -> str | list[str]:
    """A ``where`` filter: absent, a comma-separated string, or a list of attribute names."""
    if value is None:
        return []
    if isinstance(value, str) or (isinstance(value, list)
                                  and all(isinstance(v, str) for v in value)):
        return value
    raise FashionError(f"{name}: expected attribute names (a string or a list of strings), "
                       f"got {type(value).__name__}")


def _json_int(body: dict, key: str, default: int, low: int = 1, high: int = MAX_TOP) -> int:
    """``body[key]`` as a JSON integer (not a bool, float or string) in ``low..high``."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise FashionError(f"{key}: expected a whole number, got {type(value).__name__}")
    return _int(value, default, key, low, high)


def create_app(searcher: Searcher, *, top: int = 10,
               max_upload: int = MAX_UPLOAD_BYTES) -> Flask:
    """The web app over ``searcher``; ``top`` results per query by default."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_upload
    index = searcher.index
    lock = threading.Lock()  # one network forward pass at a time: CPU threads are shared
    max_mb = f"{max_upload / 2 ** 20:g} MB"

    @app.errorhandler(FashionError)
    def user_error(exc: FashionError):
        return _error(400, str(exc))

    @app.errorhandler(413)
    def too_large(exc: HTTPException):
        return _error(413, f"the upload is larger than {max_mb}: choose a smaller photo")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def bug(exc: Exception):  # still JSON, never an HTML traceback page
        app.logger.exception("unexpected error")
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/")
    def page():
        return render_template("search.html", labels=index.labels, n_photos=len(index),
                               top=top, max_upload=max_upload, max_mb=max_mb,
                               accept=ACCEPT, formats=FORMAT_NAMES)

    @app.post("/api/query")
    def query_upload():
        upload = request.files.get("photo")
        if upload is None or not upload.filename:
            return _error(400, "choose a photo to upload")
        data = upload.read(max_upload + 1)
        if len(data) > max_upload:
            return _error(413, f"the upload is larger than {max_mb}: choose a smaller photo")
        try:
            kind = image_format(data)
        except Image.DecompressionBombError:
            kind = "JPEG"  # a format Pillow knows, far too large: the query says so (400)
        if kind not in IMAGE_FORMATS:
            suffix = Path(upload.filename).suffix.lower()
            what = (f"a {kind} image" if kind else f"a {UNREADABLE[suffix]} image"
                    if suffix in UNREADABLE else f"not a {FORMAT_NAMES} image")
            return _error(415, f"{upload.filename}: not a readable image ({what}); send a "
                               f"{FORMAT_NAMES} photo")
        n = _int(request.form.get("top"), top)
        where = _where(request.form.get("where"))
        with lock:
            result = searcher.query(data, upload.filename, top=n, where=where)
        return jsonify(result)

    @app.get("/api/text")
    def query_text():
        text = request.args.get("q", "")
        if not text.strip():
            return _error(400, "q: type some words, e.g. red stripes, no scarf")
        return jsonify(searcher.text(text, top=_int(request.args.get("top"), top)))

    @app.get("/api/photo/<int:row>")
    def query_row(row: int):
        if not 0 <= row < len(index):
            return _error(404, f"no photo {row} in the collection")
        return jsonify(searcher.query_row(row, top=_int(request.args.get("top"), top),
                                          where=_where(request.args.get("where"))))

    @app.post("/api/similar")
    def similar():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, "expected a JSON object with an 'embedding' list")
        unknown = sorted(set(body) - {"embedding", "where", "top", "exclude"})
        if unknown:
            return _error(400, f"{unknown[0]}: unknown field (embedding, where, top, exclude)")
        embedding = body.get("embedding")
        if not isinstance(embedding, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in embedding):
            return _error(400, "embedding: expected a list of numbers")
        exclude = body.get("exclude")
        exclude = [] if exclude is None else exclude
        if not isinstance(exclude, list) or not all(
                isinstance(r, int) and not isinstance(r, bool) for r in exclude):
            return _error(400, "exclude: expected a list of row numbers")
        where = _where(body.get("where"))
        results = searcher.similar(embedding, top=_json_int(body, "top", top), where=where,
                                   exclude=exclude)
        return jsonify({"where": where, "results": results})

    @app.get("/api/collection")
    def collection():
        n = _int(request.args.get("n"), 12, "n")
        seed = _int(request.args.get("seed"), 0, "seed", 0, 2 ** 31)
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(index), size=min(n, len(index)), replace=False))
        return jsonify({"rows": [int(r) for r in rows], "n_photos": len(index)})

    @app.get("/photos/<int:row>")
    def photo(row: int):
        if not 0 <= row < len(index):
            return _error(404, f"no photo {row} in the collection")
        path = index.file(row)
        try:
            data = path.read_bytes()
        except OSError:
            return _error(404, f"photo {row} is no longer in the collection folder")
        # from the bytes, not the name: a .jfif is image/jpeg, a name need not be UTF-8
        mimetype = Image.MIME.get(image_format(data) or "", "application/octet-stream")
        return send_file(io.BytesIO(data), mimetype=mimetype, max_age=3600,
                         etag=hashlib.sha256(data).hexdigest(),
                         download_name=display_name(path.name))

    return app


def serve(index_dir: str | os.PathLike = "data/index", model_path: str | os.PathLike =
          "models/net.pt", *, host: str = "127.0.0.1", port: int = 8000,
          top: int | None = None) -> None:
    """Load the index and model (a file or a ``models:/`` registry URI), then serve the page
    until interrupted, with waitress (a production WSGI server; Flask's own is for development).
    """
    import logging

    from waitress import serve as waitress_serve

    if not 0 <= port <= 65535:
        raise FashionError(f"--port: must be in 0..65535, got {port}")
    searcher = Searcher.open(index_dir, model_path)
    app = create_app(searcher, top=_int(top, default_top(), "--top"))
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach it can query the collection")
    print(f"fashiondvc search: {len(searcher.index)} photos; open http://{host}:{port}/ "
          "(Ctrl-C stops)")
    logging.getLogger("waitress").setLevel(logging.WARNING)  # the line above says where
    try:
        waitress_serve(app, host=host, port=port, threads=4)
    except OSError as exc:
        raise FashionError(f"cannot serve on {host}:{port} ({exc.strerror or exc})") from None
