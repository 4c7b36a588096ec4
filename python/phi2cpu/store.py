"""The model store: where `phi2cpu pull` puts models, and how names such as `phi-2:q4_0` map to files.

The root is $PHI2CPU_HOME, else $XDG_CACHE_HOME/phi2cpu, else ~/.cache/phi2cpu. A name is BASE:TAG
in lower case (BASE may be OWNER/REPO); it lives at ROOT/models/BASE/TAG.gguf, with the '/' in BASE
written as '--' (which no hub repo name contains), and a TAG.json beside it that says where it came
from. Models enter the store only by rename, so a name never points at a partial file."""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .atomic import replace_durably, write_bytes
from .errors import ModelFileError, Phi2Error

_PART = r"[a-z0-9][a-z0-9._-]*"
_NAME = re.compile(rf"({_PART}(?:/{_PART})?)(?::({_PART}))?")
_SLASH = "--"


def root() -> Path:
    home = os.environ.get("PHI2CPU_HOME")
    if home:
        return Path(home).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "phi2cpu"


def models_dir() -> Path:
    return root() / "models"


def parse_name(text: str) -> Optional[tuple[str, Optional[str]]]:
    """(base, tag or None) for a valid name, matched case-insensitively; None for anything else."""
    m = _NAME.fullmatch(text.strip().lower())
    if m is None or any(bad in m.group(0) for bad in ("--", "..")):
        return None
    return m.group(1), m.group(2)


def check_name(text: str) -> str:
    """A full store name (BASE:TAG), lower-cased, or a Phi2Error saying what a name looks like."""
    parsed = parse_name(text)
    if parsed is None or parsed[1] is None:
        raise Phi2Error(f"{text!r} is not a model name: use BASE:TAG (e.g. phi-2:q4_0) with letters, digits, "
                        "'.', '_' and '-', and at most one '/' in BASE")
    return f"{parsed[0]}:{parsed[1]}"


def path_for(name: str) -> Path:
    base, tag = check_name(name).split(":")
    return models_dir() / base.replace("/", _SLASH) / f"{tag}.gguf"


def partial_path(name: str, key: str) -> Path:
    """Where a download for `name` collects its bytes until it is checked; `key` (the file's hash)
    keeps a resumed download from appending to the bytes of a different file."""
    final = path_for(name)
    return final.with_name(f".{final.name}.{key[:16]}.partial")


@dataclass
class Entry:
    name: str
    path: Path
    size: int
    modified: float
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def type(self) -> str:
        """The file type in llama.cpp's words (Q4_0, Q4_K - Medium, ...), read from the GGUF header."""
        from .gguf_io import read_model_file
        from .modelinfo import file_type_name

        try:
            mf = read_model_file(self.path)
        except Phi2Error:
            return "unreadable"
        return file_type_name(mf.kv, mf.tensors)


def _entry(path: Path) -> Entry:
    st = path.stat()
    try:
        source = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        source = {}
    name = f"{path.parent.name.replace(_SLASH, '/')}:{path.stem}"
    return Entry(name, path, st.st_size, st.st_mtime, source if isinstance(source, dict) else {})


def entries() -> list[Entry]:
    """Every model in the store, sorted by name."""
    found = []
    top = models_dir()
    if top.is_dir():
        for path in top.glob("*/*.gguf"):
            if not path.name.startswith(".") and parse_name(f"{path.parent.name.replace(_SLASH, '/')}:{path.stem}"):
                found.append(_entry(path))
    return sorted(found, key=lambda e: e.name)


def get(name: str) -> Optional[Entry]:
    path = path_for(name)
    return _entry(path) if path.is_file() else None


def find(text: str) -> Optional[Entry]:
    """The entry a name means: BASE:TAG exactly, or BASE alone when only one tag of it is stored."""
    parsed = parse_name(text)
    if parsed is None:
        return None
    base, tag = parsed
    if tag is not None:
        return get(f"{base}:{tag}")
    matches = [e for e in entries() if e.name.split(":")[0] == base]
    if len(matches) > 1:
        raise Phi2Error(f"{text} names {len(matches)} models: {', '.join(e.name for e in matches)}; give one in full")
    return matches[0] if matches else None


def resolve(arg: str) -> Path:
    """The model file MODEL means: an existing path wins, else a name in the store."""
    path = Path(arg).expanduser()
    if path.exists():
        return path
    entry = find(arg) if not arg.lower().endswith(".gguf") else None
    if entry is not None:
        return entry.path
    if parse_name(arg) is None or arg.lower().endswith(".gguf"):
        raise ModelFileError(f"{arg}: no such file or directory")
    raise ModelFileError(f"{arg}: no such file, and no model of that name in the store ({models_dir()}); "
                         "`phi2cpu list` shows the stored models, `phi2cpu pull REPO` fetches one")


def name_of(path: Path) -> Optional[str]:
    """The store name of a file in the store, else None."""
    try:
        rel = Path(path).resolve().relative_to(models_dir().resolve())
    except (ValueError, OSError):
        return None
    if len(rel.parts) != 2 or rel.suffix != ".gguf":
        return None
    name = f"{rel.parts[0].replace(_SLASH, '/')}:{rel.stem}"
    return name if parse_name(name) else None


def write_source(name: str, source: dict[str, Any]) -> None:
    """Record where `name` came from, beside its file."""
    record = {"name": check_name(name), "pulled": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **source}
    write_bytes(path_for(name).with_suffix(".json"), (json.dumps(record, indent=1) + "\n").encode())


def install(tmp: Path, name: str, source: dict[str, Any]) -> Entry:
    """Move a finished, checked file (in the entry's directory) to `name`, atomically."""
    final = path_for(name)
    replace_durably(tmp, final)
    write_source(name, source)
    return _entry(final)


def remove(text: str) -> Entry:
    """Delete one model (its file, its source record and any unfinished download for it)."""
    entry = find(text)
    if entry is None:
        raise Phi2Error(f"{text}: no model of that name in the store ({models_dir()}); `phi2cpu list` shows them")
    for stale in entry.path.parent.glob(f".{entry.path.name}.*"):
        stale.unlink(missing_ok=True)
    entry.path.with_suffix(".json").unlink(missing_ok=True)
    entry.path.unlink()
    try:
        entry.path.parent.rmdir()
    except OSError:
        pass  # other tags of the same model remain
    return entry
