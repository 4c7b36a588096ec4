"""Where load keeps repack caches: the matrices of a model file in the layout this CPU's kernels
read, written on the first load and mapped on later ones (the format is in csrc/model/repack_cache.h).

They live in the model store, ``$PHI2CPU_HOME/repack`` (else ``$XDG_CACHE_HOME/phi2cpu/repack``,
else ``~/.cache/phi2cpu/repack``). ``PHI2CPU_REPACK_CACHE=off`` turns them off; a folder there puts
them in that folder. Deleting the folder is always safe."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from . import store

OFF = ("0", "off", "no", "false")
CacheArg = Union[bool, str, os.PathLike, None]


def cache_dir(repack_cache: CacheArg = None) -> Optional[Path]:
    """The folder for `load(..., repack_cache=...)`: None follows $PHI2CPU_REPACK_CACHE and the store,
    False turns caching off (returns None), True uses the store's folder, a path is that folder."""
    if repack_cache is False:
        return None
    if repack_cache is None:
        env = os.environ.get("PHI2CPU_REPACK_CACHE", "").strip()
        if env.lower() in OFF:
            return None
        if env:
            return Path(env).expanduser()
    if repack_cache is None or repack_cache is True:
        try:
            return store.root() / "repack"
        except RuntimeError:  # no home folder to put it in
            return None
    return Path(repack_cache).expanduser()


def prune(repack_cache: CacheArg = None) -> None:
    """Delete the caches whose model file is gone or has changed (loads that write a cache do this
    too); for `phi2cpu rm` after it deletes a model. `repack_cache` as for :func:`cache_dir`."""
    from . import _core

    folder = cache_dir(repack_cache)
    if folder is not None and folder.is_dir():
        _core.prune_repack_cache(str(folder))
