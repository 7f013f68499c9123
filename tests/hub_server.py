"""A small Hugging Face Hub-compatible server on 127.0.0.1, enough for huggingface_hub 2.x
with HF_HUB_DISABLE_XET=1: create repos, validate YAML, preupload, commit (NDJSON), model
info (optionally at a revision) and file resolve with X-Repo-Commit and ETag headers."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote, urlparse

from tests.http_server import LocalServer


def blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


@dataclass
class Repo:
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)
    private: bool = False

    def at(self, rev: str) -> tuple[str, dict[str, bytes]] | None:
        if rev in ("main", "HEAD") and self.commits:
            return self.commits[-1]
        return next((c for c in self.commits if c[0] == rev or c[0].startswith(rev)), None)


class FakeHub(LocalServer):
    """Start with `with FakeHub() as hub:`; hub.url is the endpoint. `cut` names files whose
    downloads are cut off half-way (an interrupted connection)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.auth_headers: list[str] = []
        self.cut: set[str] = set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict | None = None,
                      head: bool = False) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, code: int, obj: object, headers: dict | None = None) -> None:
                self._send(code, json.dumps(obj).encode(),
                           {"Content-Type": "application/json", **(headers or {})})

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _not_found(self, code: str, msg: str) -> None:
                self._json(404, {"error": msg}, {"X-Error-Code": code, "X-Error-Message": msg})

            def do_POST(self) -> None:
                hub.auth_headers.append(self.headers.get("Authorization", ""))
                path = urlparse(self.path).path
                body = self._body()
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo_id = f"{req.get('organization') or 'user'}/{req['name']}"
                    if repo_id in hub.repos:
                        return self._json(409, {"error": "You already created this model repo",
                                                "url": f"{hub.url}/{repo_id}"})
                    hub.repos[repo_id] = Repo(private=bool(req.get("private")))
                    return self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    return self._json(200, {"errors": [], "warnings": []})
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/(.+)", path)
                if not m or m.group(1) not in hub.repos:
                    return self._not_found("RepoNotFound", "Repository not found")
                repo = hub.repos[m.group(1)]
                if m.group(2) == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
                files = dict(repo.commits[-1][1]) if repo.commits else {}
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                sha = hashlib.sha1(f"{len(repo.commits)}{sorted(files)}".encode()
                                   + b"".join(files.values())).hexdigest()
                repo.commits.append((sha, files))
                return self._json(200, {"success": True, "commitOid": sha,
                                        "commitUrl": f"{hub.url}/{m.group(1)}/commit/{sha}"})

            def do_HEAD(self) -> None:
                self._get(head=True)

            def do_GET(self) -> None:
                self._get(head=False)

            def _get(self, head: bool) -> None:
                path = unquote(urlparse(self.path).path)
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
                if m:
                    return self._info(m.group(1), m.group(2) or "main")
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if m:
                    return self._resolve(m.group(1), m.group(2), m.group(3), head)
                return self._not_found("EntryNotFound", "not found")

            def _info(self, repo_id: str, rev: str) -> None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._not_found("RepoNotFound", "Repository not found")
                commit = repo.at(rev)
                if commit is None:
                    return self._not_found("RevisionNotFound", f"Invalid rev id: {rev}")
                sha, files = commit
                self._json(200, {"id": repo_id, "modelId": repo_id, "sha": sha,
                                 "private": repo.private, "tags": [], "downloads": 0,
                                 "likes": 0, "siblings": [
                                     {"rfilename": p, "size": len(d), "blobId": blob_id(d)}
                                     for p, d in files.items()]})

            def _resolve(self, repo_id: str, rev: str, name: str, head: bool) -> None:
                repo = hub.repos.get(repo_id)
                commit = repo.at(rev) if repo else None
                if commit is None:
                    return self._not_found("RepoNotFound", "Repository not found")
                sha, files = commit
                if name not in files:
                    return self._not_found("EntryNotFound", f"{name} not found")
                data = files[name]
                start = 0
                rng = self.headers.get("Range")
                if rng and not head:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                headers = {"X-Repo-Commit": sha, "ETag": f'"{blob_id(data)}"',
                           "Content-Type": "application/octet-stream"}
                if name in hub.cut and not head:  # promise everything, send half, hang up
                    self.send_response(200)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if start:
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                    return self._send(206, data[start:], headers)
                if head:
                    self.send_response(200)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return None
                return self._send(200, data, headers)

        self._serve(Handler)
