"""`microfer serve`: the JSON endpoint, and the page driven in a real headless Chromium."""

import json
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(demo):
    from microfer.recognise.serve import make_server

    srv = make_server(demo.bundle, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def expected(demo):
    from microfer.recognise.predict import Predictor

    video = Path(demo.predictions[0]["video"])
    return video, Predictor(demo.bundle).predict(video)


def _post(url: str, data: bytes, name: str):
    request = urllib.request.Request(
        url + "api/predict",
        data=data,
        method="POST",
        headers={"X-Filename": name, "Content-Type": "application/octet-stream"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_endpoint_predicts_like_the_library_and_refuses_bad_uploads(server, expected):
    video, truth = expected
    with urllib.request.urlopen(server.url, timeout=30) as page:
        html = page.read().decode()
    assert 'id="file"' in html and "/api/predict" in html
    with urllib.request.urlopen(server.url + "api/info", timeout=30) as info:
        assert json.loads(info.read())["classes"] == server.predictor.classes

    status, doc = _post(server.url, video.read_bytes(), video.name)
    assert status == 200, doc
    assert (
        doc["label"] == truth.label and doc["scores"] == truth.scores and doc["file"] == video.name
    )
    assert (doc["onset"], doc["apex"], doc["offset"]) == (truth.onset, truth.apex, truth.offset)
    # the demo bundle carries a calibrator: probabilities beside the scores, summing to 1
    assert doc["probabilities"] == truth.probabilities and set(doc["probabilities"]) == set(
        truth.scores
    )
    assert abs(sum(doc["probabilities"].values()) - 1) < 1e-3
    assert len(doc["motion_curve"]) == len(doc["motion_frames"]) == doc["n_frames"]

    status, doc = _post(server.url, b"this is not a video", "notes.mp4")
    assert status == 400 and "notes.mp4" in doc["error"] and "/tmp" not in doc["error"]
    status, doc = _post(server.url, b"hello", "notes.txt")
    assert status == 415 and "notes.txt" in doc["error"]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package chromium)")
def test_page_in_headless_chromium_shows_the_emotion_scores_and_curve(server, expected, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    video, truth = expected
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(server.url)
            page.wait_for_function(
                "document.getElementById('model').textContent.includes('runtime')"
            )
            page.set_input_files("#file", str(video))
            page.wait_for_selector("#result:not([hidden])", timeout=120_000)
            assert page.inner_text("#label") == truth.label
            shown = {
                row.get_attribute("data-class"): float(row.query_selector(".value").inner_text())
                for row in page.query_selector_all("tr.score")
            }
            assert shown == pytest.approx(
                {k: round(v, 3) for k, v in truth.scores.items()}, abs=1e-3
            )
            assert f"apex {truth.apex}" in page.inner_text("#frames")
            assert page.query_selector("#curve polyline") is not None
            assert page.query_selector_all("img.map") == []  # occlusion maps only when asked

            page.check("#explain")
            page.set_input_files("#file", str(video))
            page.wait_for_function(
                "document.querySelectorAll('img.map').length == 2", timeout=180_000
            )
            assert page.inner_text("#label") == truth.label
            for img in page.query_selector_all("img.map"):
                assert (
                    img.evaluate("e => e.complete && e.naturalWidth") > 100
                )  # decoded PNGs, not broken images
            if truth.ood_score is not None:
                assert ("OUT OF DISTRIBUTION" in page.inner_text("#ood")) == bool(truth.ood)
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000

            page.set_input_files("#file", str(bad))
            page.wait_for_function(
                "document.getElementById('error').textContent.length > 0", timeout=60_000
            )
            error = page.inner_text("#error")
            assert error.startswith("error: ") and "broken.mp4" in error
            assert page.is_hidden("#result")
        finally:
            browser.close()


def _raw(server, payload: bytes, timeout: float = 30) -> bytes:
    import socket

    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(payload)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def test_a_burst_of_uploads_all_answered(server, expected):
    """20 concurrent uploads of a real clip to 127.0.0.1: 20 x 200 with the library's label."""
    from concurrent.futures import ThreadPoolExecutor

    video, truth = expected
    data = video.read_bytes()
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: _post(server.url, data, video.name), range(20)))
    assert [s for s, _ in answers] == [200] * 20
    assert {d["label"] for _, d in answers} == {truth.label}


def test_stalled_connections_do_not_block_the_page(server):
    import socket

    host, port = server.server_address[:2]
    stalled = [socket.create_connection((host, port), timeout=5) for _ in range(50)]
    try:
        stalled[0].sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and no more
        with urllib.request.urlopen(server.url + "api/info", timeout=10) as info:
            assert info.status == 200
    finally:
        for s in stalled:
            s.close()


def test_foreign_host_internal_error_and_a_client_that_leaves(server, monkeypatch, capfd):
    host, port = server.server_address[:2]
    answer = _raw(server, b"GET / HTTP/1.1\r\nHost: evil.example:80\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 403") and b"not this server" in answer

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.predictor, "predict", broken)
    status, doc = _post(server.url, b"0" * 100, "clip.mp4")
    assert status == 500 and "internal error" in doc["error"]

    head = (
        f"POST /api/predict HTTP/1.1\r\nHost: {host}:{port}\r\nX-Filename: c.mp4\r\n"
        "Content-Length: 1000000\r\n\r\n"
    ).encode()
    import socket
    import time

    with socket.create_connection((host, port), timeout=5) as s:  # sends a tenth, then leaves
        s.sendall(head + b"x" * 100_000)
    time.sleep(0.5)
    assert "Traceback" not in capfd.readouterr().err


def test_endpoint_takes_a_face_image_with_the_shipped_image_model(server):
    face = (
        Path(__file__).resolve().parents[1] / "microfer" / "assets" / "faces" / "grace_hopper.jpg"
    )
    status, doc = _post(server.url, face.read_bytes(), face.name)
    assert status == 200, doc
    assert doc["image"] == face.name and abs(sum(doc["probabilities"].values()) - 1) < 1e-6
    status, doc = _post(server.url, b"not an image", "face.png")
    assert status == 400 and "face.png" in doc["error"]


def test_load_check_of_a_served_bundle(demo, expected):
    """`microfer bench serve` made small: its own server process answers every upload, prints
    no traceback and answers while connections stall; memory figures are reported."""
    from microfer.bench.serve_load import bench_serve, format_serve

    video, truth = expected
    r = bench_serve(demo.bundle, video, uploads=4, stalled=5, rounds=1, limit_s=300)
    assert r["bursts"][0]["statuses"] == {"200": 4} and r["bursts"][0]["labels"] == [truth.label]
    assert r["tracebacks"] == 0 and r["stalled_check"]["status"] == 200
    assert r["rss_peak_mb"] >= r["rss_baseline_mb"] > 0
    assert "4 x 200" in format_serve(r)
