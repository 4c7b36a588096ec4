"""The peers' own exports of an HF checkpoint, made once by their own tools and kept in the bench cache.

- OpenVINO GenAI: `optimum-cli export openvino --weight-format int4|int8` (optimum-intel + NNCF).
- ONNX Runtime GenAI: its model builder, `-p int4` (with int4_accuracy_level=4) or `-p int8`, CPU.
  The builder reads the rotary width from the config object transformers gives it; it is fed a
  staged copy of the checkpoint whose config.json states `partial_rotary_factor` at the top level,
  and the export is refused unless its cos cache is exactly rotary_dims / 2 wide.

A folder is named like the cache's GGUF files (the source's name and the hash of its files) plus a
hash of the command and the exporter's version, is built under a temporary name and renamed into
place only when complete and checked.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from ..config import PhiConfig
from .assets import AssetError, Cache, _digest, source_tag
from .engines import EXPORT_ENGINES, ORT_GENAI, OPENVINO, OWN_FORMATS

EXPORT_FORMATS = {e: OWN_FORMATS[e] for e in EXPORT_ENGINES}
TOOLS = {OPENVINO: (["optimum.intel", "nncf", "openvino"], "optimum-intel"),
         ORT_GENAI: (["onnxruntime_genai.models.builder", "onnx", "onnx_ir"], "onnxruntime-genai")}
EXPORT_TIMEOUT_S = 4 * 3600


def exporter_missing(engine: str) -> Optional[str]:
    """Why `engine`'s export tool cannot run here, or None."""
    modules, _ = TOOLS[engine]
    for m in modules:
        try:
            found = importlib.util.find_spec(m) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"cannot make its export: python module {m!r} is not installed"
    return None


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def command(engine: str, fmt: str, src: Path, out: Path) -> list[str]:
    if fmt not in EXPORT_FORMATS[engine]:
        raise ValueError(f"{engine} has no {fmt} export; choose from {', '.join(EXPORT_FORMATS[engine])}")
    if engine == OPENVINO:
        return [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino", "--model", str(src),
                "--task", "text-generation-with-past", "--weight-format", fmt, str(out)]
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out), "-p", fmt,
           "-e", "cpu", "-c", str(out / "hf-cache")]
    if fmt == "int4":
        cmd += ["--extra_options", "int4_accuracy_level=4"]
    return cmd


def display_command(engine: str, fmt: str) -> str:
    """The export command as the report shows it (no paths)."""
    words = command(engine, fmt, Path("SRC"), Path("OUT"))[1:]
    return " ".join(["python"] + words)


def stage_for_builder(src: Path, stage: Path) -> None:
    """A folder of links to `src`'s files with a config.json that states partial_rotary_factor at
    the top level (rotary dims / head dim, as phi2cpu reads the config)."""
    cfg = json.loads((src / "config.json").read_text())
    phi = PhiConfig.from_hf(cfg, str(src / "config.json"))
    stage.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "config.json":
            os.symlink(f.resolve(), stage / f.name)
    cfg["partial_rotary_factor"] = phi.n_rot / phi.head_dim
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict):
        rope["partial_rotary_factor"] = cfg["partial_rotary_factor"]
    (stage / "config.json").write_text(json.dumps(cfg, indent=2))


def check_rotary(out: Path, src: Path) -> None:
    """The builder's cos cache must be rotary_dims / 2 wide, as the checkpoint's config says."""
    import onnx

    cfg = json.loads((src / "config.json").read_text())
    phi = PhiConfig.from_hf(cfg, str(src / "config.json"))
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    widths = {i.name: list(i.dims) for i in model.graph.initializer if i.name in ("cos_cache", "sin_cache")}
    if not widths:
        raise AssetError(f"the ONNX Runtime GenAI export in {out.name} has no cos_cache to check")
    for name, dims in widths.items():
        if dims[-1] != phi.n_rot // 2:
            raise AssetError(f"the ONNX Runtime GenAI builder made a {dims[-1]}-wide {name} for rotary dims "
                             f"{phi.n_rot} (expected {phi.n_rot // 2}); the export would compute another model")


def check_output(engine: str, out: Path, src: Path) -> None:
    need = {OPENVINO: ["openvino_model.xml", "openvino_model.bin"],
            ORT_GENAI: ["genai_config.json", "model.onnx"]}[engine]
    missing = [n for n in need if not (out / n).is_file()]
    if missing:
        raise AssetError(f"the {engine} export finished without {', '.join(missing)}")
    if engine == ORT_GENAI:
        check_rotary(out, src)


def export(cache: Cache, engine: str, fmt: str, src: Path, log_path: Optional[str] = None) -> Path:
    """`src` (an HF checkpoint) exported by `engine`'s own tool to `fmt`, cached; AssetError when the
    tool is missing or its export fails or is refused."""
    why = exporter_missing(engine)
    cmd_key = " ".join(command(engine, fmt, Path("SRC"), Path("OUT"))[1:])
    tag = _digest(source_tag(src).encode(), cmd_key.encode(), _version(TOOLS[engine][1]).encode())
    out = cache.folder / f"{src.name}-{tag}.{engine}-{fmt}"
    if out.is_dir():
        return out
    if why:
        raise AssetError(why)
    tmp = cache.folder / f".{out.name}.{os.getpid()}.tmp"
    stage = cache.folder / f".{out.name}.{os.getpid()}.stage"
    for d in (tmp, stage):
        shutil.rmtree(d, ignore_errors=True)
    cache.log(f"exporting {src.name} with {engine} to {fmt}: {out}")
    t0 = time.perf_counter()
    try:
        source = src
        if engine == ORT_GENAI:
            stage_for_builder(src, stage)
            source = stage
        log = open(log_path, "a") if log_path else subprocess.DEVNULL
        try:
            proc = subprocess.run(command(engine, fmt, source, tmp), stdout=log, stderr=log,
                                  timeout=EXPORT_TIMEOUT_S, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        if proc.returncode != 0:
            raise AssetError(f"the {engine} {fmt} export failed (exit status {proc.returncode}; its output is in "
                             f"{Path(log_path).name if log_path else 'the log'})")
        shutil.rmtree(tmp / "hf-cache", ignore_errors=True)
        check_output(engine, tmp, src)
        tmp.rename(out)
    except subprocess.TimeoutExpired:
        raise AssetError(f"the {engine} {fmt} export took more than {EXPORT_TIMEOUT_S / 3600:.0f} h") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        cache.setup_s += time.perf_counter() - t0
    return out
