"""``fashiondvc serve``: the HTTP API (Flask's test client), then the page in headless Chromium."""

import io
import os
import shutil
import struct
import threading
import zlib
from pathlib import Path

import pytest
from searchkit import LABELS, make_collection
from werkzeug.serving import make_server

from fashiondvc.search import Searcher
from fashiondvc.web import create_app

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TOP = 5
MAX_UPLOAD = 100_000


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("web"), split_label="red")


@pytest.fixture(scope="module")
def app(collection):
    searcher = Searcher.open(collection.index_dir, collection.model)
    return create_app(searcher, top=TOP, max_upload=MAX_UPLOAD)


@pytest.fixture
def client(app):
    return app.test_client()


def upload(client, data: bytes, name: str, **form):
    return client.post("/api/query", data={"photo": (io.BytesIO(data), name), **form},
                       content_type="multipart/form-data")


def test_page_lists_every_attribute_as_a_chip(client):
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for name in LABELS:
        assert f'data-name="{name}"' in html
    assert "24 photos" in html


def test_upload_answers_attributes_and_similar_photos(client, collection):
    answer = upload(client, (collection.images / "000004.jpg").read_bytes(), "me.jpg",
                    where="red")
    assert answer.status_code == 200
    body = answer.get_json()
    assert sorted(a["name"] for a in body["attributes"]) == sorted(LABELS)
    assert 0 < len(body["results"]) <= TOP and body["exclude"] == [3]
    assert all("red" in r["attributes"] for r in body["results"])
    again = client.post("/api/similar", json={"embedding": body["embedding"], "where": [],
                                              "exclude": body["exclude"], "top": 3})
    assert again.status_code == 200 and len(again.get_json()["results"]) == 3


