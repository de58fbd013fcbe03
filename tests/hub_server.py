"""A local stand-in for the Hugging Face hub on 127.0.0.1, serving repositories in the hub's HTTP layout.

It answers what the real `huggingface_hub` client asks: ``GET /api/models/ORG/NAME[/revision/REV]``
(repository info: commit sha and file listing) and ``HEAD`` / ``GET /ORG/NAME/resolve/REV/FILE``
(file metadata in the X-Repo-Commit / ETag / Content-Length headers, then the bytes). Gated
repositories answer 401/403 with ``X-Error-Code: GatedRepo`` unless the request carries the token.
Point the client at it with ``HF_ENDPOINT=server.url``. Every request is logged in `requests`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import unquote


def _blob_id(data: bytes) -> str:
    """The git blob id the hub reports for a (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    def __init__(self, repos: dict[str, dict[str, bytes]], *, gated: set[str] = frozenset(), token: str = "") -> None:
        self.repos = repos
        self.gated = set(gated)
        self.token = token
        self.requests: list[tuple[str, str]] = []
        self.shas = {repo: hashlib.sha1(repr(sorted(files)).encode()).hexdigest() for repo, files in repos.items()}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def folder(path: Path) -> dict[str, bytes]:
        """A repository's files from a folder on disk (relative paths -> bytes)."""
        return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _error(self, status: int, code: str, message: str) -> None:
                body = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, obj: object) -> None:
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _repo(self, parts: list[str]) -> str | None:
                repo = "/".join(parts[:2])
                if repo not in hub.repos:
                    self._error(404, "RepoNotFound", f"Repository {repo} not found")
                    return None
                return repo

            def _serve(self) -> None:
                path = unquote(self.path.split("?")[0]).strip("/")
                hub.requests.append((self.command, path))
                parts = path.split("/")
                if parts[:2] == ["api", "models"]:
                    repo = self._repo(parts[2:])
                    if repo is None:
                        return
                    if parts[4:5] == ["tree"]:  # the file listing snapshot_download asks for
                        prefix = "/".join(parts[6:])
                        self._json([{"type": "file", "path": name, "size": len(data), "oid": _blob_id(data)}
                                    for name, data in hub.repos[repo].items() if name.startswith(prefix)])
                        return
                    self._json({"id": repo, "modelId": repo, "sha": hub.shas[repo], "private": False,
                            "gated": "manual" if repo in hub.gated else False,
                            "siblings": [{"rfilename": name} for name in hub.repos[repo]]})
                    return
                if len(parts) < 5 or parts[2] != "resolve":
                    self._error(404, "EntryNotFound", f"no route {path}")
                    return
                repo = self._repo(parts)
                if repo is None:
                    return
                if repo in hub.gated:
                    auth = self.headers.get("authorization", "")
                    if not auth:
                        self._error(401, "GatedRepo", f"Access to model {repo} is restricted. You must be authenticated.")
                        return
                    if auth != f"Bearer {hub.token}":
                        self._error(403, "GatedRepo", f"Access to model {repo} is restricted and you are not in the authorized list.")
                        return
                name = "/".join(parts[4:])
                data = hub.repos[repo].get(name)
                if data is None:
                    self._error(404, "EntryNotFound", f"{name} does not exist in {repo}")
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", hub.shas[repo])
                self.send_header("ETag", f'"{_blob_id(data)}"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = _serve
            do_HEAD = _serve

        return Handler
