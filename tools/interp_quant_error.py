"""How far each captured activation of phi2cpu deviates from HF transformers fp32, per file type.

    python tools/interp_quant_error.py CHECKPOINT_DIR TEXT_FILE [--types f32,f16,q8_0,q4_k_m,q4_0]
        [--windows 4] [--tokens 128] [--work DIR] [--md OUT.md]

Quantizes the HF checkpoint to each type (`phi2cpu quantize`'s code), runs `run_with_cache` on
`--windows` windows of `--tokens` tokens spread over TEXT_FILE, and compares every hook point with
the same quantity from HF (output_attentions, output_hidden_states and forward hooks). Prints a
Markdown table: per quantity, the relative error ||ours - hf|| / ||hf|| averaged over layers and
windows, and the worst max|ours - hf| / max|hf| of any layer; for attention, also the share of
(head, query) pairs whose most-attended key agrees with HF's. Needs torch and transformers.
"""
from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

import phi2cpu
from phi2cpu.quantize import quantize

QUANTITIES = ["resid_pre", "ln", "attn_probs", "head_out", "attn_out", "mlp_pre", "mlp_post", "mlp_out",
              "resid_post", "ln_final", "logits"]


def hf_captures(hf, ids: list[int]) -> dict[str, np.ndarray]:
    """Every phi2cpu hook point from an HF PhiForCausalLM (eager attention), by phi2cpu's names."""
    import torch

    got, hooks = {}, []

    def keep(name, pre=False):
        def hook(module, args, output=None):
            got[name] = (args[0] if pre else output[0] if isinstance(output, tuple) else output)[0].detach().numpy()
        return hook

    for i, layer in enumerate(hf.model.layers):
        hooks.append(layer.input_layernorm.register_forward_hook(keep(f"ln.{i}")))
        hooks.append(layer.self_attn.dense.register_forward_pre_hook(keep(f"head_out.{i}", pre=True)))
        hooks.append(layer.self_attn.dense.register_forward_hook(keep(f"attn_out.{i}")))
        hooks.append(layer.mlp.fc1.register_forward_hook(keep(f"mlp_pre.{i}")))
        hooks.append(layer.mlp.activation_fn.register_forward_hook(keep(f"mlp_post.{i}")))
        hooks.append(layer.mlp.fc2.register_forward_hook(keep(f"mlp_out.{i}")))
        hooks.append(layer.register_forward_hook(keep(f"resid_post.{i}")))
    hooks.append(hf.model.final_layernorm.register_forward_hook(keep("ln_final")))
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_attentions=True, output_hidden_states=True)
    for h in hooks:
        h.remove()
    n_head = hf.config.num_attention_heads
    for i in range(hf.config.num_hidden_layers):
        got[f"attn_probs.{i}"] = out.attentions[i][0].numpy()
        got[f"resid_pre.{i}"] = out.hidden_states[i][0].numpy()
        got[f"head_out.{i}"] = got[f"head_out.{i}"].reshape(len(ids), n_head, -1)
    got["logits"] = out.logits[0].numpy()
    return got


def windows(model, text: str, n_windows: int, n_tokens: int) -> list[list[int]]:
    ids = model.tokenize(text)
    if len(ids) < n_tokens:
        raise SystemExit(f"the text has {len(ids)} tokens; need at least {n_tokens}")
    starts = np.linspace(0, len(ids) - n_tokens, n_windows).astype(int)
    return [ids[s:s + n_tokens] for s in starts]


def compare(model, hf, wins: list[list[int]]) -> dict[str, dict[str, float]]:
    rel_l2, max_rel, top_key = defaultdict(list), defaultdict(float), []
    for ids in wins:
        want = hf_captures(hf, ids)
        got = model.run_with_cache(ids)
        for name, w in want.items():
            g = got.logits if name == "logits" else got[name]
            kind = name.split(".")[0]
            d = (g.astype(np.float64) - w).ravel()
            rel_l2[kind].append(np.linalg.norm(d) / np.linalg.norm(w))
            max_rel[kind] = max(max_rel[kind], float(np.abs(d).max() / np.abs(w).max()))
            if kind == "attn_probs":
                top_key.append((g.argmax(-1) == w.argmax(-1)).mean())
    out = {k: {"rel_l2": float(np.mean(v)), "max_rel": max_rel[k]} for k, v in rel_l2.items()}
    out["attn_probs"]["top_key"] = float(np.mean(top_key))
    return out


def table(results: dict[str, dict], types: list[str]) -> str:
    head = "| quantity | " + " | ".join(t.upper() for t in types) + " |"
    lines = [head, "|---" * (len(types) + 1) + "|"]
    for q in QUANTITIES:
        cells = [f"{results[t][q]['rel_l2']:.1e} ({results[t][q]['max_rel']:.1e})" for t in types]
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    cells = [f"{100 * results[t]['attn_probs']['top_key']:.1f}%" for t in types]
    lines.append("| attn_probs: top key as HF | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("text", type=Path)
    ap.add_argument("--types", default="f32,f16,q8_0,q4_k_m,q4_0")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, help="keep the quantized files here (default: a temporary folder)")
    ap.add_argument("--md", type=Path, help="also write the table to this file")
    args = ap.parse_args()

    import torch
    import transformers

    types = args.types.split(",")
    hf = transformers.PhiForCausalLM.from_pretrained(args.checkpoint, torch_dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    text = args.text.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = {}
        for t in types:
            path = work / f"model.{t}.gguf"
            if not path.exists():
                quantize(args.checkpoint, path, t, progress=False)
            model = phi2cpu.load(path, threads=args.threads, repack_cache=False)
            results[t] = compare(model, hf, windows(model, text, args.windows, args.tokens))
            print(f"{t}: done", flush=True)
    md = (f"{args.windows} windows of {args.tokens} tokens; each cell: mean relative error over layers "
          f"and windows (worst max-relative error of any layer)\n\n" + table(results, types))
    print(md)
    if args.md:
        args.md.write_text(md + "\n")


if __name__ == "__main__":
    main()
