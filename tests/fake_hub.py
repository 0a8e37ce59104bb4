"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1: the reads and writes huggingface_hub 2.4 makes.

Reads, as the Hub answers them (models, and `spaces/`/`datasets/` ids in the paths):

- `HEAD|GET /{repo}/resolve/{revision}/{filename}`: 200 with `X-Repo-Commit`, `ETag`, `Content-Length`;
    404 `RepoNotFound`, `RevisionNotFound` or `EntryNotFound` (with `X-Repo-Commit`); 401 `GatedRepo` for `gated`.
- `GET /api/{models|spaces|datasets}/{repo}[/revision/{rev}]` (repo_info: `sha`, `siblings`) and
    `GET /api/.../{repo}/tree/{rev}[/{path}]` (list_repo_tree, what snapshot_download lists).
- `GET /api/spaces/{repo}/variables|secrets` (secret values are never read back).

Writes, with `writable=True` (otherwise every write is refused with `push_status`, 401 by default, and never
stored), each needing an `Authorization: Bearer ...` header, through the client's LFS path (no Xet is advertised):

- `POST /api/repos/create` (409 when it exists), `POST /api/validate-yaml` (Space cards: tests/space_config.py);
- `POST /api/{type}s/{repo}/preupload/{rev}`: `lfs` for binary (a NUL in the sample) or large files, else `regular`;
- `POST /{repo}.git/info/lfs/objects/batch`: basic transfer, a `PUT` URL here per new object, and a verify URL;
- `PUT /lfs-storage/{sha256}`: the object (`fail_upload=STATUS` answers that instead: a failure mid-upload);
- `POST /api/{type}s/{repo}/commit/{rev}` (NDJSON): a new 40-hex commit, the branch moved to it; a binary file
    sent as a regular one is refused, as the Hub refuses binaries outside LFS/Xet;
- `POST /api/spaces/{repo}/variables|secrets`.

Every request is recorded in `hub.requests` as `(method, path, headers)` (header names lower-case) and its body
in `hub.bodies` at the same index, so a test can check what was asked for, in which order, with which token.

    repos = {"owner/name": {"main": {"config.json": b"...", "model.safetensors": b"..."}}}
    with FakeHub(repos) as hub:
        use_fake_hub(monkeypatch, hub)   # point huggingface_hub at it, online, for this test only
        eurosat.hub.load("owner/name")

A seeded revision key may be a branch or tag name or a 40-hex commit; each gets a fixed commit hash
(`hub.commit(repo_id, revision)`). Commits made through the API move the branch: `hub.head(repo)` is its commit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import space_config
from loopback import LoopbackServer

Repos = dict[str, dict[str, dict[str, bytes]]]

_REPO = r"(?P<repo>(?:(?:spaces|datasets)/)?[^/]+/[^/]+)"
_API = r"^/api/(?P<type>models|spaces|datasets)/(?P<id>[^/]+/[^/]+)"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores larger files in LFS whatever their content
_UPDATED = "2026-01-01T00:00:00.000Z"


def repo_key(repo_id: str, repo_type: str = "model") -> str:
    """How a repo is named in URL paths, and in `FakeHub.repos`: `owner/name`, `spaces/owner/name`, ..."""
    return repo_id if repo_type in ("model", "models") else f"{repo_type.rstrip('s')}s/{repo_id}"


def is_lfs(data: bytes) -> bool:
    """The stand-in's upload mode rule: binary (a NUL byte in the first 512) or large files go through LFS."""
    return b"\0" in data[:512] or len(data) > LFS_THRESHOLD