def png_header(width: int, height: int) -> bytes:
    """The start of a PNG claiming ``width`` x ``height`` pixels (a decompression bomb's look)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))


@pytest.mark.parametrize(("data", "name", "status", "message"), [
    (b"hello", "notes.txt", 415, "notes.txt: not a readable image (not a JPEG, PNG"),
    (png_header(10_000, 5_000), "wide.png", 400, "too many pixels (10000x5000)"),
    (png_header(30_000, 30_000), "bomb.png", 400, "too many pixels"),
    (b"<html>not a photo</html>", "fake.jpg", 415, "fake.jpg: not a readable image"),
    (b"\xff\xd8\xff\xe0 truncated", "cut.jpg", 415, "not a readable image"),
    (b"\xff\xd8\xff" + bytes(MAX_UPLOAD), "huge.jpg", 413, "larger than"),
])
def test_bad_uploads_get_a_clear_4xx(client, data, name, status, message):
    answer = upload(client, data, name)
    assert answer.status_code == status
    assert message in answer.get_json()["error"]


def test_bad_requests_are_4xx_with_a_message(client):
    assert client.post("/api/query", data={}).status_code == 400
    unknown = client.get("/api/photo/1?where=red,sparkly")
    assert unknown.status_code == 400 and "sparkly" in unknown.get_json()["error"]
    assert client.get("/api/photo/1?top=0").status_code == 400
    assert client.get("/api/photo/99").status_code == 404
    assert client.post("/api/similar", data="nope").status_code == 400
    short = client.post("/api/similar", json={"embedding": [1.0, 2.0]})
    assert short.status_code == 400 and "embedding" in short.get_json()["error"]


def test_collection_files_are_served_by_row_only(client, collection):
    photo = client.get("/photos/0")
    assert photo.status_code == 200
    assert photo.data == (collection.images / "000001.jpg").read_bytes()
    for url in ("/photos/24", "/photos/-1", "/photos/../../etc/passwd",
                "/photos/%2e%2e%2fnet.pt", "/photos/0/../../net.pt"):
        answer = client.get(url)
        assert answer.status_code == 404, url
        assert answer.data != (collection.model).read_bytes()
    rows = client.get("/api/collection?n=6&seed=2").get_json()["rows"]
    assert len(set(rows)) == 6 and all(0 <= r < 24 for r in rows)


# --------------------------------------------------------------------------- the page in Chromium


@pytest.fixture(scope="module")
def live_url(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (see .ci/install-browser)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_the_page_in_a_browser(browser, live_url, collection, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live_url)
    page.wait_for_selector("#picks img")
    assert page.locator(".chip").count() == len(LABELS)

    page.set_input_files("#photo-input", str(collection.images / "000004.jpg"))
    page.wait_for_selector("#results .card")
    assert page.locator("#bars .bar").count() == len(LABELS)
    widths = page.eval_on_selector_all("#bars .fill", "els => els.map(e => e.style.width)")
    assert all(w.endswith("%") for w in widths) and len(set(widths)) > 1
    assert page.locator("#results .card").count() == TOP
    assert page.eval_on_selector_all(
        "#results .card img", "els => els.every(e => e.complete && e.naturalWidth > 0)")

    page.click('.chip[data-name="red"]')
    page.wait_for_function("document.querySelector('#status').textContent.includes('red')")
    assert "active" in page.get_attribute('.chip[data-name="red"]', "class")
    tags = page.locator("#results .card .tags").all_inner_texts()
    index = collection.index
    n_red = int((index.probs[:, LABELS.index("red")] >= index.threshold).sum())
    assert len(tags) == min(TOP, n_red - ("red" in index.predicted(3)))
    assert all("red" in t.split(", ") for t in tags)
    page.click('.chip[data-name="red"]')
    page.wait_for_function("!document.querySelector('#status').textContent.includes('red')")

    page.click("#results .card >> nth=0")
    page.wait_for_function("document.querySelector('#query-image').src.includes('/photos/')")

    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    page.set_input_files("#photo-input", str(notes))
    page.wait_for_selector("#message.error")
    assert "not a readable image" in page.inner_text("#message")
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + bytes(MAX_UPLOAD))
    page.set_input_files("#photo-input", str(big))
    page.wait_for_function("document.querySelector('#message').textContent.includes('larger')")
    # the server refuses it too when the page's own check is bypassed
    status = page.evaluate("""async () => {
        const form = new FormData();
        form.append("photo", new Blob([new Uint8Array(300000)]), "big.jpg");
        const r = await fetch("/api/query", {method: "POST", body: form});
        return [r.status, (await r.json()).error];
    }""")
    assert status[0] == 413 and "larger than" in status[1]
    assert errors == []


#: JSON values of every type, for the type-checking test below.
WRONG_VALUES = [5, -1, 1.5, True, None, "x", [1], ["red", 2], {"a": 1}, [[0.1]], 10**30]


#: (field, value) pairs among those that are valid requests.
VALID = {("top", "5"), ("exclude", "[1]"), ("where", "None"), ("top", "None"),
         ("exclude", "None")}


@pytest.mark.parametrize("field", ["embedding", "where", "top", "exclude"])
@pytest.mark.parametrize("value", WRONG_VALUES, ids=repr)
def test_similar_answers_400_json_for_every_wrong_type(client, field, value):
    dim = len(client.get("/api/photo/0").get_json()["embedding"])
    body = {"embedding": [0.5] * dim, "where": [], "top": 3, "exclude": []}
    assert client.post("/api/similar", json=body).status_code == 200
    body[field] = value
    answer = client.post("/api/similar", json=body)
    expected = 200 if (field, repr(value)) in VALID else 400
    assert answer.status_code == expected, answer.get_data(as_text=True)
    if expected == 400:
        assert answer.get_json()["error"]


@pytest.mark.parametrize("value", WRONG_VALUES, ids=repr)
def test_similar_rejects_wrong_where_types_with_400(client, value):
    dim = len(client.get("/api/photo/0").get_json()["embedding"])
    answer = client.post("/api/similar", json={"embedding": [0.5] * dim, "where": value})
    body = answer.get_json()
    if value is None:  # no filter: every photo may come back
        assert answer.status_code == 200, body
        assert body["where"] == [] and len(body["results"]) == TOP
    elif isinstance(value, str):  # a string filter is a valid type; "x" is no attribute
        assert answer.status_code == 400
        assert body["error"].startswith("--where: unknown attribute 'x'"), body
    else:
        assert answer.status_code == 400
        assert body["error"].startswith("where: expected attribute names"), body


@pytest.mark.parametrize("body", [5, [1], "text", None, {"embedding": [1.0], "color": "red"}],
                         ids=repr)
def test_similar_rejects_bodies_that_are_not_the_documented_object(client, body):
    answer = client.post("/api/similar", json=body)
    assert answer.status_code == 400


@pytest.mark.parametrize("query", ["top=abc", "top=1.5", "top=0", "where=nosuchlabel",
                                   "top=999999999999999999999"])
def test_photo_query_string_errors_are_400(client, query):
    answer = client.get(f"/api/photo/0?{query}")
    assert answer.status_code == 400
    assert "error" in answer.get_json()


def test_text_box_route_answers_words_and_explains_unknown_ones(client, collection):
    answer = client.get("/api/text?q=red%20and%20blue&top=50").get_json()
    assert answer["include"] == ["red", "blue"]
    assert all({"red", "blue"} <= set(r["attributes"]) for r in answer["results"])
    assert answer["matches"] == len(answer["results"])
    bad = client.get("/api/text?q=sparkly")
    assert bad.status_code == 400 and "unknown word 'sparkly'" in bad.get_json()["error"]
    assert client.get("/api/text?q=").status_code == 400
    page = client.get("/").get_data(as_text=True)
    assert 'id="text-input"' in page and "/api/text" in page


def test_a_query_is_addressed_by_its_url_and_back_returns_to_it(browser, live_url, collection):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_url}/?photo=3&where=red")
    page.wait_for_selector("#results .card")
    page.wait_for_load_state("networkidle")
    assert page.get_attribute("#query-image", "src").endswith("/photos/3")
    assert "active" in page.get_attribute('.chip[data-name="red"]', "class")
    tags = page.locator("#results .card .tags").all_inner_texts()
    assert tags and all("red" in t.split(", ") for t in tags)
    assert page.eval_on_selector_all(  # thumbnails are real images once the page settles
        "#results .card img", "els => els.every(e => e.complete && e.naturalWidth > 0)")
    first = int(page.get_attribute("#results .card >> nth=0", "data-row"))
    page.click("#results .card >> nth=0")
    page.wait_for_function(f"location.search.includes('photo={first}')")
    assert "where=red" in page.evaluate("location.search")
    page.go_back()
    page.wait_for_function("document.querySelector('#query-image').src.endsWith('/photos/3')")
    assert page.evaluate("location.search") == "?photo=3&where=red"
    page.goto(f"{live_url}/?q=red%2C%20no%20blue")
    page.wait_for_function("document.querySelector('#status').textContent.includes('match')")
    assert page.input_value("#text-input") == "red, no blue"
    tags = page.locator("#results .card .tags").all_inner_texts()
    assert all("red" in t.split(", ") and "blue" not in t.split(", ") for t in tags)
    assert errors == []


# ------------------------------------------------------------------- photo kinds, names, links

def _photo_bytes(fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (180, 40, 50)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "name"), [
    ("JPEG", "photo.jfif"), ("JPEG", "photo.JPG"), ("JPEG", "photo.jpe"), ("JPEG", "photo.pjpeg"),
    ("JPEG", "photo.pjp"), ("JPEG", "blob"), ("JPEG", "photo.png"), ("PNG", "photo.PNG"),
    ("WEBP", "photo.webp"), ("AVIF", "photo.avif"), ("GIF", "photo.gif"), ("BMP", "photo.bmp"),
    ("TIFF", "photo.tif"),
])
def test_uploads_are_accepted_by_content_whatever_their_name(client, fmt, name):
    """photo.jfif was a 415: what the page's file picker offers, the server reads."""
    answer = upload(client, _photo_bytes(fmt), name)
    assert answer.status_code == 200, answer.get_json()


