"""Models from the Hugging Face Hub, through huggingface_hub (imported here only, when first needed).

`pull` takes a checkpoint repo (microsoft/phi-2), quantizes it and stores the result, or takes a
GGUF (REPO:QUANT or REPO/FILE.gguf) as it is. A checkpoint's files go into the user's HF cache in
the hub's own layout, so that other tools share them, and files already cached are not downloaded
again; a GGUF goes straight into the model store.

Each download collects its bytes in a partial file that a later run resumes (an HTTP Range
request). It is checked against the hash the hub gives for the file (its ETag: the LFS sha256, or
the git blob id of a small file) and renamed to its final name only then; a mismatch deletes it."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional
from urllib.parse import urlparse

from tqdm import tqdm

from . import store
from .atomic import no_space_left, replace_durably
from .errors import DownloadError, ModelFileError, Phi2Error

DEFAULT_TYPE = "q4_0"
CONFIG, TOKENIZER, INDEX, SINGLE = "config.json", "tokenizer.json", "model.safetensors.index.json", "model.safetensors"
# fetched when the repository has them: where a checkpoint keeps its chat template
CHAT_TEMPLATE_FILES = ("tokenizer_config.json", "chat_template.jinja")


def _hf():
    try:
        import huggingface_hub
        from huggingface_hub import constants, file_download  # noqa: F401  (submodules used below)
    except ImportError:
        raise Phi2Error("pull needs huggingface_hub: pip install huggingface_hub") from None
    return huggingface_hub


def _transport_errors() -> tuple:
    """The hub client's network errors (connection refused, timeouts, a connection cut short)."""
    try:
        import httpx2 as http
    except ImportError:
        try:
            import httpx as http
        except ImportError:
            return ()
    return (http.TransportError,)


@contextlib.contextmanager
def _hub_errors(what: str) -> Iterator[None]:
    """The hub's HTTP errors as one-line DownloadErrors about `what`."""
    from huggingface_hub import errors as e

    try:
        yield
    except e.GatedRepoError:
        raise DownloadError(f"{what}: the repository is gated: accept its terms on the hub, then log in "
                            "(`hf auth login`, or set HF_TOKEN)") from None
    except e.RepositoryNotFoundError:
        raise DownloadError(f"{what}: no such repository on the hub (if it is private, log in with "
                            "`hf auth login` or set HF_TOKEN)") from None
    except e.RevisionNotFoundError:
        raise DownloadError(f"{what}: no such revision (branch, tag or commit) in the repository") from None
    except e.RemoteEntryNotFoundError:
        raise DownloadError(f"{what}: no such file in the repository") from None
    except e.OfflineModeIsEnabled:
        raise DownloadError(f"{what}: HF_HUB_OFFLINE is set, so the hub is not asked") from None
    except e.HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "an error"
        raise DownloadError(f"{what}: the hub answered {status} ({str(err).splitlines()[0]})") from None


def _size(n: Optional[int]) -> str:
    return "unknown size" if n is None else tqdm.format_sizeof(n, "B")


# ----------------------------------------------------------------------------- sources and names

@dataclass(frozen=True)
class Source:
    """What `pull` was asked for: a checkpoint repo, or a GGUF by quant tag or by file name."""
    repo: str
    quant: Optional[str] = None
    filename: Optional[str] = None

    @property
    def is_gguf(self) -> bool:
        return self.quant is not None or self.filename is not None


def parse_source(text: str) -> Source:
    """REPO, REPO:QUANT or REPO/FILE.gguf (REPO is OWNER/NAME as on the hub)."""
    _hf()
    text = text.strip()
    if text.lower().endswith(".gguf"):
        parts = text.split("/")
        if len(parts) < 3 or not all(parts):
            raise Phi2Error(f"{text}: a GGUF on the hub is pulled as OWNER/REPO/FILE.gguf (or OWNER/REPO:QUANT)")
        src = Source("/".join(parts[:2]), filename="/".join(parts[2:]))
    elif ":" in text:
        repo, _, quant = text.rpartition(":")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", quant):
            raise Phi2Error(f"{text}: QUANT in REPO:QUANT is a tag such as Q4_K_M, got {quant!r}")
        src = Source(repo, quant=quant)
    else:
        src = Source(text)
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(src.repo)
    except HFValidationError:
        raise Phi2Error(f"{text}: not a hub repository (OWNER/NAME, e.g. microsoft/phi-2); to convert a "
                        "checkpoint folder on this machine, use `phi2cpu quantize`") from None
    return src


