"""The peers that run their own exports of the HF checkpoint (see exports.py), and PyTorch dynamic int8.

OpenVINO GenAI runs whole generations in its own loop and returns no logits, so its engine times
`prefill_s` / `decode` itself and answers `greedy` without margins; the worker uses those methods
when an engine has them. ONNX Runtime GenAI and torch step one call per token like the GGUF engines.
"""
from __future__ import annotations

import json
import time
from typing import Sequence

import numpy as np

from .engines import TorchEngine


class OrtGenAIEngine:
    """onnxruntime-genai on a model-builder export (a folder with genai_config.json and model.onnx)."""

    def load(self, path: str, threads: int, n_ctx: int, all_logits: bool = False) -> None:
        import onnxruntime_genai as og

        self.og, self.n_ctx = og, n_ctx
        config = og.Config(path)
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.reset()

    def load_info(self) -> dict:
        return {}

    def reset(self) -> None:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.n_ctx, do_sample=False, batch_size=1)
        self.gen = self.og.Generator(self.model, params)

    def eval(self, ids: Sequence[int]) -> np.ndarray:
        self.gen.append_tokens(np.asarray([list(ids)], dtype=np.int32))
        logits = np.asarray(self.gen.get_logits(), dtype=np.float32)
        return logits.reshape(-1, logits.shape[-1])[-1].copy()

    def eval_all(self, ids: Sequence[int]) -> np.ndarray:
        return np.stack([self.eval([i]) for i in ids])

    def tokenize(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer.encode(text)]


class OpenVinoGenAIEngine:
    """openvino-genai's LLMPipeline on an `optimum-cli export openvino` folder, fed token ids."""

    def load(self, path: str, threads: int, n_ctx: int, all_logits: bool = False) -> None:
        import openvino as ov
        import openvino_genai as ov_genai

        self.ov, self.ov_genai = ov, ov_genai
        self.pipe = ov_genai.LLMPipeline(path, "CPU", INFERENCE_NUM_THREADS=threads)
        self.tokenizer = self.pipe.get_tokenizer()

    def load_info(self) -> dict:
        return {}

    def reset(self) -> None:
        pass  # every generate() starts from an empty cache

    def _generate(self, ids: Sequence[int], n: int):
        cfg = self.ov_genai.GenerationConfig()
        cfg.max_new_tokens = cfg.min_new_tokens = n
        cfg.do_sample = False
        cfg.ignore_eos = True
        x = np.asarray([list(ids)], dtype=np.int64)
        inputs = self.ov_genai.TokenizedInputs(self.ov.Tensor(x), self.ov.Tensor(np.ones_like(x)))
        t0 = time.perf_counter()
        out = self.pipe.generate(inputs, cfg)
        return out, time.perf_counter() - t0

    def prefill_s(self, ids: Sequence[int]) -> float:
        """A generation of one token: the prompt's forward and one argmax."""
        return self._generate(ids, 1)[1]

    def decode(self, prompt: Sequence[int], n: int) -> tuple[float, list[int]]:
        """n tokens after the prompt's first one, timed as the generation's wall time less its
        time to first token (which covers the prompt)."""
        out, total = self._generate(prompt, n + 1)
        ttft = out.perf_metrics.get_ttft().mean / 1000.0
        return total - ttft, [int(t) for t in out.tokens[0][:n]]

    def greedy(self, ids: Sequence[int], n: int) -> dict:
        out, _ = self._generate(ids, n)
        return {"tokens": [int(t) for t in out.tokens[0][:n]], "margins": None, "top": None}

    def eval(self, ids: Sequence[int]) -> np.ndarray:
        raise RuntimeError("openvino-genai returns generated tokens, not logits")

    def eval_all(self, ids: Sequence[int]) -> np.ndarray:
        raise RuntimeError("openvino-genai returns generated tokens, not logits")

    def tokenize(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]]


class TorchInt8Engine(TorchEngine):
    """HF transformers in fp32 with every nn.Linear replaced by torch's dynamic int8 Linear
    (int8 weights per channel, activations quantized per call)."""

    def __init__(self) -> None:
        super().__init__("float32")

    def load(self, path: str, threads: int, n_ctx: int, all_logits: bool = False) -> None:
        super().load(path, threads, n_ctx, all_logits)
        from torch.ao.quantization import quantize_dynamic

        self.model = quantize_dynamic(self.model, {self.torch.nn.Linear}, dtype=self.torch.qint8, inplace=True)
