"""Files that appear whole or not at all: write to a temporary name in the same directory, fsync,
rename. Whatever stops a write (Ctrl-C, a full disk, a crash) never leaves a partial file under the
final name; the writers here also remove their temporary file unless the process is killed outright."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Iterator


def temp_path(final: Path, suffix: str = "tmp") -> Path:
    """A hidden name beside `final`, unique to this process."""
    return final.with_name(f".{final.name}.{os.getpid()}.{suffix}")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(tmp: Path, final: Path) -> None:
    """Flush `tmp` to disk and rename it to `final` (replacing any old file in one step)."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_bytes(final: Path, data: bytes) -> None:
    """Write a small file atomically."""
    tmp = temp_path(final)
    try:
        tmp.write_bytes(data)
        replace_durably(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def no_space_left(e: OSError, directory: Path) -> bool:
    """Whether a failed write ran out of disk space. numpy's tofile reports a short write without
    an errno, so a nearly full file system counts as well."""
    if e.errno == errno.ENOSPC:
        return True
    try:
        return e.errno is None and shutil.disk_usage(directory).free < (1 << 20)
    except OSError:
        return False


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises SystemExit(143), so the writers' cleanup runs and removes
    their temporary files; the previous handler comes back afterwards. Only the main thread can
    take signals, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