class FakeHub(LoopbackServer):
    """A threaded HTTP server serving `repos` ({repo_key: {revision: {filename: bytes}}}) like the Hub."""

    def __init__(self, repos: Repos | None = None, *, gated: set[str] | None = None, push_status: int = 401,
                 writable: bool = False, fail_upload: int | None = None):
        self.repos: Repos = repos or {}
        self.gated = gated or set()
        self.push_status, self.writable, self.fail_upload = push_status, writable, fail_upload
        self.refs: dict[str, dict[str, str]] = {}  # branches moved by commits: {repo_key: {branch: commit}}
        self.created: dict[str, dict[str, Any]] = {}  # the create_repo payloads (type, sdk, visibility)
        self.lfs_objects: dict[str, bytes] = {}
        self.commits: list[tuple[str, str, list[dict]]] = []  # (repo_key, commit, the NDJSON operations)
        self.variables: dict[str, dict[str, dict]] = {}
        self.secrets: dict[str, dict[str, str]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        super().__init__(_handler(self))

    @staticmethod
    def commit(repo_id: str, revision: str) -> str:
        """The commit hash this fake reports for seeded `revision` of `repo_id` (the revision itself if it is one)."""
        if _COMMIT.match(revision):
            return revision
        return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str | None:
        """The commit `revision` of a repo points at now; None when it has none."""
        found = self.lookup(repo_key(repo_id, repo_type), revision)
        return found[0] if found else None

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of a repo at a revision ({} when the revision does not exist)."""
        found = self.lookup(repo_key(repo_id, repo_type), revision)
        return dict(found[1]) if found else {}

    def paths(self, method: str | None = None) -> list[str]:
        """The paths requested so far, optionally only those of one method."""
        return [path for m, path, _ in self.requests if method is None or m == method]

    def lookup(self, key: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        """(commit, files) of a revision: a branch moved by a commit, a seeded revision, or a commit hash."""
        revisions, refs = self.repos.get(key, {}), self.refs.get(key, {})
        if revision in refs:
            return refs[revision], revisions[refs[revision]]
        for name, files in revisions.items():
            if revision in (name, self.commit(key, name)):
                return self.commit(key, name), files
        return None

    def _new_commit(self, key: str, branch: str, operations: list[dict]) -> str:
        parent = self.lookup(key, branch)
        files = dict(parent[1]) if parent else {}
        for op in operations:
            value = op["value"]
            if op["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif op["key"] == "lfsFile":
                files[value["path"]] = self.lfs_objects[value["oid"]]
            elif op["key"] == "deletedFile":
                files.pop(value["path"], None)
            elif op["key"] == "deletedFolder":
                files = {p: d for p, d in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
        seed = f"{key}:{len(self.commits)}:{parent[0] if parent else ''}:{sorted(files)}"
        commit = hashlib.sha1(seed.encode()).hexdigest()
        self.repos.setdefault(key, {})[commit] = files
        self.refs.setdefault(key, {})[branch] = commit
        self.commits.append((key, commit, operations))
        return commit


def _oid(path: str, files: dict[str, bytes]) -> str | None:
    """What the Hub reports as a file's oid in preupload: sha256 for LFS files, git's blob sha1 otherwise."""
    if path not in files:
        return None
    data = files[path]
    return hashlib.sha256(data).hexdigest() if is_lfs(data) else _git_sha1(data)


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest's output clean
            pass

        # --- plumbing ---------------------------------------------------------------------------------------
        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data: Any, status: int = 200, content_type: str = "application/json") -> None:
            self._send(status, {"Content-Type": content_type}, json.dumps(data).encode())

        def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None) -> None:
            headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, headers, json.dumps({"error": message}).encode())

        def _dispatch(self) -> None:
            split = urlsplit(self.path)
            body = self._body() if self.command in ("POST", "PUT", "DELETE", "PATCH") else b""
            with hub.lock:
                hub.requests.append((self.command, split.path, {k.lower(): v for k, v in self.headers.items()}))
                hub.bodies.append(body)
            self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            writing = self.command not in ("GET", "HEAD")
            if writing and not hub.writable:
                return self._error(hub.push_status, None, "Invalid credentials in Authorization header"
                                   if hub.push_status == 401 else "Write refused by the fake hub")
            if writing and not split.path.startswith("/lfs-storage/") and \
                    not self.headers.get("Authorization", "").startswith("Bearer "):
                return self._error(401, None, "Invalid credentials in Authorization header")
            for method, pattern, route in ROUTES:
                match = re.match(pattern, split.path)
                if self.command in method.split("|") and match:
                    args = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
                    with hub.lock:
                        return route(self, body, **args)
            self._error(404, None, "not served by the fake hub")

        do_HEAD = do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

        def _exists(self, key: str) -> bool:
            """Whether the repo exists; when not, the Hub's 404 has been sent."""
            if key in hub.repos or key in hub.created:
                return True
            self._error(404, "RepoNotFound", "Repository not found")
            return False

        def _repo(self, key: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
            """The revision's (commit, files), or None once a 404 in the Hub's words has been sent."""
            if not self._exists(key):
                return None
            found = hub.lookup(key, revision)
            if found is None:
                return self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
            return found

        # --- reads --------------------------------------------------------------------------------------------
        def resolve(self, body: bytes, repo: str, revision: str, filename: str) -> None:
            if repo in hub.gated and repo in hub.repos:
                return self._error(401, "GatedRepo", "Access to this repo is restricted")
            if (found := self._repo(repo, revision)) is None:
                return
            commit, files = found
            if filename not in files:
                return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
            data = files[filename]
            self._send(200, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                             "Content-Type": "application/octet-stream"}, data)

        def info(self, body: bytes, type: str, id: str, revision: str | None) -> None:
            key = repo_key(id, type)
            if (found := self._repo(key, revision or "main")) is None:
                return
            created = hub.created.get(key, {})
            self._json({"id": id, "sha": found[0], "private": created.get("visibility") == "private",
                        "sdk": created.get("sdk"), "siblings": [{"rfilename": name} for name in sorted(found[1])]})

        def tree(self, body: bytes, type: str, id: str, revision: str, path: str | None) -> None:
            if (found := self._repo(repo_key(id, type), revision)) is None:
                return
            prefix = f"{path.strip('/')}/" if path else ""
            recursive = self.query.get("recursive", "false").lower() == "true"
            entries, folders = [], set()
            for name, data in sorted(found[1].items()):
                if not name.startswith(prefix):
                    continue
                parts = name[len(prefix):].split("/")
                if not recursive and len(parts) > 1:
                    folders.add(prefix + parts[0])
                    continue
                folders.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
                entry = {"type": "file", "oid": _git_sha1(data), "size": len(data), "path": name}
                if is_lfs(data):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(entry)
            folders_listed = [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "path": f}
                              for f in sorted(folders)]
            self._json(folders_listed + entries)

        def settings(self, body: bytes, id: str, kind: str) -> None:
            key = repo_key(id, "space")
            if not self._exists(key):
                return
            if self.command == "POST":
                sent = json.loads(body)
                if kind == "variables":
                    hub.variables.setdefault(id, {})[sent["key"]] = {
                        "value": sent["value"], "description": sent.get("description"), "updatedAt": _UPDATED}
                else:
                    hub.secrets.setdefault(id, {})[sent["key"]] = sent["value"]
            if kind == "variables":
                return self._json(hub.variables.get(id, {}))
            # Secret values are write-only: only their names come back.
            listed = {k: {"description": None, "updatedAt": _UPDATED} for k in hub.secrets.get(id, {})}
            self._json(listed if self.command == "GET" else {})

        # --- writes -------------------------------------------------------------------------------------------
        def create(self, body: bytes) -> None:
            sent = json.loads(body)
            repo_type = sent.get("type") or "model"
            repo_id = f"{sent['organization']}/{sent['name']}" if sent.get("organization") else sent["name"]
            key = repo_key(repo_id, repo_type)
            if key in hub.created or key in hub.repos:
                return self._json({"error": f"You already created this {repo_type} repo", "url": f"{hub.url}/{key}"},
                                  409)
            if repo_type == "space" and sent.get("sdk") not in space_config.SDKS:
                return self._error(400, None, "A Space needs an sdk: gradio, docker or static")
            hub.created[key] = sent
            self._json({"url": f"{hub.url}/{key}", "name": repo_id})

        def validate_yaml(self, body: bytes) -> None:
            sent = json.loads(body)
            try:
                meta = space_config.front_matter(sent["content"])
            except Exception as e:  # noqa: BLE001 - any YAML error is the card's problem, answered as the Hub does
                return self._json({"errors": [{"message": f"Invalid YAML in the metadata: {e}"}]}, 400)
            if meta is None:
                return self._json({"warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
            # Space cards get the Spaces configuration reference's rules; other cards need only be a mapping.
            if sent.get("repoType") == "space":
                found = space_config.problems(meta)
            else:
                found = [] if isinstance(meta, dict) else ["the front matter must be a YAML mapping of fields"]
            if found:
                return self._json({"errors": [{"message": m} for m in found]}, 400)
            self._json({"warnings": []})

        def preupload(self, body: bytes, type: str, id: str, revision: str) -> None:
            key = repo_key(id, type)
            if not self._exists(key):
                return
            current = (hub.lookup(key, revision) or ("", {}))[1]
            answer = []
            for file in json.loads(body)["files"]:
                sample = base64.b64decode(file["sample"])
                lfs = b"\0" in sample or file["size"] > LFS_THRESHOLD
                answer.append({"path": file["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                               "oid": _oid(file["path"], current)})
            self._json({"files": answer})

        def lfs_batch(self, body: bytes, repo: str) -> None:
            sent = json.loads(body)
            if not self._exists(repo):
                return
            if sent.get("operation") != "upload" or "basic" not in sent.get("transfers", ["basic"]):
                return self._error(422, None, "only uploads with the basic transfer are served")
            objects = []
            for obj in sent["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if obj["oid"] not in hub.lfs_objects:
                    entry["actions"] = {"upload": {"href": f"{hub.url}/lfs-storage/{obj['oid']}"},
                                        "verify": {"href": f"{hub.url}/{repo}.git/info/lfs/objects/verify"}}
                objects.append(entry)
            self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                       content_type="application/vnd.git-lfs+json")

        def lfs_put(self, body: bytes, oid: str) -> None:
            if hub.fail_upload:
                return self._error(hub.fail_upload, None, "upload refused by the storage")
            if hashlib.sha256(body).hexdigest() != oid:
                return self._error(400, None, "the content does not match its sha256")
            hub.lfs_objects[oid] = body
            self._send(200, {"ETag": f'"{oid}"'})

        def lfs_verify(self, body: bytes, repo: str) -> None:
            sent = json.loads(body)
            stored = hub.lfs_objects.get(sent["oid"])
            if stored is None or len(stored) != sent["size"]:
                return self._error(404, None, "object not found")
            self._json({"success": True}, content_type="application/vnd.git-lfs+json")

        def commit(self, body: bytes, type: str, id: str, revision: str) -> None:
            key = repo_key(id, type)
            if not self._exists(key):
                return
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            if not lines or lines[0].get("key") != "header":
                return self._error(400, None, "the first NDJSON line must be the commit header")
            operations = lines[1:]
            for op in operations:
                value = op["value"]
                if op["key"] == "lfsFile" and value["oid"] not in hub.lfs_objects:
                    return self._error(422, None, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                if op["key"] == "file" and is_lfs(base64.b64decode(value["content"])):
                    return self._error(400, None, f"{value['path']} is a binary file: it must be stored with LFS or Xet")
            commit = hub._new_commit(key, revision, operations)
            self._json({"success": True, "commitOid": commit, "commitUrl": f"{hub.url}/{key}/commit/{commit}",
                        "hookOutput": ""})

    ROUTES = [
        ("GET|HEAD", rf"^/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$", Handler.resolve),
        ("GET", rf"{_API}(?:/revision/(?P<revision>[^/]+))?$", Handler.info),
        ("GET", rf"{_API}/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?$", Handler.tree),
        ("GET|POST", r"^/api/spaces/(?P<id>[^/]+/[^/]+)/(?P<kind>variables|secrets)$", Handler.settings),
        ("POST", r"^/api/repos/create$", Handler.create),
        ("POST", r"^/api/validate-yaml$", Handler.validate_yaml),
        ("POST", rf"{_API}/preupload/(?P<revision>[^/]+)$", Handler.preupload),
        ("POST", rf"{_API}/commit/(?P<revision>[^/]+)$", Handler.commit),
        ("POST", rf"^/{_REPO}\.git/info/lfs/objects/batch$", Handler.lfs_batch),
        ("POST", rf"^/{_REPO}\.git/info/lfs/objects/verify$", Handler.lfs_verify),
        ("PUT", r"^/lfs-storage/(?P<oid>[0-9a-f]{64})$", Handler.lfs_put),
    ]
    return Handler


def hub_env(hub: FakeHub) -> dict[str, str]:
    """The environment that points a huggingface_hub subprocess at `hub`, online, through the LFS path.

    HF_HUB_DISABLE_XET=1: huggingface_hub uploads through Xet whenever hf_xet is installed (it is, as a
    dependency) without asking the server; the real Hub speaks Xet, this stand-in does not, and the variable
    makes the client take its LFS path. Only tests set it; the product code never does.
    """
    return {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}


def use_fake_hub(monkeypatch, hub: FakeHub) -> None:
    """Point huggingface_hub in this process at `hub`, online and through the LFS path (see `hub_env`).

    huggingface_hub reads these constants when a call is made, but builds the download URL template
    from the endpoint at import time, so both are replaced.
    """
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
