"""The HTTP API's public routes: the try-it page and its static files, the OpenAPI document.

In-process (Starlette's test client): no engine is needed for these routes (the one served
model has none).
"""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from gateway.admission import Admission
from gateway.engines import Engines, Served
from gateway.http.app import HttpApi
from gateway.metrics import Metrics
from gateway.model_specs import ModelSpec


def _client(static: Path, token: str = "") -> TestClient:
    metrics = Metrics()
    engines = Engines([Served(ModelSpec("m", "ckpt"), None)])  # type: ignore[arg-type]
    api = HttpApi(engines, Admission(4, metrics.in_flight), metrics,
                  preprocess_mode="exact", max_message_bytes=1024, auth_token=token,
                  static_dir=static)
    return TestClient(api.app(), raise_server_exceptions=False)


def test_page_and_static_files_are_served_without_a_token(tmp_path: Path):
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>try it</title>")
    (static / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("not served")
    client = _client(static, token="s3cret")
    page = client.get("/")
    assert page.status_code == 200 and "try it" in page.text
    assert page.headers["content-type"].startswith("text/html")
    script = client.get("/static/app.js")
    assert script.status_code == 200 and script.text == "console.log(1)"
    assert client.get("/static/missing.js").status_code == 404
    assert client.get("/static/../secret.txt").status_code == 404
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/v1/models/info").status_code == 401  # the API is not public


def test_without_the_page_installed_every_route_still_answers_json(tmp_path: Path):
    client = _client(tmp_path / "absent")
    for path in ("/", "/static/app.js", "/nowhere"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "NOT_FOUND"
    wrong_method = client.get("/v1/classify")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "UNIMPLEMENTED"
