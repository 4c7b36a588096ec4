"""Reading a saved state (an .npz written by Model.save_state) without trusting it: every member's
declared sizes, in the zip directory and in its .npy header, are checked against what a state of
this model can hold before anything is decompressed or allocated."""
from __future__ import annotations

import math
import os
import stat
import zipfile
import zlib
from typing import Union

import numpy as np
from numpy.lib import format as npy

from .errors import ModelFileError

_HEADER_SLACK = 1 << 16  # an .npy member's header, beyond its data


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, kind: Union[type, tuple], limit: int, where: str
            ) -> np.ndarray:
    with zf.open(info) as m:
        version = npy.read_magic(m)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        try:
            read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, fortran, dtype = read_header(m)
        except Exception as e:  # numpy parses the header as Python source: SyntaxError, TokenError, ...
            raise ValueError(f"{where}: bad .npy header ({e.__class__.__name__})") from None
        allowed = kind if isinstance(kind, tuple) else (kind,)
        if dtype.hasobject or not any(np.issubdtype(dtype, k) for k in allowed):
            want = "an integer type" if kind is np.integer else " or ".join(np.dtype(k).name for k in allowed)
            raise ModelFileError(f"{where} has dtype {dtype}, expected {want}")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > limit:
            raise ModelFileError(f"{where} declares shape {list(shape)} ({nbytes} bytes); a state of this model "
                                 f"holds at most {limit}")
        data = m.read(nbytes)
        if len(data) != nbytes or m.read(1):  # reading past the end also checks the member's CRC
            raise ValueError(f"{where} does not hold exactly its {nbytes} data bytes")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def read_state_arrays(path: Union[str, os.PathLike], limits: dict[str, tuple[Union[type, tuple], int]]
                      ) -> dict[str, np.ndarray]:
    """The arrays named in `limits` ({name: (dtype kind or a tuple of dtypes, most data bytes)}) from
    the .npz at `path`.
    A missing file raises the OSError naming it; anything else wrong is a ModelFileError."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ModelFileError(f"{path}: not a regular file")
    out = {}
    with open(path, "rb") as f:
        try:
            with zipfile.ZipFile(f) as zf:
                infos = {i.filename: i for i in zf.infolist()}
                for name, (kind, limit) in limits.items():
                    info = infos.get(f"{name}.npy")
                    if info is None:
                        raise ModelFileError(f"{path}: not a phi2cpu state file (no {name} array)")
                    if info.file_size > limit + _HEADER_SLACK:
                        raise ModelFileError(f"{path}: {name} declares {info.file_size} bytes; a state of this "
                                             f"model holds at most {limit}")
                    out[name] = _member(zf, info, kind, limit, f"{path}: {name}")
        except ModelFileError:
            raise
        except (ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
                OSError, MemoryError, RecursionError) as e:
            raise ModelFileError(f"{path}: not a phi2cpu state file ({e.__class__.__name__}: {e})") from None
    return out