def default_name(src: Source, qtype: str) -> str:
    """phi-2:q4_0 for a converted checkpoint; owner/repo:quant for a GGUF taken as it is."""
    if src.quant is not None:
        return f"{src.repo.lower()}:{src.quant.lower()}"
    if src.filename is not None:
        return f"{src.repo.lower()}:{Path(src.filename).name[:-len('.gguf')].lower()}"
    return f"{src.repo.split('/')[-1].lower()}:{qtype}"


def pick_gguf(repo: str, files: list[str], quant: str) -> str:
    """The one .gguf file whose name holds `quant` as a whole tag (Q4_K matches neither Q4_K_M nor
    Q4_K_S), case-insensitively."""
    tag = re.compile(rf"(?<![a-z0-9]){re.escape(quant.lower())}(?![a-z0-9_])")
    matches = [f for f in files if tag.search(Path(f).name.lower()[:-len(".gguf")])]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DownloadError(f"{repo} has no .gguf file whose name matches {quant!r}; its GGUF files: "
                            f"{', '.join(files) or 'none'}")
    raise DownloadError(f"{repo}: {quant!r} matches {len(matches)} files ({', '.join(matches)}); "
                        f"pull one of them as {repo}/FILE.gguf")


# ----------------------------------------------------------------------------- one file

@dataclass(frozen=True)
class RemoteFile:
    repo: str
    filename: str
    commit: str
    etag: str             # the LFS sha256 (64 hex digits) or the git blob id (40)
    size: Optional[int]
    url: str              # the /resolve/ URL
    location: str         # where the bytes are served (the URL itself, or where it redirects)

    @property
    def what(self) -> str:
        return f"{self.repo}/{self.filename}"


def _hash_kind(what: str, etag: str) -> str:
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        return "sha256"
    if re.fullmatch(r"[0-9a-f]{40}", etag):
        return "git blob sha1"
    raise DownloadError(f"{what}: the hub's ETag {etag!r} is neither a sha256 nor a git blob id, so the "
                        "download could not be checked")


def remote_file(repo: str, filename: str, revision: str, endpoint: Optional[str] = None) -> RemoteFile:
    """The file's commit, hash, size and location, from a HEAD request on its /resolve/ URL."""
    hf = _hf()
    url = hf.hf_hub_url(repo, filename, revision=revision, endpoint=endpoint)
    with _hub_errors(f"{repo}/{filename}"):
        meta = hf.get_hf_file_metadata(url, endpoint=endpoint)
    if not meta.etag or not meta.commit_hash:
        raise DownloadError(f"{url}: the answer has no ETag or X-Repo-Commit; is HF_ENDPOINT a Hugging Face hub?")
    _hash_kind(f"{repo}/{filename}", meta.etag)
    # as the hub client does: a plain LFS file is fetched from where /resolve/ redirects; a Xet-stored
    # one through /resolve/ itself (the plain HTTP path, following the redirect)
    location = url if getattr(meta, "xet_file_data", None) is not None else (meta.location or url)
    return RemoteFile(repo, filename, meta.commit_hash, meta.etag, meta.size, url, location)


