"""The engines the benchmark compares, behind one small interface.

Each engine holds one loaded model and a KV cache:
    load(path, threads, n_ctx, all_logits)   path: a GGUF file, or an HF checkpoint dir for torch
    load_info() -> dict                       what the engine says about its load (may be empty)
    reset()                                   empty the cache
    eval(ids) -> (n_vocab,) float32           append ids, logits of the last one
    eval_all(ids) -> (len(ids), n_vocab)      append ids, logits of every one
    tokenize(text) -> list[int]
Every engine is fed token ids, so all of them see exactly the same input.
"""
from __future__ import annotations

import importlib.util
from typing import Optional, Sequence

import numpy as np

PHI2CPU = "phi2cpu"
LLAMA_CPP = "llama.cpp"
HF_FP32 = "hf-fp32"
HF_BF16 = "hf-bf16"
OPENVINO = "openvino"
ORT_GENAI = "ort-genai"
TORCH_INT8 = "torch-int8"
ALL_ENGINES = (PHI2CPU, LLAMA_CPP, OPENVINO, ORT_GENAI, TORCH_INT8, HF_FP32, HF_BF16)
PEERS = ALL_ENGINES[1:]
TORCH_ENGINES = (HF_FP32, HF_BF16, TORCH_INT8)  # run the HF checkpoint itself
EXPORT_ENGINES = (OPENVINO, ORT_GENAI)        # run their own export of the HF checkpoint
FULL_ONLY = (HF_FP32, HF_BF16)                # only in --full runs
# The formats each non-GGUF engine runs: its own quantization of the HF checkpoint ("F16" for the
# HF engines: they are compared with phi2cpu's F16 file).
OWN_FORMATS = {OPENVINO: ("int4", "int8"), ORT_GENAI: ("int4", "int8"), TORCH_INT8: ("int8",),
               HF_FP32: ("F16",), HF_BF16: ("F16",)}
WEIGHT_CLASS = {"Q4_0": "4-bit", "Q4_K_M": "4-bit", "Q4_K_S": "4-bit", "IQ4_XS": "4-bit", "int4": "4-bit", "Q8_0": "8-bit", "int8": "8-bit",
                "F16": "16-bit", "F32": "32-bit"}


def uses_gguf(engine: str) -> bool:
    """llama.cpp runs our GGUF files; the others run the HF checkpoint or their own export of it."""
    return engine in (PHI2CPU, LLAMA_CPP)


def weight_class(engine: str, fmt: str) -> str:
    """The class a cell is ranked in: 4-bit, 8-bit, 16-bit (HF fp32 joins 16-bit, beside phi2cpu F16)."""
    return WEIGHT_CLASS.get(fmt, fmt)


def format_label(engine: str, fmt: str) -> str:
    """How a (engine, format) pair is shown: the torch engines run the HF checkpoint in their dtype."""
    if engine == HF_FP32:
        return "HF fp32"
    if engine == HF_BF16:
        return "HF bf16"
    if engine == TORCH_INT8:
        return "dynamic int8"
    return fmt


def missing_reason(engine: str) -> Optional[str]:
    """Why `engine` cannot run here, or None when it can (checked without importing it)."""
    need = {PHI2CPU: ["phi2cpu"], LLAMA_CPP: ["llama_cpp"], OPENVINO: ["openvino_genai"],
            ORT_GENAI: ["onnxruntime_genai"], TORCH_INT8: ["torch", "transformers"],
            HF_FP32: ["torch", "transformers"], HF_BF16: ["torch", "transformers"]}[engine]
    dist = {OPENVINO: "openvino-genai", ORT_GENAI: "onnxruntime-genai"}
    for module in need:
        if importlib.util.find_spec(module) is None:
            hint = f"pip install {dist[engine]}" if engine in dist else "pip install 'phi2cpu[bench]'"
            return f"python package {module!r} is not installed ({hint})"
    return None


def version_of(engine: str) -> Optional[str]:
    from importlib import metadata

    dist = {PHI2CPU: "phi2cpu", LLAMA_CPP: "llama-cpp-python", OPENVINO: "openvino-genai",
            ORT_GENAI: "onnxruntime-genai", TORCH_INT8: "torch", HF_FP32: "torch", HF_BF16: "torch"}[engine]
    try:
        v = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
    if engine in TORCH_ENGINES:
        try:
            v += f", transformers {metadata.version('transformers')}"
        except metadata.PackageNotFoundError:
            pass
    return v


