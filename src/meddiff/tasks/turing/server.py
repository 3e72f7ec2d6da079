"""`meddiff turing-test serve`: the study on 127.0.0.1 (Flask app on Werkzeug's threaded server).

Routes, all of them: ``GET /`` the page; ``GET /api/state?rater=NAME`` the rater's order, past answers and where
to resume; ``POST /api/answer`` one answer (JSON), on disk before the reply; ``GET /image/<id>`` and
``GET /image/<id>/<k>`` an image by its opaque id. Nothing from a request becomes a path: an id is looked up in
the manifest and the file name is built from the manifest's entry; the manifest itself is never served. Requests
whose Host header is not the address served are refused (DNS rebinding), answers must be JSON (no cross-site form
posts), and every reply says no-store.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import logging
import sys
from pathlib import Path

from meddiff.errors import MeddiffError
from meddiff.tasks.turing.answers import (append_answer, check_log, clean_rater, final_answers, read_answers,
                                         validate_answer)
from meddiff.tasks.turing.study import ANSWERS, IMAGES, PAGE, load_manifest, rater_order

DEFAULT_PORT = 8765
MAX_BODY = 16 * 1024


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_app(study: str | Path, *, allowed_hosts: set[str] | None = None):
    """The Flask app of a study folder. ``allowed_hosts``: Host header values accepted (None: any)."""
    from flask import Flask, Response, jsonify, request

    study = Path(study)
    manifest = load_manifest(study)
    items = {item["id"]: item for item in manifest["items"]}
    log = study / ANSWERS
    check_log(log)
    page = (study / PAGE).read_bytes()
    app = Flask("meddiff.turing", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    @app.before_request
    def _host_check():
        if allowed_hosts is not None and request.host not in allowed_hosts:
            return jsonify(error="unknown host"), 403
        return None

    @app.after_request
    def _headers(response):
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; img-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; frame-ancestors 'none'")
        return response

    @app.errorhandler(MeddiffError)
    def _bad(error):
        return jsonify(error=str(error)), 400

    @app.get("/")
    def index():
        return Response(page, mimetype="text/html")

    @app.get("/api/state")
    def state():
        rater = clean_rater(request.args.get("rater"))
        order = rater_order(manifest, rater)
        records, _ = read_answers(log)
        mine = {image_id: {k: r[k] for k in ("label", "confidence", "comment") if k in r}
                for (name, image_id), r in final_answers(records).items() if name == rater and image_id in items}
        position = next((i for i, item in enumerate(order) if item["id"] not in mine), len(order))
        return jsonify(order=order, answers=mine, position=position, n=len(order))

    @app.post("/api/answer")
    def answer():
        if not request.is_json:
            raise MeddiffError("answer: send JSON (Content-Type: application/json)")
        record = validate_answer(request.get_json(silent=True), items)
        record["time"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
        append_answer(log, record)
        return jsonify(saved=True)

    def _png(path: Path):
        return Response(path.read_bytes(), mimetype="image/png")

    @app.get("/image/<image_id>")
    def image(image_id: str):
        item = items.get(image_id)
        if item is None:
            return jsonify(error="unknown image"), 404
        return _png(study / IMAGES / f"{item['id']}.png")

    @app.get("/image/<image_id>/<int:k>")
    def image_slice(image_id: str, k: int):
        item = items.get(image_id)
        if item is None or not 0 <= k < int(item.get("slices", 0)):
            return jsonify(error="unknown image"), 404
        return _png(study / IMAGES / item["id"] / f"{int(k)}.png")

    return app


def serve_study(study: str | Path, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, allow_remote: bool = False,
                ready=None) -> None:
    """Serve until interrupted. A non-loopback ``host`` needs ``allow_remote`` and prints a warning.
    ``ready(url)`` is called once the socket listens."""
    try:
        import flask  # noqa: F401
    except ImportError:
        raise MeddiffError("turing-test serve needs Flask: pip install 'meddiff[turing]' (or pip install flask)") \
            from None
    from werkzeug.serving import make_server

    if not is_loopback(host):
        if not allow_remote:
            raise MeddiffError(f"--host {host}: not a loopback address; other machines could reach the study. "
                               "Add --allow-remote to bind it anyway, or leave --host at 127.0.0.1")
        print(f"warning: serving on {host}: anyone who can reach this machine on port {port} can see the images "
              "and post answers (there is no login)", file=sys.stderr)
    if not 0 < port < 65536:
        raise MeddiffError(f"--port {port}: choose a port between 1 and 65535")
    allowed = None
    if is_loopback(host):
        allowed = {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]", host)}
    app = make_app(study, allowed_hosts=allowed)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        server = make_server(host, port, app, threaded=True)
    except OSError as error:
        raise MeddiffError(f"--port {port}: cannot listen on {host}:{port} ({error.strerror or error}); choose "
                           "another --port") from None
    records, torn = read_answers(Path(study) / ANSWERS)
    raters = {r["rater"] for r in records}
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    print(f"serving {study} at {url} ({len(records)} answers logged so far from {len(raters)} rater(s)"
          + (f"; {torn} torn line(s) skipped" if torn else "") + "); Ctrl-C stops", flush=True)
    if ready is not None:
        ready(url)
    try:
        server.serve_forever()
    finally:
        server.server_close()