def _partial_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _get_bytes(rf: RemoteFile, partial: Path, have: int, progress: bool) -> None:
    """Append the bytes from `have` on to `partial`; keep what arrived when this stops early."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    bar = None if progress else functools.partial(tqdm, disable=True)  # None: the hub's bar, on a terminal

    headers = build_hf_headers()
    if urlparse(rf.location).netloc != urlparse(rf.url).netloc:
        headers.pop("authorization", None)  # a signed CDN URL: the token stays with the hub
    try:
        with open(partial, "ab") as f, _hub_errors(rf.what):
            http_get(rf.location, f, resume_size=have, headers=headers, expected_size=rf.size,
                     displayed_filename=Path(rf.filename).name, tqdm_class=bar)
    except _transport_errors() as e:
        raise DownloadError(f"{rf.what}: the download broke off after {_partial_size(partial)} of {rf.size} "
                            f"bytes ({e}); run the same pull again to resume it") from None
    except OSError as e:
        got = _partial_size(partial)
        if no_space_left(e, partial.parent):
            raise DownloadError(f"{partial.parent}: no space left on the device after {got} of {rf.size} bytes "
                                f"of {rf.what}; free some space and run the same pull again to resume (the bytes "
                                f"so far are kept in {partial.name})") from None
        if e.errno is None and rf.size is not None and got != rf.size:  # the hub client's size check
            if got < rf.size:
                raise DownloadError(f"{rf.what}: the download stopped after {got} of {rf.size} bytes; run the "
                                    "same pull again to resume it") from None
            partial.unlink(missing_ok=True)
            raise DownloadError(f"{rf.what}: the hub sent {got} bytes, not the {rf.size} it announced; the "
                                "download was deleted") from None
        raise


def _check_hash(rf: RemoteFile, path: Path, progress: bool) -> None:
    kind = _hash_kind(rf.what, rf.etag)
    size = path.stat().st_size
    h = hashlib.sha256() if kind == "sha256" else hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"check {Path(rf.filename).name}",
                                     disable=None if progress else True, leave=False) as bar:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            bar.update(len(chunk))
    if h.hexdigest() != rf.etag:
        path.unlink(missing_ok=True)
        raise DownloadError(f"{rf.what}: {kind} mismatch: the hub says {rf.etag}, the download hashes to "
                            f"{h.hexdigest()}; the bad download was deleted, run the same pull again")


def download(rf: RemoteFile, partial: Path, *, validate: Optional[Callable[[Path], None]] = None,
             progress: bool = True) -> Path:
    """Fetch `rf` into `partial` (resuming what an earlier run left there), check its hash and then
    `validate` it; returns `partial`, complete and checked, for the caller to rename. A file that
    fails either check is deleted."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    have = _partial_size(partial)
    if rf.size is not None and have > rf.size:
        partial.unlink()
        have = 0
    if rf.size is None or have < rf.size:
        _get_bytes(rf, partial, have, progress)
    _check_hash(rf, partial, progress)
    if validate is not None:
        try:
            validate(partial)
        except Phi2Error:
            partial.unlink(missing_ok=True)
            raise
    return partial


# ----------------------------------------------------------------------------- checkpoints

@dataclass(frozen=True)
class Snapshot:
    path: Path              # the snapshot folder in the HF cache
    commit: str
    files: list[str]
    downloaded: list[str]   # the files this run fetched (the rest were cached)


def _shards(index: Path, what: str) -> list[str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise DownloadError(f"{what}: {INDEX} has no readable weight_map") from None


def _cached(hf, repo: str, filename: str, revision: str, cache: Path) -> Optional[Path]:
    found = hf.try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision)
    return Path(found) if isinstance(found, str) else None


def _cached_checkpoint(hf, repo: str, revision: str, cache: Path, why: str) -> Snapshot:
    config = _cached(hf, repo, CONFIG, revision, cache)
    if config is None:
        raise DownloadError(f"{repo} (revision {revision}) is not in the HF cache ({cache}), and {why}")
    commit = config.parent.name
    index = _cached(hf, repo, INDEX, commit, cache)
    files = [CONFIG, TOKENIZER] + ([INDEX] + _shards(index, repo) if index else [SINGLE])
    missing = [f for f in files if _cached(hf, repo, f, commit, cache) is None]
    files += [f for f in CHAT_TEMPLATE_FILES if _cached(hf, repo, f, commit, cache) is not None]
    if missing:
        raise DownloadError(f"{repo} is only partly in the HF cache ({config.parent} lacks {', '.join(missing)}), "
                            f"and {why}")
    return Snapshot(config.parent, commit, files, [])


