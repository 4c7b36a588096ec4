"""`phi2cpu bench`: validation, quality, bandwidth and speed in one run; JSON + Markdown + PNG out."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from . import assets, exports, load, quality, report, speed
from .bandwidth import DEFAULT_BYTES, decode_ceiling, read_bandwidth, weight_bytes_per_token
from .engines import (ALL_ENGINES, EXPORT_ENGINES, FULL_ONLY, HF_BF16, HF_FP32, LLAMA_CPP, OWN_FORMATS, PHI2CPU,
                      TORCH_ENGINES, missing_reason, uses_gguf, weight_class)

SECTIONS = ("validate", "ppl", "kl", "bandwidth", "load", "speed")
DEFAULT_FORMATS = ("Q4_0", "Q8_0", "Q4_K_M")
FULL_FORMATS = DEFAULT_FORMATS + ("F16",)
QUICK_FORMATS = ("Q4_0",)


def _csv(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma-separated)")
        return items
    return parse


def _threads(text: str) -> list[int]:
    """"1,2,4" or "1-4"."""
    try:
        if "-" in text:
            a, b = (int(x) for x in text.split("-", 1))
            out = list(range(a, b + 1))
        else:
            out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("threads: a list like 1,2,4 or a range like 1-4 of positive counts")
    return sorted(set(out))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="phi2cpu bench",
        description="Benchmark phi2cpu against llama.cpp and HF transformers on this machine: validation, "
                    "prompt/generation speed per format and thread count, the memory-bandwidth ceiling, "
                    "perplexity and KL divergence. Writes results.json, results.md and PNG plots.")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run under 5 minutes: Q4_0 and the 4-bit peers only, short prompt/generation, "
                         "all cores only, 1 perplexity window, no load or KL section")
    ap.add_argument("--full", action="store_true",
                    help="the default matrix plus F16, HF transformers fp32/bf16 and the KL section")
    ap.add_argument("--out", default="bench-out", help="output folder (default bench-out/)")
    ap.add_argument("--results-md", metavar="PATH", help="also write the Markdown report here "
                                                         "(e.g. benchmarks/RESULTS.md)")
    ap.add_argument("--cache-dir", help=f"where generated models are kept (default {assets.default_cache_dir()})")
    ap.add_argument("--shared", help="the shared/ assets folder (default: beside the checkout, or $PHI2CPU_SHARED)")
    ap.add_argument("--config", help="HF config.json of the speed model (default shared/phi-2/config.json)")
    ap.add_argument("--formats", type=_csv(tuple(assets.FORMAT_QTYPE)),
                    help=f"GGUF formats (default {','.join(DEFAULT_FORMATS)}; --full adds F16); the other "
                         "peers run their own 4-bit and 8-bit exports beside Q4_0 and Q8_0")
    ap.add_argument("--threads", type=_threads, help="thread counts, e.g. 1,2 or 1-4 (default 1 and all cores); "
                                                      "peers other than llama.cpp run at the most only")
    ap.add_argument("--engines", type=_csv(ALL_ENGINES),
                    help=f"default {','.join(e for e in ALL_ENGINES if e not in FULL_ONLY)} "
                         f"(--full adds {','.join(FULL_ONLY)})")
    ap.add_argument("--sections", type=_csv(SECTIONS), help=f"default {','.join(SECTIONS)}")
    ap.add_argument("--runs", type=int, help="counted runs per engine (default 3)")
    ap.add_argument("--load-trials", type=int, help="counted fresh-process loads per engine and format "
                                                    "(default 5, --quick 2)")
    ap.add_argument("--pp", type=int, help="prompt tokens (default 512)")
    ap.add_argument("--tg", type=int, help="generated tokens (default 128)")
    ap.add_argument("--tg-prompt", type=int, default=16, help="prompt before generation (default 16)")
    ap.add_argument("--ppl-windows", type=int, help="perplexity windows, 0 = the whole text (default 8)")
    ap.add_argument("--ppl-window", type=int, default=512, help="perplexity window in tokens (default 512)")
    ap.add_argument("--kl-positions", type=int, help="KL positions on the full-size model (default 256)")
    ap.add_argument("--validate-tokens", type=int, default=32, help="greedy tokens compared (default 32)")
    ap.add_argument("--bandwidth-mib", type=int, help="bandwidth probe buffer (default 1024)")
    ap.add_argument("--quiet", "-q", action="store_true", help="no progress bar or log lines; only the report")
    ap.add_argument("--budget-min", type=float,
                    help="time budget in minutes, not counting making cached files; speed groups that would "
                         "overrun it drop their slowest peers, reported as skipped (default 30, --quick 5; 0 = none)")
    return ap


def resolve(args: argparse.Namespace, cores: int) -> argparse.Namespace:
    """Fill the defaults that --quick and --full change (explicit options always win)."""
    if args.quick and getattr(args, "full", False):
        raise SystemExit("error: --quick and --full cannot be combined")
    q = args.quick
    pick = lambda value, normal, quick: value if value is not None else (quick if q else normal)  # noqa: E731
    full = getattr(args, "full", False)
    args.formats = pick(args.formats, list(FULL_FORMATS if full else DEFAULT_FORMATS), list(QUICK_FORMATS))
    args.threads = pick(args.threads, sorted({1, cores}), [cores])
    default_engines = [e for e in ALL_ENGINES if full or e not in FULL_ONLY]
    args.engines = pick(args.engines, default_engines, [PHI2CPU, LLAMA_CPP] + list(EXPORT_ENGINES))
    default_sections = [s for s in SECTIONS if full or s != "kl"]
    # --quick leaves out the load section: its fresh-process trials cost minutes on a busy machine
    args.sections = pick(args.sections, default_sections, ["validate", "ppl", "bandwidth", "speed"])
    args.runs = pick(args.runs, 3, 3)
    args.load_trials = pick(args.load_trials, 5, 2)
    args.pp = pick(args.pp, 512, 64)
    args.tg = pick(args.tg, 128, 16)
    args.ppl_windows = pick(args.ppl_windows, 8, 1)
    args.kl_positions = pick(args.kl_positions, 256, 64)
    args.bandwidth_mib = pick(args.bandwidth_mib, DEFAULT_BYTES >> 20, 512)
    args.budget_min = pick(args.budget_min, 30.0, 5.0)
    if PHI2CPU not in args.engines:
        args.engines.insert(0, PHI2CPU)
    args.engines = [e for e in ALL_ENGINES if e in args.engines]
    return args


def speed_groups(formats: list[str], threads: list[int], engines: list[str]) -> list[tuple[int, str, list[tuple[str, str]]]]:
    """The speed matrix in run order: (threads, GGUF format, [(engine, format)]) per group.

    phi2cpu and llama.cpp run every GGUF format at every thread count. The other peers run at the
    most threads only, in the group of the first GGUF format of their weight class (4-bit exports
    beside Q4_0 or Q4_K_M, 8-bit beside Q8_0, the HF engines beside F16), so that they alternate
    with the phi2cpu cell they are ranked against. Most threads first, the smallest format first:
    under a time budget the headline numbers come first."""
    top = max(threads)
    by_size = sorted(formats, key=lambda f: assets.BYTES_PER_PARAM[f])
    first_of_class = {}
    for f in by_size:
        first_of_class.setdefault(weight_class(PHI2CPU, f), f)
    groups = []
    for t in sorted(threads, reverse=True):
        for f in by_size:
            cells = [(e, f) for e in engines if uses_gguf(e)]
            if t == top and first_of_class[weight_class(PHI2CPU, f)] == f:
                cells += [(e, own) for e in engines if not uses_gguf(e)
                          for own in OWN_FORMATS[e] if weight_class(e, own) == weight_class(PHI2CPU, f)]
            groups.append((t, f, cells))
    return groups


class Bench:
    def __init__(self, args: argparse.Namespace, log: Callable[[str], None],
                 on_section: Callable[[str], None] = lambda name: None, on_done: Callable[[], None] = lambda: None):
        self.args, self.log = args, log
        self.on_section, self.on_done = on_section, on_done
        self.t0 = time.monotonic()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.worker_log = str(self.out / "workers.log")
        Path(self.worker_log).write_text("")
        self.cache = assets.Cache(Path(args.cache_dir) if args.cache_dir else assets.default_cache_dir(), log)
        self.shared = assets.Shared.at(assets.find_shared(args.shared))
        self.config_path = Path(args.config) if args.config else self.shared.phi2_config
        self.cores = max(args.threads)
        self.skipped = {e: r for e in args.engines if (r := missing_reason(e))}
        self.res: dict = {"config": self._config(), "skipped_engines": self.skipped, "models": {}}
        self.peer_verdicts: dict[str, Optional[str]] = {}  # "engine fmt" -> why it is not timed, or None

    def _config(self) -> dict:
        a = self.args
        return {"quick": a.quick, "full": getattr(a, "full", False), "formats": a.formats, "threads": a.threads, "engines": a.engines,
                "sections": a.sections, "budget_min": a.budget_min, "validate_tokens": a.validate_tokens,
                "load_trials": a.load_trials, "load_ctx": load.N_CTX, "peer_min_top1": quality.PEER_MIN_TOP1,
                "workload": dataclasses.asdict(self.workload())}

    def workload(self) -> speed.Workload:
        a = self.args
        return speed.Workload(pp=a.pp, tg=a.tg, tg_prompt=a.tg_prompt, runs=a.runs,
                              warmup_pp=min(64, a.pp), warmup_tg=min(8, a.tg))

    def runnable(self, engines: list[str]) -> list[str]:
        return [e for e in engines if e not in self.skipped]

    # --- sections ------------------------------------------------------------------------
    def mini_paths(self, formats: list[str]) -> dict[tuple[str, str], str]:
        mini = self.shared.mini_dir
        paths = {}
        for f in formats:
            g = str(self.cache.gguf(mini, f))
            paths[(PHI2CPU, f)] = paths[(LLAMA_CPP, f)] = g
        paths[(HF_FP32, "F16")] = str(mini)
        return paths

    def tokenizer(self):
        from ..tokenizer import Tokenizer

        return Tokenizer.from_dir(self.shared.mini_dir)

    def validate(self) -> None:
        self.log("validation: greedy tokens on phi2-mini-code")
        paths = self.mini_paths(["F16", "Q8_0"])
        tok = self.tokenizer()
        pairs = [(PHI2CPU, "Q8_0", LLAMA_CPP, "Q8_0"), (PHI2CPU, "F16", HF_FP32, "F16")]
        pairs = [p for p in pairs if p[2] in self.args.engines]
        res = quality.validate(pairs, paths, tok.encode(quality.VALIDATION_PROMPT), self.cores,
                               self.args.validate_tokens, tok.decode, self.log, self.worker_log, self.skipped)
        self.res["validation"] = [dataclasses.asdict(r) for r in res]
        peers = [(e, pf) for e in self.args.engines if not uses_gguf(e) and e not in (HF_FP32, HF_BF16)
                 for pf in OWN_FORMATS[e]]
        self.validate_peers(peers)

    def validate_peers(self, peers: list[tuple[str, str]]) -> None:
        """Each peer's own build of phi2-mini-code (its export, or torch's int8) against phi2cpu F16,
        teacher-forced on the eval text; a build that fails the check is never timed."""
        mini = self.shared.mini_dir
        paths = {}
        checks = []
        for e, pf in peers:
            c = quality.PeerCheck(e, pf)
            checks.append(c)
            if e in self.skipped:
                c.status, c.reason = "skipped", self.skipped[e]
                continue
            try:
                paths[(e, pf)] = str(mini) if e in TORCH_ENGINES else str(
                    exports.export(self.cache, e, pf, mini, self.worker_log))
            except assets.AssetError as err:
                c.status, c.reason = "skipped", str(err)
        if any(c.status == "pending" for c in checks):
            self.log("validation: the peers' own builds of phi2-mini-code, next tokens against phi2cpu F16")
            ids = self.tokenizer().encode(self.shared.eval_text.read_text(encoding="utf-8"))[:quality.PEER_TEXT_TOKENS]
            quality.check_peers(checks, str(self.cache.gguf(mini, "F16")), paths, ids, self.cores, self.log,
                                self.worker_log)
        for c in checks:
            self.peer_verdicts[f"{c.engine} {c.format}"] = None if c.status == "ok" else c.reason
        self.res.setdefault("peer_checks", []).extend(dataclasses.asdict(c) for c in checks)

    def perplexity(self) -> None:
        self.log("perplexity: phi2-mini-code on the eval text")
        formats = [f for f in ("F16", "Q8_0", "Q4_0")]
        paths = self.mini_paths(formats)
        ids = self.tokenizer().encode(self.shared.eval_text.read_text(encoding="utf-8"))
        rows = [quality.PplRow(HF_FP32, "F16")] if HF_FP32 in self.args.engines else []
        rows += [quality.PplRow(e, f) for e in (PHI2CPU, LLAMA_CPP) if e in self.args.engines for f in formats]
        for r in rows:
            if r.engine in self.skipped:
                r.status, r.reason = "skipped", self.skipped[r.engine]
        max_w = self.args.ppl_windows or None
        quality.perplexity(rows, paths, ids, self.args.ppl_window, max_w, self.cores, self.log, self.worker_log)
        self.res["perplexity"] = {"text": self.shared.eval_text.name, "window": self.args.ppl_window,
                                  "max_windows": max_w, "rows": [dataclasses.asdict(r) for r in rows]}

    def speed_files(self) -> tuple[Path, dict[str, Path]]:
        ckpt = self.cache.random_checkpoint(self.config_path)
        return ckpt, {f: self.cache.gguf(ckpt, f) for f in self.args.formats}

    def kl(self) -> None:
        self.log("KL divergence: full-size random model against its F32 GGUF")
        ckpt, files = self.speed_files()
        ref = self.cache.gguf(ckpt, "F32")
        text = self.shared.eval_text.read_text(encoding="utf-8")
        ids = self.tokenizer().encode(text)[: self.args.kl_positions]
        paths = {(e, f): str(p) for f, p in files.items() for e in (PHI2CPU, LLAMA_CPP)}
        rows = [quality.KlRow(e, f) for e in (PHI2CPU, LLAMA_CPP) if e in self.args.engines for f in files]
        for r in rows:
            if r.engine in self.skipped:
                r.status, r.reason = "skipped", self.skipped[r.engine]
        quality.kl_divergence(rows, str(ref), paths, ids, self.cores, self.log, self.worker_log)
        self.res["kl"] = {"reference": f"phi2cpu on the F32 GGUF of the same checkpoint ({ref.name})",
                          "positions": len(ids), "text": f"the first {len(ids)} tokens of {self.shared.eval_text.name}",
                          "rows": [dataclasses.asdict(r) for r in rows]}

    def bandwidth(self) -> None:
        self.log("memory bandwidth probe")
        nbytes, passes = self.args.bandwidth_mib << 20, 5
        self.res["bandwidth"] = {"gbs": {}, "samples": {}, "buffer_bytes": nbytes, "passes": passes}
        for t in self.args.threads:
            self.probe_bandwidth(t)
        self.log("  " + ", ".join(f"{t} threads: {v:.1f} GB/s" for t, v in self.res["bandwidth"]["gbs"].items()))

    def probe_bandwidth(self, threads: int) -> None:
        """One more probe at `threads`. A VM's bandwidth can move by half within minutes, so the speed
        section probes again after each group and the ceiling is the best seen over the whole run."""
        bw = self.res.get("bandwidth")
        if bw is None:
            return
        samples = bw["samples"].setdefault(str(threads), [])
        samples.append(read_bandwidth(threads, bw["buffer_bytes"], bw["passes"]))
        bw["gbs"][str(threads)] = max(samples)

    def load_times(self) -> None:
        """Fresh-process load times of the GGUF engines, at the most threads (before the speed
        section, so phi2cpu's repack cache is written before any speed cell loads)."""
        _, files = self.speed_files()
        t = max(self.args.threads)
        runner = load.LoadRunner(self.args.load_trials, self.log, self.worker_log)
        cells: list[load.LoadCell] = []
        for f in sorted(self.args.formats, key=lambda f: assets.BYTES_PER_PARAM[f]):
            group = [load.LoadCell(e, f, t) for e in self.args.engines if uses_gguf(e)]
            for c in group:
                if c.engine in self.skipped:
                    c.status, c.reason = "skipped", self.skipped[c.engine]
            self.log(f"load: {f}, {t} thread{'s' if t > 1 else ''}: "
                     f"{' / '.join(c.engine for c in group if c.status == 'pending')}")
            runner.run(group, str(files[f]))
            cells += group
            self.res["load"] = [load.cell_dict(c) for c in cells]

    def speed(self) -> None:
        ckpt, files = self.speed_files()
        from ..checkpoint import HFCheckpoint

        n_params = assets.n_params(HFCheckpoint(ckpt).config)
        self.res["models"].update({"hf_checkpoint": ckpt.name, "speed_params": n_params, "speed": {
            f: {"file": p.name, "bytes": p.stat().st_size, "weight_bytes_per_token": weight_bytes_per_token(p)}
            for f, p in files.items()}})
        budget = self.args.budget_min * 60
        deadline = self.t0 + budget + self.cache.setup_s if budget > 0 else None
        runner = speed.GroupRunner(self.workload(), self.log, self.worker_log)
        cells = []
        for t, f, members in speed_groups(self.args.formats, self.args.threads, self.args.engines):
            group = [speed.Cell(e, pf, t) for e, pf in members]
            cells += group
            paths = {}
            for c in group:
                if c.engine in self.skipped:
                    c.status, c.reason = "skipped", self.skipped[c.engine]
                    continue
                try:
                    paths[c.engine] = self.speed_path(c.engine, c.format, ckpt, files)
                except assets.AssetError as e:
                    c.status, c.reason = "skipped", str(e)
                    self.log(f"  {c.engine} {c.format}: skipped: {e}")
                    continue
                if deadline is not None:  # exports made here are setup, not counted in the budget
                    deadline = self.t0 + budget + self.cache.setup_s
                why = self.peer_check(c.engine, c.format)
                if why:
                    c.status, c.reason = "skipped", why
                    self.log(f"  {c.engine} {c.format}: skipped: {why}")
            live = [c for c in group if c.status == "pending"]
            need = {c.engine: speed.memory_need(c.engine, c.format, files[f].stat().st_size, n_params) for c in live}
            for sub in speed.split_by_memory([c.engine for c in live], need.__getitem__,
                                             int(speed.mem_available() * 0.85)):
                self.log(f"speed: {f}, {t} thread{'s' if t > 1 else ''}: {' / '.join(sub)}")
                runner.run([c for c in live if c.engine in sub], paths, deadline)
            self.probe_bandwidth(t)
            self.res["speed"] = [self._cell_dict(c) for c in cells]

    def speed_path(self, engine: str, fmt: str, ckpt: Path, files: dict[str, Path]) -> str:
        """What `engine` loads for a speed cell: the GGUF file, the HF checkpoint, or its export."""
        if uses_gguf(engine):
            return str(files[fmt])
        if engine in TORCH_ENGINES:
            return str(ckpt)
        self.res.setdefault("export_commands", {})[f"{engine} {fmt}"] = exports.display_command(engine, fmt)
        return str(exports.export(self.cache, engine, fmt, ckpt, self.worker_log))

    def peer_check(self, engine: str, fmt: str) -> Optional[str]:
        """None when `engine`'s `fmt` build passed its greedy check on phi2-mini-code (run here if the
        validation section did not), else why it is not timed."""
        if uses_gguf(engine) or engine in (HF_FP32, HF_BF16):
            return None  # validated as the pairs above; their files are phi2cpu's or the checkpoint itself
        key = f"{engine} {fmt}"
        if key not in self.peer_verdicts:
            self.validate_peers([(engine, fmt)])
        return self.peer_verdicts.get(key)

    @staticmethod
    def _cell_dict(c: speed.Cell) -> dict:
        d = dataclasses.asdict(c)
        d["pp"], d["tg"] = c.summary("pp"), c.summary("tg")
        return d

    def ceilings(self) -> None:
        bw = (self.res.get("bandwidth") or {}).get("gbs")
        models = self.res["models"].get("speed")
        if not bw or not models:
            return
        t = str(max(int(k) for k in bw))
        rows = []
        for f, m in models.items():
            ceiling = decode_ceiling(bw[t], m["weight_bytes_per_token"])
            get = lambda e: next((c["tg"]["median"] for c in self.res.get("speed", [])  # noqa: E731
                                  if c["engine"] == e and c["format"] == f and c["threads"] == int(t)
                                  and c["status"] == "ok"), None)
            rows.append({"format": f, "bytes_per_token": m["weight_bytes_per_token"], "bandwidth_gbs": bw[t],
                         "threads": int(t), "ceiling_tps": ceiling, "phi2cpu_tg": get(PHI2CPU),
                         "llama_cpp_tg": get(LLAMA_CPP)})
        self.res["ceiling"] = rows

    def run(self) -> dict:
        from . import environment

        self.res["environment"] = environment.collect()
        for e, why in self.skipped.items():
            self.log(f"{e}: skipped ({why})")
        steps = {"validate": self.validate, "ppl": self.perplexity, "kl": self.kl,
                 "bandwidth": self.bandwidth, "load": self.load_times, "speed": self.speed}
        sections = {}
        for name in SECTIONS:  # validation always comes before any timing
            if name in self.args.sections:
                t0, setup0 = time.monotonic(), self.cache.setup_s
                self.on_section(name)
                try:
                    steps[name]()
                except assets.AssetError as e:
                    self.log(f"{name}: skipped: {e}")
                    self.res.setdefault("section_errors", {})[name] = str(e)
                sections[name] = time.monotonic() - t0 - (self.cache.setup_s - setup0)
                self.on_done()
        self.ceilings()
        self.res["timing"] = {"total_s": time.monotonic() - self.t0, "setup_s": self.cache.setup_s,
                              "sections_s": sections}
        return self.res


def write_outputs(res: dict, out: Path, results_md: Optional[str], log: Callable[[str], None]) -> str:
    try:
        res["plots"] = report.plot(res, out)
    except ImportError:
        log("plots: skipped (matplotlib is not installed: pip install 'phi2cpu[bench]')")
        res["plots"] = []
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    md = report.render_markdown(res)
    (out / "results.md").write_text(md)
    if results_md:
        Path(results_md).parent.mkdir(parents=True, exist_ok=True)
        Path(results_md).write_text(md)
    return md


def main(argv: Optional[list[str]] = None) -> int:
    from ..model import default_threads

    args = build_parser().parse_args(argv)
    args = resolve(args, default_threads())
    for name in ("runs", "load_trials", "pp", "tg", "tg_prompt", "ppl_window", "validate_tokens", "bandwidth_mib"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2

    from tqdm import tqdm

    # one bar over the sections (its postfix names the current one); log lines print above it
    bar = tqdm(total=len(args.sections), desc="bench", unit="section", file=sys.stderr,
               disable=True if args.quiet else None)

    def log(msg: str) -> None:
        if not args.quiet:
            tqdm.write(msg, file=sys.stderr)

    try:
        bench = Bench(args, log, on_section=lambda name: (bar.set_postfix_str(name), bar.update(0)),
                      on_done=lambda: bar.update(1))
        res = bench.run()
    except assets.AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    md = write_outputs(res, bench.out, args.results_md, log)
    print(md)
    log(f"wrote {bench.out / 'results.json'}, {bench.out / 'results.md'} and {len(res['plots'])} plots "
        f"in {res['timing']['total_s'] / 60:.1f} min")
    return 0
