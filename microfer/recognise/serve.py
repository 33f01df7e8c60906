"""A local web page for `predict`: upload a clip, see the emotion, its scores and the motion curve.

Python's own `http.server` (threaded) serves one static page (`assets/web/index.html`) and
one JSON endpoint; nothing else to install, nothing fetched from the internet by the page.

    GET  /              the page
    POST /api/predict   body: the file's bytes; header X-Filename: its name (for the suffix);
                        ?explain=1 adds the occlusion maps (`microfer.recognise.explain`) as PNG data URLs
                        -> 200 Prediction.to_dict() | 400/413/415 {"error": "..."}

Uploads go to a temporary file that is deleted after the prediction. One `Predictor` serves
every request, one request at a time (its models are not thread-safe, and two clips at once
would only share the same two cores).
"""

from __future__ import annotations

import json
import tempfile
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

from microfer.errors import MicroferError

PAGE = Path(__file__).parents[1] / "assets" / "web" / "index.html"
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
CLIP_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class _Handler(BaseHTTPRequestHandler):
    server: "PredictServer"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: dict) -> None:
        self._send(status, json.dumps(doc).encode("utf-8"), "application/json")

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif self.path == "/api/info":
            self._json(HTTPStatus.OK, self.server.info)
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {self.path}"})

    def do_POST(self):  # noqa: N802
        from urllib.parse import parse_qs, urlsplit

        url = urlsplit(self.path)
        if url.path != "/api/predict":
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path}"})
        explain = parse_qs(url.query).get("explain", ["0"])[0] in ("1", "true", "yes")
        name = Path(self.headers.get("X-Filename", "upload")).name or "upload"
        suffix = Path(name).suffix.lower()
        if suffix not in CLIP_SUFFIXES + IMAGE_SUFFIXES:
            return self._json(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                {
                    "error": f"{name}: not a video or face image microfer reads "
                    f"({', '.join(CLIP_SUFFIXES + IMAGE_SUFFIXES)})"
                },
            )
        try:
            size = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            size = -1
        if size <= 0:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": f"{name}: empty upload"})
        if size > MAX_UPLOAD_BYTES:
            return self._json(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {
                    "error": f"{name}: {size} bytes, more than the {MAX_UPLOAD_BYTES} this page takes"
                },
            )
        data = self.rfile.read(size)
        with tempfile.TemporaryDirectory(prefix="microfer-serve-") as tmp:
            clip = Path(tmp) / f"upload{suffix}"
            clip.write_bytes(data)
            try:
                with self.server.lock:
                    if suffix in IMAGE_SUFFIXES:  # a face image: the shipped image model
                        doc = self.server.image_predictor().predict(clip, name=name).to_dict()
                        doc["image"] = name
                    else:
                        result = self.server.predictor.predict(
                            clip, explain=Path(tmp) / "explain" if explain else None
                        )
                        doc = result.to_dict()
                        doc["explanation"] = {
                            Path(p).stem: _data_url(Path(p)) for p in result.explanation
                        }
            except MicroferError as exc:
                return self._json(
                    HTTPStatus.BAD_REQUEST, {"error": str(exc).replace(str(clip), name)}
                )
        doc["file"] = name
        self._json(HTTPStatus.OK, doc)


def _data_url(png: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


class PredictServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], predictor, verbose: bool = False):
        super().__init__(address, _Handler)
        self.predictor, self.verbose, self.lock = predictor, verbose, threading.Lock()
        self._images = None
        self.info = {
            "classes": list(predictor.classes),
            "runtime": predictor.runtime,
            "bundle": Path(str(predictor.bundle.path)).name,
        }

    def image_predictor(self):
        """The shipped image model, loaded on the first face image (clips never pay for it)."""
        if self._images is None:
            from microfer.recognise.images import DefaultImagePredictor

            self._images = DefaultImagePredictor()
        return self._images

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def make_server(
    model,
    host: str = "127.0.0.1",
    port: int = 8000,
    verbose: bool = False,
    num_threads: Optional[int] = None,
) -> PredictServer:
    """A server for bundle `model` (a folder or a `Predictor`), bound but not yet serving:
    call `.serve_forever()` (port 0 picks a free port; `.url` says which)."""
    from microfer.recognise.predict import Predictor

    predictor = model if isinstance(model, Predictor) else Predictor(model, num_threads=num_threads)
    return PredictServer((host, port), predictor, verbose=verbose)