def _not_a_checkpoint(repo: str, tree: list[str], missing: str) -> DownloadError:
    ggufs = [f for f in tree if f.lower().endswith(".gguf")]
    if ggufs:
        return DownloadError(f"{repo} holds GGUF files, not a checkpoint: pull one as {repo}:QUANT or "
                             f"{repo}/FILE.gguf; its GGUF files: {', '.join(ggufs)}")
    return DownloadError(f"{repo} is not a checkpoint phi2cpu can convert: it has no {missing} "
                         f"(its files: {', '.join(tree[:12])}{', ...' if len(tree) > 12 else ''})")


def _repo_tree(hf, repo: str, revision: str, endpoint: Optional[str]) -> tuple[str, list[str]]:
    api = hf.HfApi(endpoint=endpoint)
    with _hub_errors(f"{repo} (revision {revision})"):
        commit = api.repo_info(repo, revision=revision).sha
        files = [f.path for f in api.list_repo_tree(repo, revision=commit, recursive=True)
                 if isinstance(f, hf.RepoFile)]
    return commit, files


def fetch_checkpoint(repo: str, revision: str = "main", *, cache_dir: Optional[str] = None,
                     endpoint: Optional[str] = None, progress: bool = True,
                     say: Callable[[str], None] = lambda s: None) -> Snapshot:
    """config.json, tokenizer.json, the safetensors weights (the index and its shards, or
    model.safetensors) and, where the repository has them, the files that hold a chat template
    (tokenizer_config.json, chat_template.jinja) of `repo` in the HF cache, downloading only what
    is not there yet. Offline (HF_HUB_OFFLINE) or with the hub unreachable, the cached snapshot is
    used as it is."""
    hf = _hf()
    cache = Path(cache_dir or hf.constants.HF_HUB_CACHE)
    if hf.is_offline_mode():
        snap = _cached_checkpoint(hf, repo, revision, cache, "HF_HUB_OFFLINE is set")
        say(f"HF_HUB_OFFLINE is set: using {repo} from the HF cache (commit {snap.commit[:12]})")
        return snap
    try:
        commit, tree = _repo_tree(hf, repo, revision, endpoint)
    except _transport_errors() as e:
        say(f"cannot reach the hub ({e}); looking in the HF cache")
        return _cached_checkpoint(hf, repo, revision, cache, f"the hub cannot be reached ({e})")
    for need in (CONFIG, TOKENIZER):
        if need not in tree:
            raise _not_a_checkpoint(repo, tree, need)
    if INDEX not in tree and SINGLE not in tree:
        raise _not_a_checkpoint(repo, tree, f"safetensors weights ({SINGLE} or {INDEX})")
    say(f"{repo}: revision {revision} is commit {commit[:12]}")

    blobs = cache / hf.file_download.repo_folder_name(repo_id=repo, repo_type="model") / "blobs"
    downloaded: list[str] = []

    def fetch(filename: str) -> Path:
        cached = _cached(hf, repo, filename, commit, cache)
        if cached is not None:
            return cached
        rf = remote_file(repo, filename, commit, endpoint)
        blob = blobs / rf.etag
        if not blob.is_file():
            say(f"downloading {filename} ({_size(rf.size)})")
            replace_durably(download(rf, blobs / f"{rf.etag}.partial", progress=progress), blob)
            downloaded.append(filename)
        # the blob is in place: the hub's own code adds the snapshot entry that points at it
        with _hub_errors(rf.what):
            return Path(hf.hf_hub_download(repo, filename, revision=commit, cache_dir=cache, endpoint=endpoint))

    files = [CONFIG, TOKENIZER] + [f for f in CHAT_TEMPLATE_FILES if f in tree]  # the small files first
    if INDEX in tree:
        shards = _shards(fetch(INDEX), repo)
        absent = [s for s in shards if s not in tree]
        if absent:
            raise DownloadError(f"{repo}: {INDEX} names shards the repository lacks: {', '.join(absent)}")
        files += [INDEX] + shards
    else:
        files.append(SINGLE)
    paths = [fetch(f) for f in files]
    if not hf.file_download.REGEX_COMMIT_HASH.fullmatch(revision):
        with _hub_errors(repo):  # records revision -> commit in refs/, for offline use later
            hf.hf_hub_download(repo, CONFIG, revision=revision, cache_dir=cache, endpoint=endpoint)
    cached = len(files) - len(downloaded)
    if cached:
        say(f"{cached} of {len(files)} files were already in the HF cache ({cache})")
    return Snapshot(paths[0].parent, commit, files, downloaded)