@pytest.mark.parametrize(("data", "name", "message"), [
    (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", "IMG_0001.HEIC", "(a HEIC image); send a JPEG"),
    (b"8BPS\0\x01" + bytes(30), "layers.psd", "(a Photoshop image); send a JPEG"),
    (b"%PDF-1.4\n", "scan.pdf", "(not a JPEG, PNG, WebP, AVIF, GIF, BMP or TIFF image)"),
])
def test_other_formats_are_refused_with_their_name(client, data, name, message):
    answer = upload(client, data, name)
    assert answer.status_code == 415
    assert message in answer.get_json()["error"]


def test_the_file_picker_offers_what_the_server_reads(client):
    from fashiondvc.preprocess import IMAGE_SUFFIXES

    html = client.get("/").get_data(as_text=True)
    accept = html.split('id="photo-input" type="file" accept="')[1].split('"')[0].split(",")
    assert {".jfif", ".jpe", ".pjpeg", ".pjp", ".webp"} <= set(accept)
    assert set(IMAGE_SUFFIXES) <= set(accept)


def test_symlinks_and_odd_names_are_indexed_and_served_by_one_rule(tmp_path):
    """search.images follows links to files and folders, wherever they point: the index ranks
    such a photo and the server serves it (it answered 400 "outside the collection folder").
    A link loop ends, a broken link is skipped with a message, a file reached twice is indexed
    once; a name that is not UTF-8 is indexed, served and printed."""
    from fashiondvc.index import build_index

    base = make_collection(tmp_path / "c")
    images = base.images
    outside = tmp_path / "elsewhere"
    (outside / "more").mkdir(parents=True)
    shutil.copy(images / "000001.jpg", outside / "linked.jpg")
    (outside / "linked.jpg").write_bytes((outside / "linked.jpg").read_bytes() + b"\0")
    shutil.copy(images / "000002.jpg", outside / "more" / "deep.jpg")
    (images / "outside.jpg").symlink_to(outside / "linked.jpg")
    (images / "folder").symlink_to(outside / "more", target_is_directory=True)
    (images / "loop").symlink_to(images, target_is_directory=True)
    (images / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    (images / "again.jpg").symlink_to(images / "000003.jpg")
    latin1 = os.fsdecode(b"robe caf\xe9.jpg")
    shutil.copy(images / "000004.jpg", images / latin1)
    (images / "photo.jfif").write_bytes(_photo_bytes("JPEG"))
    (images / "photo.WEBP").write_bytes(_photo_bytes("WEBP"))

    index, counts = build_index(base.model, images, tmp_path / "index")
    for name in ("outside.jpg", "folder/deep.jpg", latin1, "photo.jfif", "photo.WEBP"):
        assert name in index.paths, name
    assert "broken.jpg" in index.skipped and "again.jpg" in index.skipped
    assert not any(p.startswith("loop/") for p in index.paths)
    assert len(index) == 24 + 5

    client = create_app(Searcher.open(tmp_path / "index", base.model)).test_client()
    for name, source in [("outside.jpg", outside / "linked.jpg"),
                         ("folder/deep.jpg", outside / "more" / "deep.jpg"),
                         (latin1, images / latin1), ("photo.jfif", images / "photo.jfif")]:
        row = index.paths.index(name)
        photo = client.get(f"/photos/{row}")
        assert photo.status_code == 200, (name, photo.get_json())
        assert photo.data == source.read_bytes()
        assert photo.mimetype == "image/jpeg"
        assert client.get(f"/api/photo/{row}").status_code == 200
    listing = client.get("/api/text?q=red&top=40").get_json()["results"]
    assert "robe caf\\xe9.jpg" in [hit["path"] for hit in listing]
