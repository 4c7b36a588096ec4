"""Turn the results dict (exactly what results.json holds) into Markdown and PNG plots."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from .engines import ALL_ENGINES, HF_BF16, HF_FP32, PHI2CPU, format_label, weight_class

ENGINE_ORDER = ALL_ENGINES
FORMAT_ORDER = ("F32", "F16", "Q8_0", "int8", "Q4_K_M", "Q4_0", "int4")
CLASS_ORDER = ("4-bit", "8-bit", "16-bit", "32-bit")


def _order(cell: dict) -> tuple:
    fmt = FORMAT_ORDER.index(cell["format"]) if cell["format"] in FORMAT_ORDER else 99
    eng = ENGINE_ORDER.index(cell["engine"]) if cell["engine"] in ENGINE_ORDER else 99
    return (-cell["threads"], fmt, eng)


def compared_format(engine: str, fmt: str) -> str:
    """The phi2cpu format a peer is compared with: the same file, F16 for the HF engines, Q4_0 for
    4-bit exports and Q8_0 for 8-bit ones."""
    if engine in (HF_FP32, HF_BF16):
        return "F16"
    return {"int4": "Q4_0", "int8": "Q8_0"}.get(fmt, fmt)


def phi2cpu_cell(cells: list[dict], peer: dict) -> Optional[dict]:
    for c in cells:
        if (c["engine"] == PHI2CPU and c["threads"] == peer["threads"] and c["status"] == "ok"
                and c["format"] == compared_format(peer["engine"], peer["format"])):
            return c
    return None


def ratio(cells: list[dict], peer: dict, which: str) -> Optional[float]:
    """phi2cpu median / peer median (above 1: phi2cpu is faster)."""
    ours = phi2cpu_cell(cells, peer)
    if ours is None or peer["status"] != "ok" or peer["engine"] == PHI2CPU:
        return None
    return ours[which]["median"] / peer[which]["median"]


def fmt_rate(s: Optional[dict]) -> str:
    if not s:
        return "–"
    return f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f})"


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "–"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return out


def _short(reason: str) -> str:
    return reason.split(":")[0] if reason else ""


def speed_table(res: dict) -> list[str]:
    cells = sorted(res.get("speed", []), key=_order)
    w = res["config"]["workload"]
    rows = []
    for c in cells:
        if c["status"] != "ok":
            rows.append([c["engine"], format_label(c["engine"], c["format"]), c["threads"],
                         f"{c['status']} ({_short(c['reason'])})",
                         "", "", fmt_float(c.get("load_s"), 2), fmt_bytes(c.get("peak_rss"))])
            continue
        rp, rt = ratio(cells, c, "pp"), ratio(cells, c, "tg")
        rel = "" if rp is None else f"{rp:.2f}× / {rt:.2f}×"
        rows.append([c["engine"], format_label(c["engine"], c["format"]), c["threads"], fmt_rate(c["pp"]),
                     fmt_rate(c["tg"]), rel, fmt_float(c["load_s"], 2), fmt_bytes(c["peak_rss"])])
    header = ["engine", "format", "threads", f"prompt {w['pp']} tok/s: median (min–max)",
              f"generate {w['tg']} tok/s: median (min–max)", "phi2cpu ÷ peer (prompt / generate)",
              "load s", "peak RSS"]
    return _table(header, rows)


def best_by_class(res: dict) -> list[dict]:
    """Per thread count and weight class: phi2cpu's best cell against the best peer's, for prompt
    and generation separately (the best peer may differ between them)."""
    cells = [c for c in res.get("speed", []) if c["status"] == "ok"]
    rows = []
    for t in sorted({c["threads"] for c in cells}, reverse=True):
        for cls in CLASS_ORDER:
            inside = [c for c in cells if c["threads"] == t and weight_class(c["engine"], c["format"]) == cls]
            for which in ("pp", "tg"):
                ours = [c for c in inside if c["engine"] == PHI2CPU]
                peers = [c for c in inside if c["engine"] != PHI2CPU]
                if not ours:
                    continue
                a = max(ours, key=lambda c: c[which]["median"])
                b = max(peers, key=lambda c: c[which]["median"]) if peers else None
                rows.append({"threads": t, "class": cls, "which": which, "phi2cpu_format": a["format"],
                             "phi2cpu": a[which]["median"], "peer": b and f"{b['engine']} {b['format']}",
                             "peer_tps": b and b[which]["median"],
                             "ratio": b and a[which]["median"] / b[which]["median"]})
    return rows


def class_table(res: dict) -> list[str]:
    w = res["config"]["workload"]
    rows = []
    for r in best_by_class(res):
        what = f"prompt {w['pp']}" if r["which"] == "pp" else f"generate {w['tg']}"
        rows.append([r["threads"], r["class"], what, f"{r['phi2cpu']:.2f} ({r['phi2cpu_format']})",
                     r["peer"] or "no peer measured", fmt_float(r["peer_tps"], 2),
                     "–" if r["ratio"] is None else f"**{r['ratio']:.2f}×**"])
    return _table(["threads", "weight class", "tok/s", "phi2cpu best (format)", "best peer", "peer tok/s",
                   "phi2cpu ÷ best peer"], rows)


def peer_check_table(res: dict) -> list[str]:
    rows = []
    for c in res.get("peer_checks", []):
        agree = "" if c.get("top1_agree") is None else f"{100 * c['top1_agree']:.0f}% of {c['n_positions']}"
        rows.append([c["engine"], format_label(c["engine"], c["format"]), agree,
                     c["status"] + (f": {c['reason']}" if c["reason"] else "")])
    return _table(["engine", "build", "next token = phi2cpu F16's", "verdict"], rows)


def fmt_seconds(s: Optional[dict]) -> str:
    if not s:
        return "–"
    return f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f})"


def load_ratio(cells: list[dict], peer: dict, which: str) -> Optional[float]:
    """peer median / phi2cpu median for the same format and threads (above 1: phi2cpu is faster)."""
    ours = next((c for c in cells if c["engine"] == PHI2CPU and c["format"] == peer["format"]
                 and c["threads"] == peer["threads"] and c["status"] == "ok"), None)
    if ours is None or peer["engine"] == PHI2CPU or peer["status"] != "ok":
        return None
    return peer[which]["median"] / ours[which]["median"]


def load_table(res: dict) -> list[str]:
    cells = sorted(res.get("load", []), key=_order)
    rows = []
    for c in cells:
        if c["status"] != "ok":
            rows.append([c["engine"], c["format"], c["threads"], f"{c['status']} ({_short(c['reason'])})",
                         "", "", "", ""])
            continue
        rl, rr = load_ratio(cells, c, "load"), load_ratio(cells, c, "ready")
        first = fmt_float(c.get("first_load_s"), 2)
        if c.get("first_weights"):
            first += f" ({c['first_weights']})"
        rows.append([c["engine"], c["format"], c["threads"], fmt_seconds(c["load"]), fmt_seconds(c["ready"]),
                     "" if rl is None else f"{rl:.2f}× / {rr:.2f}×", first, fmt_bytes(c.get("peak_rss"))])
    return _table(["engine", "format", "threads", "load s: median (min–max)",
                   "ready s (load + first token): median (min–max)", "peer ÷ phi2cpu (load / ready)",
                   "first load s", "peak RSS"], rows)


def load_section(res: dict) -> list[str]:
    cfg = res["config"]
    cells = res.get("load", [])
    ours = sorted({c["weights"] for c in cells if c["engine"] == PHI2CPU and c.get("weights")})
    lines = ["## Load", "",
             f"Time from the load call to a model that can decode: a fresh process per trial, the file read "
             f"through first so it is in the page cache, context {cfg.get('load_ctx', '?')}, "
             f"{cfg.get('load_trials', '?')} counted trials per engine and format, engines alternating; median "
             f"(min–max). Load is `phi2cpu.load` (header, tokenizer, weights) or `llama_cpp.Llama(...)`; ready "
             f"adds the first token's forward, where work an engine defers (faulting in mapped pages) shows. "
             f"Ratio above 1 means phi2cpu is faster. First load is each engine's untimed first load in this "
             f"run; phi2cpu repacks its matrices for this CPU's kernels then and writes them to its repack cache "
             f"when there is none yet (cache-written). Where phi2cpu's matrices came from in the counted trials: "
             f"{', '.join(ours) if ours else '–'} (cache: mapped from the repack cache; memory: repacked on "
             f"every load; file: read in place).", ""]
    return lines + load_table(res) + [""]


def fmt_float(x: Optional[float], digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def ceiling_table(res: dict) -> list[str]:
    rows = []
    for r in res.get("ceiling", []):
        pct = lambda v: "–" if v is None else f"{v:.2f} ({100 * v / r['ceiling_tps']:.0f}%)"  # noqa: E731
        rows.append([r["format"], fmt_bytes(r["bytes_per_token"]), f"{r['bandwidth_gbs']:.1f}",
                     f"{r['ceiling_tps']:.2f}", pct(r.get("phi2cpu_tg")), pct(r.get("llama_cpp_tg"))])
    return _table(["format", "weight bytes / token", "read GB/s", "decode ceiling tok/s",
                   "phi2cpu generate tok/s (% of ceiling)", "llama.cpp generate tok/s (% of ceiling)"], rows)


def validation_table(res: dict) -> list[str]:
    rows = []
    for v in res.get("validation", []):
        if v["status"] in ("skipped", "failed"):
            rows.append([v["reference"], v["other"], f"{v['status']}: {v['reason']}", "", "", ""])
            continue
        flag = v["status"] if v["status"] != "MISMATCH" else "**MISMATCH**"
        if v["status"] == "near-tie":
            flag += f" (margin {v['margin_at_split']:.3f} at token {v['n_agree']})"
        top5 = "same ids" if v["top5_equal"] else "different ids"
        rows.append([v["reference"], v["other"], flag, f"{v['n_agree']}/{v['n_tokens']}",
                     "equal" if v["tokenization_equal"] else "**differs**",
                     f"{top5}, max Δ {fmt_float(v['top5_max_abs_diff'], 4)}"])
    return _table(["reference", "compared", "verdict", "greedy tokens agreeing", "tokenization",
                   "first-step top-5 logits"], rows)


def ppl_table(res: dict) -> list[str]:
    p = res.get("perplexity") or {}
    rows = []
    for r in p.get("rows", []):
        if r["status"] != "ok":
            rows.append([r["engine"], format_label(r["engine"], r["format"]), f"{r['status']}: {r['reason']}", "", ""])
        else:
            rows.append([r["engine"], format_label(r["engine"], r["format"]), f"{r['ppl']:.4f}", r["n_windows"],
                         r["n_scored"]])
    return _table(["engine", "format", "perplexity", "windows", "scored tokens"], rows)


def kl_table(res: dict) -> list[str]:
    k = res.get("kl") or {}
    rows = []
    for r in k.get("rows", []):
        if r["status"] != "ok":
            rows.append([r["engine"], r["format"], f"{r['status']}: {r['reason']}", "", ""])
        else:
            rows.append([r["engine"], r["format"], f"{r['mean_kl']:.3e}", f"{r['max_kl']:.3e}",
                         f"{100 * r['top1_agree']:.1f}%"])
    return _table(["engine", "format", "mean KL (nats)", "max KL", "top-1 agrees with F32"], rows)


def environment_lines(res: dict) -> list[str]:
    e = res["environment"]
    v = e.get("versions", {})
    return [
        f"- Date: {e['date']}; phi2cpu commit `{e.get('git_commit') or 'unknown'}`",
        f"- CPU: {e['cpu']}, {e['cores']} cores ({e['logical_cpus']} logical), "
        f"flags: {' '.join(e['cpu_flags']) or 'n/a'}; memory {fmt_bytes(e.get('mem_total'))}",
        f"- phi2cpu kernels: {e['phi2cpu_isa']} ({e['phi2cpu_isa_reason']})",
        f"- Versions: Python {e['python']}, NumPy {e['numpy']}, phi2cpu {v.get('phi2cpu') or '?'}, "
        f"llama-cpp-python {v.get('llama.cpp') or 'not installed'}, torch {v.get('hf-fp32') or 'not installed'}, "
        f"openvino-genai {v.get('openvino') or 'not installed'}, "
        f"onnxruntime-genai {v.get('ort-genai') or 'not installed'}",
    ]


def render_markdown(res: dict) -> str:
    cfg = res["config"]
    lines = [f"# phi2cpu benchmark{' (--quick)' if cfg.get('quick') else ''}", ""]
    lines += environment_lines(res)
    t = res.get("timing", {})
    parts = ", ".join(f"{k} {v / 60:.1f}" for k, v in (t.get("sections_s") or {}).items())
    lines += [f"- Run time: {t.get('total_s', 0) / 60:.1f} min, of which {t.get('setup_s', 0) / 60:.1f} min making "
              f"cached model files{'; by section (min): ' + parts if parts else ''}", ""]
    skipped = res.get("skipped_engines") or {}
    if skipped:
        lines += ["Peers not measured (skipped, not failures):", ""]
        lines += [f"- {e}: {why}" for e, why in skipped.items()] + [""]
    if res.get("validation"):
        lines += ["## Validation (before any timing)", "",
                  f"Greedy continuation of a fixed Python prompt on phi2-mini-code (real trained weights), "
                  f"{cfg.get('validate_tokens')} tokens, the same token ids fed to every engine.", ""]
        lines += validation_table(res) + [""]
    if res.get("peer_checks"):
        lines += ["The peers' own builds of phi2-mini-code (their exports, made by the commands below, and torch's "
                  "dynamic int8), teacher-forced on the eval text: the greedy next token after "
                  "each of 32 prefixes, against phi2cpu F16's. A build below "
                  f"{100 * res['config'].get('peer_min_top1', 0.75):.0f}% computes another model and is not timed.",
                  ""]
        lines += peer_check_table(res) + [""]
    if res.get("speed"):
        lines += speed_section(res)
    if res.get("load"):
        lines += load_section(res)
    lines += other_sections(res)
    return "\n".join(lines)


def speed_section(res: dict) -> list[str]:
    w, m = res["config"]["workload"], res.get("models", {})
    lines = ["## Speed", "",
             f"Model: random weights with Phi-2's exact config ({m.get('speed_params', 0) / 1e9:.2f}B parameters), "
             f"HF checkpoint `{m.get('hf_checkpoint', '?')}` and its GGUF files; every engine reads the same file "
             f"or checkpoint. Prompt: {w['pp']} tokens from an empty cache. Generate: {w['tg']} greedy tokens, one "
             f"per step, after a {w['tg_prompt']}-token prompt. {w['runs']} counted runs after a warm-up, engines "
             f"alternating; median (min–max). Ratio above 1 means phi2cpu is faster (the HF engines are compared "
             f"with phi2cpu F16, int4 exports with Q4_0, int8 builds with Q8_0). Load time is with the file in the page cache; peak RSS is the engine's process.", ""]
    lines += speed_table(res) + [""]
    if any(r["peer"] for r in best_by_class(res)):
        lines += ["### phi2cpu against the best peer of each weight class", "",
                  "4-bit: Q4_0, Q4_K_M and the int4 exports; 8-bit: Q8_0, the int8 exports and torch's dynamic "
                  "int8; 16-bit: F16, HF bf16 and HF fp32. Medians of this run.", ""]
        lines += class_table(res) + [""]
    cmds = res.get("export_commands") or {}
    if cmds:
        lines += ["Exports (made once, kept in the bench cache): "
                  + "; ".join(f"{k}: `{v}`" for k, v in cmds.items()) + ".", ""]
    notes = [c for c in sorted(res.get("speed", []), key=_order) if c["status"] != "ok"]
    if notes:
        lines += [f"- {c['engine']} {c['format']} threads={c['threads']}: {c['status']}: {c['reason']}" for c in notes]
        lines += [""]
    return lines


def other_sections(res: dict) -> list[str]:
    lines = []
    bw = res.get("bandwidth") or {}
    if bw.get("gbs"):
        def probes(k: str, v: float) -> str:
            s = bw.get("samples", {}).get(k, [v])
            spread = f" (lowest probe {min(s):.1f}, {len(s)} probes)" if len(s) > 1 else ""
            return f"{k} thread{'s' if int(k) > 1 else ''}: {v:.1f} GB/s{spread}"

        per = ", ".join(probes(k, v) for k, v in bw["gbs"].items())
        lines += ["## Decode ceiling", "",
                  f"Memory read bandwidth ({fmt_bytes(bw['buffer_bytes'])} buffer, best of {bw['passes']} passes per "
                  f"probe; probed before the speed section and again after each speed group, and the best probe "
                  f"counts): {per}. "
                  "Generating a token reads every weight once (all tensors but token_embd, a row lookup), so "
                  "bandwidth ÷ weight bytes is the most tokens/s any engine can generate.", ""]
        lines += ceiling_table(res) + [""]
    if res.get("perplexity"):
        p = res["perplexity"]
        lines += ["## Quality: perplexity of phi2-mini-code", "",
                  f"`{p['text']}`, {p['window']}-token non-overlapping windows, every position after the first "
                  f"scored, the first {p['max_windows'] or 'all'} windows; every engine gets the same token ids.", ""]
        lines += ppl_table(res) + [""]
    if res.get("kl"):
        k = res["kl"]
        lines += ["## Quality: KL divergence against F32 (full-size random model)", "",
                  f"Mean KL(P_F32 ‖ P_format) of the next-token distribution over {k['positions']} positions "
                  f"({k['text']}). Reference: {k['reference']}.", ""]
        lines += kl_table(res) + [""]
    if res.get("plots"):
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in res["plots"]] + [""]
    return lines


# ----------------------------------------------------------------------------- plots

def plot(res: dict, out_dir: Path) -> list[str]:
    """tokens/s by format and engine (most threads), and scaling by threads. Returns file paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in res.get("speed", []) if c["status"] == "ok"]
    if not cells:
        return []
    files = []
    top = max(c["threads"] for c in cells)
    ceil = {r["format"]: r["ceiling_tps"] for r in res.get("ceiling", [])}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    formats = [f for f in FORMAT_ORDER if any(c["format"] == f for c in cells)]
    engines = [e for e in ENGINE_ORDER if any(c["engine"] == e for c in cells)]
    width = 0.8 / max(1, len(engines))
    for ax, which, title in ((axes[0], "pp", "prompt processing"), (axes[1], "tg", "generation")):
        for k, e in enumerate(engines):
            xs, ys, lo, hi = [], [], [], []
            for i, f in enumerate(formats):
                c = next((c for c in cells if c["engine"] == e and c["format"] == f and c["threads"] == top), None)
                if c:
                    s = c[which]
                    xs.append(i + (k - (len(engines) - 1) / 2) * width)
                    ys.append(s["median"])
                    lo.append(s["median"] - s["min"])
                    hi.append(s["max"] - s["median"])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=e)
        if which == "tg":
            for i, f in enumerate(formats):
                if f in ceil:
                    ax.hlines(ceil[f], i - 0.45, i + 0.45, colors="k", linestyles="dashed",
                              label="bandwidth ceiling" if i == 0 else None)
        ax.set_xticks(range(len(formats)), formats)
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{title}, {top} threads")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = out_dir / "tokens_per_s.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(str(path))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    threads = sorted({c["threads"] for c in cells})
    for ax, which, title in ((axes[0], "pp", "prompt processing"), (axes[1], "tg", "generation")):
        for e in engines:
            for f in formats:
                pts = sorted((c["threads"], c[which]["median"]) for c in cells if c["engine"] == e and c["format"] == f)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                            linestyle="-" if e == PHI2CPU else "--", label=f"{e} {f}")
        ax.set_xticks(threads)
        ax.set_xlabel("threads")
        ax.set_ylabel("tokens/s")
        ax.set_title(f"{title}: scaling by threads")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "thread_scaling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(str(path))
    return files