# ----------------------------------------------------------------------------- pull

def _check_gguf(what: str) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        from .gguf_io import read_model_file

        try:
            read_model_file(path)
        except ModelFileError as e:
            reason = str(e).replace(f"{path}: ", "").replace(str(path), "the file")
            raise ModelFileError(f"{what} is not a model phi2cpu can run ({reason}); the download was deleted") \
                from None
    return check


def _pull_gguf(src: Source, name: str, revision: str, endpoint: Optional[str], progress: bool,
               say: Callable[[str], None]) -> store.Entry:
    hf = _hf()
    if hf.is_offline_mode():
        raise DownloadError(f"{src.repo}: HF_HUB_OFFLINE is set, and pulling a GGUF needs the hub")
    commit, tree = _repo_tree(hf, src.repo, revision, endpoint)
    ggufs = [f for f in tree if f.lower().endswith(".gguf")]
    if src.filename is not None:
        if src.filename not in tree:
            raise DownloadError(f"{src.repo} has no file {src.filename}; its GGUF files: {', '.join(ggufs) or 'none'}")
        filename = src.filename
    else:
        filename = pick_gguf(src.repo, ggufs, src.quant)
    rf = remote_file(src.repo, filename, commit, endpoint)
    say(f"downloading {rf.what} ({_size(rf.size)}, commit {commit[:12]})")
    partial = download(rf, store.partial_path(name, rf.etag), validate=_check_gguf(rf.what), progress=progress)
    return store.install(partial, name, {"repo": src.repo, "revision": revision, "commit": commit,
                                         "file": filename, "sha256": rf.etag})


def _pull_checkpoint(src: Source, name: str, qtype: str, revision: str, endpoint: Optional[str],
                     cache_dir: Optional[str], progress: bool, say: Callable[[str], None]) -> store.Entry:
    from .quantize import quantize

    snap = fetch_checkpoint(src.repo, revision, cache_dir=cache_dir, endpoint=endpoint, progress=progress, say=say)
    out = store.path_for(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    say(f"converting {src.repo} to {qtype}")
    quantize(snap.path, out, qtype, progress=progress)
    store.write_source(name, {"repo": src.repo, "revision": revision, "commit": snap.commit,
                              "files": snap.files, "type": qtype})
    return store.get(name)


def pull(source: str, qtype: Optional[str] = None, *, name: Optional[str] = None, revision: str = "main",
         force: bool = False, progress: bool = True, say: Callable[[str], None] = lambda s: None,
         endpoint: Optional[str] = None, cache_dir: Optional[str] = None) -> tuple[store.Entry, bool]:
    """Put `source` in the model store; returns (its entry, whether anything was pulled). A name
    that is already there is kept unless `force`."""
    from .quantize import QTYPES

    src = parse_source(source)
    if src.is_gguf and qtype is not None:
        raise Phi2Error(f"--type converts a checkpoint; {source} is a GGUF, which is stored as it is")
    qtype = (qtype or DEFAULT_TYPE).lower()
    if not src.is_gguf and qtype not in QTYPES:
        raise Phi2Error(f"--type must be one of {', '.join(QTYPES)}, not {qtype!r}")
    name = store.check_name(name or default_name(src, qtype))
    old = store.get(name)
    if old is not None and not force:
        if old.source.get("repo", "").lower() == src.repo.lower():
            say(f"{name} is already in the store; `phi2cpu pull --force {source}` pulls it again")
            return old, False
        raise Phi2Error(f"{name} is already in the store, from {old.source.get('repo', 'elsewhere')}; pick another "
                        f"--name, or `phi2cpu rm {name}` first")
    if src.is_gguf:
        return _pull_gguf(src, name, revision, endpoint, progress, say), True
    return _pull_checkpoint(src, name, qtype, revision, endpoint, cache_dir, progress, say), True