class Phi2cpuEngine:
    def load(self, path: str, threads: int, n_ctx: int, all_logits: bool = False) -> None:
        import phi2cpu

        self.model = phi2cpu.load(path, threads=threads, n_ctx=n_ctx)

    def load_info(self) -> dict:
        return {"weights": self.model.repack_report["weights"]}

    def reset(self) -> None:
        self.model.reset()

    def eval(self, ids: Sequence[int]) -> np.ndarray:
        return self.model.eval(list(ids))

    def eval_all(self, ids: Sequence[int]) -> np.ndarray:
        return self.model.eval(list(ids), all_logits=True)

    def tokenize(self, text: str) -> list[int]:
        return list(self.model.tokenize(text))


class LlamaCppEngine:
    """llama-cpp-python on the very same GGUF file."""

    def load(self, path: str, threads: int, n_ctx: int, all_logits: bool = False) -> None:
        from llama_cpp import Llama

        self.all_logits = all_logits
        args = dict(model_path=path, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads,
                    n_threads_batch=threads, logits_all=all_logits)
        try:
            self.llm = Llama(**args, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise RuntimeError(f"llama.cpp rejected {path}: {e}; its log says: {_llama_load_log(args)}") from None
        self.n_vocab = self.llm.n_vocab()

    def load_info(self) -> dict:
        return {}

    def reset(self) -> None:
        self.llm.reset()

    def eval(self, ids: Sequence[int]) -> np.ndarray:
        self.llm.eval(list(ids))
        if self.all_logits:
            return self.llm.scores[self.llm.n_tokens - 1].copy()
        ptr = self.llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def eval_all(self, ids: Sequence[int]) -> np.ndarray:
        if not self.all_logits:
            raise RuntimeError("llama.cpp needs logits_all=True at load to return every position's logits")
        start = self.llm.n_tokens
        self.llm.eval(list(ids))
        return self.llm.scores[start:self.llm.n_tokens].copy()

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))


def _llama_load_log(args: dict) -> str:
    """Load again with llama.cpp's logging on, catching what it writes to the stderr descriptor,
    and return the lines that explain the failure."""
    import os
    import tempfile

    from llama_cpp import Llama

    with tempfile.TemporaryFile(mode="w+") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            Llama(**args, verbose=True)
        except Exception:  # the failure itself is already known; only its log is wanted
            pass
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        lines = tmp.read().splitlines()
    keep = [ln.strip() for ln in lines if any(w in ln.lower() for w in ("error", "fail", "invalid", "unknown",
                                                                           "missing", "wrong", "expected"))]
    return " | ".join(keep[-8:]) or "(nothing)"


class TorchEngine:
    """HF transformers PhiForCausalLM on the HF checkpoint, fp32 or bf16, one token per step
    with its KV cache; only the last position's logits are computed unless all are asked for."""

    def __init__(self, dtype_name: str):
        self.dtype_name = dtype_name

    def load(self, path: str, threads: int, n_ctx: int, all_logits: bool = False) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[self.dtype_name]
        # .to(dtype) as well: releases before `dtype=` took effect read it as a config field.
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(dtype).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.cache = None

    def load_info(self) -> dict:
        return {}

    def reset(self) -> None:
        self.cache = None

    def _forward(self, ids: Sequence[int], keep: int) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.tensor([list(ids)], dtype=torch.long)
            out = self.model(input_ids=x, past_key_values=self.cache, use_cache=True, logits_to_keep=keep)
            self.cache = out.past_key_values
            return out.logits[0].float().numpy()

    def eval(self, ids: Sequence[int]) -> np.ndarray:
        return self._forward(ids, 1)[-1]

    def eval_all(self, ids: Sequence[int]) -> np.ndarray:
        return self._forward(ids, 0)

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])


def make_engine(engine: str):
    if engine == PHI2CPU:
        return Phi2cpuEngine()
    if engine == LLAMA_CPP:
        return LlamaCppEngine()
    if engine == HF_FP32:
        return TorchEngine("float32")
    if engine == HF_BF16:
        return TorchEngine("bfloat16")
    from . import peer_engines

    if engine == OPENVINO:
        return peer_engines.OpenVinoGenAIEngine()
    if engine == ORT_GENAI:
        return peer_engines.OrtGenAIEngine()
    if engine == TORCH_INT8:
        return peer_engines.TorchInt8Engine()
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ALL_ENGINES)}")
