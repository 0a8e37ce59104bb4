"""A tiny stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, for the tests that need an online Hub.

Only what `huggingface_hub` 2.4's `hf_hub_download` and `HfApi` ask for is answered, the way the Hub answers:

- `HEAD|GET /{owner}/{name}/resolve/{revision}/{filename}`
    200 with `X-Repo-Commit`, `ETag` and `Content-Length` (GET also sends the bytes);
    404 with `X-Error-Code: RepoNotFound` (unknown repo), `RevisionNotFound` (unknown branch, tag or
    commit) or `EntryNotFound` (no such file at that revision; with `X-Repo-Commit`, as the Hub does);
    401 with `X-Error-Code: GatedRepo` for a repo listed in `gated`.
- Any write (`POST`, `PUT`, `DELETE`, `PATCH`; e.g. `POST /api/repos/create` from `HfApi.create_repo`)
    is refused with `push_status` (401 by default, JSON body like the Hub's), and never stored.
- Anything else: 404 `{"error": "not served by the fake hub"}`.

Every request is recorded in `hub.requests` as `(method, path, headers)` (header names lower-case),
so a test can check what was asked for and which token was sent.

    repos = {"owner/name": {"main": {"config.json": b"...", "model.safetensors": b"..."}}}
    with FakeHub(repos) as hub:
        use_fake_hub(monkeypatch, hub)   # point huggingface_hub at it, online, for this test only
        eurosat.hub.load("owner/name")

A revision key may be a branch or tag name or a 40-hex commit; each revision gets a fixed commit hash
(`hub.commit(repo_id, revision)`), and a revision can also be asked for by that hash.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

Repos = dict[str, dict[str, dict[str, bytes]]]

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class FakeHub:
    """A threaded HTTP server serving `repos` ({repo_id: {revision: {filename: bytes}}}) like the Hub."""

    def __init__(self, repos: Repos | None = None, *, gated: set[str] | None = None, push_status: int = 401):
        self.repos: Repos = repos or {}
        self.gated = gated or set()
        self.push_status = push_status
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @staticmethod
    def commit(repo_id: str, revision: str) -> str:
        """The commit hash this fake reports for `revision` of `repo_id` (the revision itself if it is one)."""
        if _COMMIT.match(revision):
            return revision
        return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()

    def paths(self, method: str | None = None) -> list[str]:
        """The paths requested so far, optionally only those of one method."""
        return [path for m, path, _ in self.requests if method is None or m == method]

    def _files(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        for name, files in self.repos[repo_id].items():
            commit = self.commit(repo_id, name)
            if revision in (name, commit):
                return commit, files
        return None


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest's output clean
            pass

        def _record(self) -> str:
            path = urlsplit(self.path).path
            hub.requests.append((self.command, path, {k.lower(): v for k, v in self.headers.items()}))
            return path

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None) -> None:
            headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, headers, json.dumps({"error": message}).encode())

        def _resolve(self) -> None:
            path = self._record()
            match = _RESOLVE.match(path)
            if match is None:
                return self._error(404, None, "not served by the fake hub")
            repo_id, revision, filename = (unquote(match[k]) for k in ("repo", "revision", "filename"))
            if repo_id not in hub.repos:
                return self._error(404, "RepoNotFound", "Repository not found")
            if repo_id in hub.gated:
                return self._error(401, "GatedRepo", "Access to this repo is restricted")
            found = hub._files(repo_id, revision)
            if found is None:
                return self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
            commit, files = found
            if filename not in files:
                return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
            data = files[filename]
            self._send(200, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                             "Content-Type": "application/octet-stream"}, data)

        do_HEAD = do_GET = _resolve

        def _refuse_write(self) -> None:
            self._record()
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self._error(hub.push_status, None, "Invalid credentials in Authorization header"
                        if hub.push_status == 401 else "Write refused by the fake hub")

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_write

    return Handler


def use_fake_hub(monkeypatch, hub: FakeHub) -> None:
    """Point huggingface_hub at `hub` and go online, for one test (pytest's monkeypatch undoes it).

    huggingface_hub reads these constants when a call is made, but builds the download URL template
    from the endpoint at import time, so both are replaced.
    """
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
