"""A small Hugging Face Hub on 127.0.0.1 for the pull tests, reached through HF_ENDPOINT.

It answers the requests huggingface_hub sends: GET /api/models/{repo}/revision/{rev} (repo info),
GET /api/models/{repo}/tree/{rev} (the file listing), and HEAD/GET /{repo}/resolve/{rev}/{file} with
X-Repo-Commit, ETag (the git blob id; for LFS files the sha256, also as X-Linked-Etag with
X-Linked-Size), Content-Length and Range requests. It sends no Xet headers, so clients take the
plain HTTP path. Knobs for the tests: `delay` (seconds per 64 KiB sent), `corrupt` (files served
with one byte flipped under their true hash), `drops` (a response cut off part-way, once) and a log
of every request."""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin")
CHUNK = 64 << 10


@dataclass
class RepoFile:
    data: bytes
    blob_id: str                  # git's sha1 of "blob <size>\0" + data
    sha256: Optional[str]         # set for LFS files


@dataclass
class Repo:
    commit: str
    files: dict[str, RepoFile]


@dataclass
class Request:
    method: str
    path: str
    range: Optional[str]


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    log: list[Request] = field(default_factory=list)
    delay: float = 0.0
    corrupt: set[str] = field(default_factory=set)   # "repo/file"
    drops: dict[str, int] = field(default_factory=dict)  # "repo/file" -> cut the next GET off after N bytes

    def add_repo(self, repo_id: str, files: dict[str, bytes | Path], commit: Optional[str] = None) -> Repo:
        entries = {}
        for name, content in files.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            sha = hashlib.sha256(data).hexdigest() if name.endswith(LFS_SUFFIXES) else None
            entries[name] = RepoFile(data, blob, sha)
        commit = commit or hashlib.sha1(repo_id.encode() + b"".join(sorted(e.blob_id.encode() for e in entries.values()))).hexdigest()
        self.repos[repo_id] = repo = Repo(commit, entries)
        return repo

    def requests(self, method: Optional[str] = None, contains: str = "") -> list[Request]:
        return [r for r in self.log if (method is None or r.method == method) and contains in r.path]

    # ------------------------------------------------------------------ server
    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"


_REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("info", re.compile(rf"/api/models/{_REPO}/revision/(?P<rev>[^/]+)")),
    ("tree", re.compile(rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?")),
    ("resolve", re.compile(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)")),
]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    timeout = 30  # seconds a silent client may hold a connection

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._handle(body=False)

    def do_GET(self) -> None:
        self._handle(body=True)

    def _handle(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.fake.log.append(Request(self.command, path, self.headers.get("Range")))
        for kind, pattern in ROUTES:
            m = pattern.fullmatch(path)
            if m:
                break
        else:
            return self._error(404, "not a hub URL")
        repo = self.fake.repos.get(m["repo"])
        if repo is None:
            return self._error(404, "Repository not found", code="RepoNotFound")
        if m["rev"] not in ("main", repo.commit):
            return self._error(404, "Revision not found", code="RevisionNotFound")
        if kind == "info":
            return self._json({"id": m["repo"], "sha": repo.commit, "private": False,
                               "siblings": [{"rfilename": n} for n in repo.files]})
        if kind == "tree":
            return self._json([{"type": "file", "oid": f.blob_id, "size": len(f.data), "path": n,
                                **({"lfs": {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}}
                                   if f.sha256 else {})}
                               for n, f in repo.files.items()])
        f = repo.files.get(m["path"])
        if f is None:
            return self._error(404, "Entry not found", code="EntryNotFound", commit=repo.commit)
        self._file(f, f"{m['repo']}/{m['path']}", repo.commit, body)

    def _file(self, f: RepoFile, key: str, commit: str, body: bool) -> None:
        data = f.data
        if key in self.fake.corrupt:
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if m is None or int(m[1]) >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, status = int(m[1]), 206
            end = int(m[2]) + 1 if m[2] else len(data)
            data = data[:end]
        self.send_response(status)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(f.data)}")
        if f.sha256:
            self.send_header("ETag", f'"{f.sha256}"')
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(len(f.data)))
        else:
            self.send_header("ETag", f'"{f.blob_id}"')
        self.end_headers()
        if not body:
            return
        stop = len(data)
        if key in self.fake.drops:
            stop = min(stop, start + self.fake.drops.pop(key))
        try:
            for pos in range(start, stop, CHUNK):
                self.wfile.write(data[pos:min(pos + CHUNK, stop)])
                if self.fake.delay:
                    time.sleep(self.fake.delay)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (Ctrl-C)
        self.close_connection = True

    def _json(self, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: Optional[str] = None, commit: Optional[str] = None) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(data)
