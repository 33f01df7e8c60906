"""A local web page for `predict`: upload a clip, see the emotion, its scores and the motion curve.

Python's own `http.server` (threaded) serves one static page (`assets/web/index.html`) and
one JSON endpoint; nothing else to install, nothing fetched from the internet by the page.

    GET  /              the page
    POST /api/predict   body: the file's bytes; header X-Filename: its name (for the suffix);
                        ?explain=1 adds the occlusion maps (`microfer.recognise.explain`) as PNG data URLs
                        -> 200 Prediction.to_dict() | 400/413/415 {"error": "..."}

Uploads stream to a temporary file in chunks (never whole in memory), which is deleted
after the prediction. One `Predictor` serves every request, one at a time (its models are
not thread-safe, and two clips at once would only share the same cores); at most
`MAX_WAITING` requests wait for it, the rest get 503 at once, so a burst cannot pile up
uploads. The decoders' messages on fd 2 are held while one request decodes; the same lock
covers the server's own log lines, so they are neither captured nor quoted in another
request's error. Stalled connections time out (`TIMEOUT_S`); clients that leave are quiet;
an internal error is a 500 with a JSON message. Requests whose Host is not this server's
address are refused (another web site cannot drive a local server through the browser).
After each prediction the freed heap is handed back to the system, so memory returns to
its baseline after a burst (`microfer bench serve`).
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
from microfer.recognise.images import DefaultImagePredictor

PAGE = Path(__file__).parents[1] / "assets" / "web" / "index.html"
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
MAX_WAITING = 32  # requests queued behind the one predicting (uploads wait on disk); more get 503
TIMEOUT_S = 30  # a connection that sends nothing for this long is closed
CHUNK = 1 << 20
CLIP_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class _Handler(BaseHTTPRequestHandler):
    server: "PredictServer"
    timeout = TIMEOUT_S

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if self.server.verbose:
            with self.server.lock:  # never while a decoder's fd 2 is being held
                super().log_message(format, *args)

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client left or stalled: nothing to say

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if self.server.allowed_hosts is None or host in self.server.allowed_hosts:
            return True
        self._json(HTTPStatus.FORBIDDEN, {"error": f"host {host!r} is not this server"})
        return False

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
        if not self._host_ok():
            return
        if self.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif self.path == "/api/info":
            self._json(HTTPStatus.OK, self.server.info)
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {self.path}"})

    def do_POST(self):  # noqa: N802
        if not self._host_ok():
            return
        try:
            self._predict()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # a bug: the page still gets an answer it can show
            self._json(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"error": f"internal error ({type(exc).__name__}); please report it"},
            )

    def _predict(self) -> None:
        from urllib.parse import parse_qs, urlsplit

        url = urlsplit(self.path)
        if url.path != "/api/predict":
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path}"})
        explain = parse_qs(url.query).get("explain", ["0"])[0] in ("1", "true", "yes")
        name = Path(self.headers.get("X-Filename", "upload")).name or "upload"
        suffix = Path(name).suffix.lower()
        problem = _upload_problem(name, suffix, self.headers.get("Content-Length", "0"))
        if problem:
            self.close_connection = True  # the unread body must not be taken for a request
            return self._json(*problem)
        if not self.server.slots.acquire(blocking=False):
            self.close_connection = True
            return self._json(
                HTTPStatus.SERVICE_UNAVAILABLE,
                {"error": f"busy: {MAX_WAITING} clips are already waiting; try again shortly"},
            )
        try:
            self._json(*self._run(name, suffix, int(self.headers["Content-Length"]), explain))
        finally:
            self.server.slots.release()

    def _run(self, name: str, suffix: str, size: int, explain: bool) -> tuple[int, dict]:
        with tempfile.TemporaryDirectory(prefix="microfer-serve-") as tmp:
            clip = Path(tmp) / f"upload{suffix}"
            with open(clip, "wb") as f:
                left = size
                while left > 0:
                    chunk = self.rfile.read(min(CHUNK, left))
                    if not chunk:
                        raise ConnectionError("the client closed the upload")
                    f.write(chunk)
                    left -= len(chunk)
            try:
                with self.server.lock:
                    try:
                        doc = self._answer(
                            clip, name, suffix, Path(tmp) / "explain" if explain else None
                        )
                    finally:  # under the lock: no other prediction is allocating meanwhile
                        release_free_memory()
            except MicroferError as exc:
                return HTTPStatus.BAD_REQUEST, {"error": str(exc).replace(str(clip), name)}
        doc["file"] = name
        return HTTPStatus.OK, doc

    def _answer(self, upload: Path, name: str, suffix: str, explain) -> dict:
        if suffix in IMAGE_SUFFIXES:  # a face image: the shipped image model
            doc = self.server.image_predictor().predict(upload, name=name).to_dict()
            doc["image"] = name
            return doc
        result = self.server.predictor.predict(upload, explain=explain)
        doc = result.to_dict()
        doc["explanation"] = {Path(p).stem: _data_url(Path(p)) for p in result.explanation}
        return doc


def _upload_problem(name: str, suffix: str, length: str):
    """(status, error document) when an upload cannot be taken, else None."""
    if suffix not in CLIP_SUFFIXES + IMAGE_SUFFIXES:
        return (
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            {
                "error": f"{name}: not a video or face image microfer reads "
                f"({', '.join(CLIP_SUFFIXES + IMAGE_SUFFIXES)})"
            },
        )
    try:
        size = int(length)
    except ValueError:
        size = -1
    if size <= 0:
        return HTTPStatus.BAD_REQUEST, {"error": f"{name}: empty upload"}
    if size > MAX_UPLOAD_BYTES:
        return (
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            {"error": f"{name}: {size} bytes, more than the {MAX_UPLOAD_BYTES} this page takes"},
        )
    return None


def release_free_memory() -> None:
    """Hand the heap pages that are free again back to the system (glibc; elsewhere a no-op).

    Each handler thread allocates in its own glibc arena (up to 8 per core), and a decoded
    clip is tens of MB: freed, it stays in that arena, so after a burst the page would
    keep hundreds of MB it no longer uses (`microfer bench serve` measures it; see
    docs/live-and-web.md)."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _malloc_trim = lambda pad: 0  # noqa: E731
    _malloc_trim(0)


_malloc_trim = None


def _data_url(png: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


class PredictServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of uploads is queued, not reset

    def __init__(self, address: tuple[str, int], predictor, verbose: bool = False):
        super().__init__(address, _Handler)
        self.predictor, self.verbose, self.lock = predictor, verbose, threading.Lock()
        self.slots = threading.BoundedSemaphore(MAX_WAITING + 1)
        self._images = None
        # a page bound to loopback answers only requests addressed to loopback: a web site
        # whose name resolves to 127.0.0.1 (DNS rebinding) cannot drive it; a server opened
        # to other machines (--host 0.0.0.0) is reached under names it cannot know
        host = str(self.server_address[0]).lower()
        loopback = host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
        self.allowed_hosts = {"localhost", "127.0.0.1", "::1", host} if loopback else None
        self.info = {
            "classes": list(predictor.classes),
            "runtime": predictor.runtime,
            "bundle": Path(str(predictor.bundle.path)).name,
        }

    def image_predictor(self):
        """The shipped image model, loaded on the first face image (clips never pay for it)."""
        if self._images is None:
            self._images = DefaultImagePredictor()
        return self._images

    def handle_error(self, request, client_address):
        # a client that left mid-request is no error of the server's
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

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
