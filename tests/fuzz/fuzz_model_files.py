"""Fuzz the GGUF reader and the state loader: any input must load or raise a Phi2Error, within the
per-input time and memory limits. Anything else (another exception, a crash, a hang) is a finding.

    python tests/fuzz/fuzz_model_files.py gguf CORPUS_DIR -max_total_time=60   # with atheris
    python tests/fuzz/fuzz_model_files.py state CORPUS_DIR -max_total_time=60
    python tests/fuzz/fuzz_model_files.py gguf CORPUS_DIR --plain --seconds 10   # no atheris needed
    python tests/fuzz/fuzz_model_files.py gguf CORPUS_DIR --replay   # each file once (tools/asan_replay.sh)

`seed CORPUS_DIR` writes the starting corpus: the tiny valid files and every hostile case the
tests generate (tests/hostile_gguf.py, tests/test_hardening.py). The atheris runs pass libFuzzer
flags through (-timeout, -rss_limit_mb, -artifact_prefix, ...); --plain runs a seeded
random-mutation loop instead, for machines without atheris."""
from __future__ import annotations

import random
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: hostile_gguf, fakes

try:
    import atheris
except ImportError:
    atheris = None


def _import_instrumented() -> None:
    """Coverage feedback for phi2cpu's own code. An installed package's modules are instrumented as
    they are imported (seconds); an editable install's custom loader is one the import hooks do not
    see, so there every loaded function is instrumented instead (numpy and the rest with it: a
    minute or more)."""
    import importlib.machinery
    import importlib.util
    spec = importlib.util.find_spec("phi2cpu")
    if isinstance(spec.loader, importlib.machinery.SourceFileLoader):
        with atheris.instrument_imports(include=["phi2cpu"]):
            import phi2cpu.config, phi2cpu.gguf_io, phi2cpu.model  # noqa: E401, F401
    else:
        import phi2cpu.gguf_io  # noqa: F401
        atheris.instrument_all()


if atheris is not None and "--plain" not in sys.argv and "--replay" not in sys.argv:
    _import_instrumented()

import phi2cpu  # noqa: E402
from phi2cpu.errors import Phi2Error  # noqa: E402
from phi2cpu.gguf_io import read_model_file  # noqa: E402

from hostile_gguf import Spec, tiny_spec  # noqa: E402
from phi2cpu.config import PhiConfig  # noqa: E402

# A smaller model than the tests' so a mutation lands in the header more often (6 kB of 124 kB).
FUZZ_CONFIG = PhiConfig(n_vocab=320, n_embd=32, n_ff=64, n_layer=1, n_head=2, n_rot=8, n_ctx_train=64)
_WORK = Path(tempfile.mkdtemp(prefix="phi2cpu-fuzz-"))
_MODEL_PATH = _WORK / "model.gguf"
_INPUT = _WORK / "input"


def _model():
    """The model whose state files the state target loads: the tests' tiny model (its states are
    1.5 kB of k and v)."""
    if not _MODEL_PATH.exists():
        tiny_spec().write(_MODEL_PATH)
    return phi2cpu.load(_MODEL_PATH, threads=1, n_ctx=8)


def one_gguf(data: bytes) -> None:
    """Read the file as load() does; when it is accepted, build the engine and run one token."""
    _INPUT.write_bytes(data)
    try:
        read_model_file(_INPUT)
        model = phi2cpu.load(_INPUT, threads=1, n_ctx=4)
        model.eval([0])
    except Phi2Error:
        pass


_STATE_MODEL = None


def one_state(data: bytes) -> None:
    global _STATE_MODEL
    if _STATE_MODEL is None:
        _STATE_MODEL = _model()
    _INPUT.write_bytes(data)
    before = _STATE_MODEL.tokens
    try:
        _STATE_MODEL.load_state(_INPUT)
    except Phi2Error:
        if _STATE_MODEL.tokens != before:
            raise AssertionError("a refused state changed the cache")


TARGETS = {"gguf": one_gguf, "state": one_state}


def seed(corpus: Path) -> int:
    """Write the starting corpus for both targets into corpus/gguf and corpus/state."""
    import test_hardening as th

    (corpus / "gguf").mkdir(parents=True, exist_ok=True)
    (corpus / "state").mkdir(parents=True, exist_ok=True)
    spec = tiny_spec(FUZZ_CONFIG)
    (corpus / "gguf" / "valid").write_bytes(spec.to_bytes())
    (corpus / "gguf" / "valid-no-vocab").write_bytes(tiny_spec(FUZZ_CONFIG, vocab=False).to_bytes())
    n = 2
    for case, (bad, _) in th._cases(spec).items():
        data = bad.to_bytes()
        if len(data) < 1 << 20:  # the budget-filling cases are too big to mutate usefully
            (corpus / "gguf" / case).write_bytes(data)
            n += 1
    model = _model()
    good = th._good_state(model, _WORK)
    (corpus / "state" / "valid").write_bytes((_WORK / "good.state").read_bytes())
    for case, (arrays, _) in th._state_cases(good).items():
        th._npz(corpus / "state" / case, arrays)
        n += 1
    return n


# ----------------------------------------------------------------------------- the plain loop

_INTERESTING = [0, 1, 2, 7, 8, 9, 12, 13, 31, 32, 33, 255, 256, 1 << 16, (1 << 31) - 1, 1 << 31, (1 << 32) - 1,
                1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


def mutate(data: bytes, rng: random.Random, header: int) -> bytes:
    """One to four edits, most of them inside the first `header` bytes."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not b:
            return bytes(rng.randbytes(16))
        where = rng.randrange(min(len(b), header) if rng.random() < 0.9 else len(b))
        op = rng.randrange(6)
        if op == 0:
            b[where] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[where] = rng.randrange(256)
        elif op in (2, 3):
            width = 8 if op == 2 else 4
            v = rng.choice(_INTERESTING) & ((1 << (8 * width)) - 1)
            b[where:where + width] = struct.pack("<Q" if width == 8 else "<I", v)
        elif op == 4:
            del b[where:where + rng.randint(1, 64)]
        else:
            b[where:where] = rng.randbytes(rng.randint(1, 16))
    if rng.random() < 0.05:
        del b[rng.randrange(len(b) + 1):]
    return bytes(b)


def plain_loop(target: str, corpus: Path, seconds: float, seed_value: int = 0) -> int:
    """Mutate the corpus files for `seconds`; an input that fails is saved beside the corpus."""
    rng = random.Random(seed_value)
    seeds = [p.read_bytes() for p in sorted(corpus.iterdir()) if p.is_file()]
    fn, runs, end = TARGETS[target], 0, time.monotonic() + seconds
    while time.monotonic() < end:
        data = mutate(rng.choice(seeds), rng, 8192)
        try:
            fn(data)
        except BaseException:
            crash = corpus.parent / f"crash-{target}-{runs}"
            crash.write_bytes(data)
            print(f"finding after {runs} runs, saved to {crash}", file=sys.stderr)
            raise
        runs += 1
    print(f"{target}: {runs} inputs in {seconds:.0f} s, no findings")
    return 0


def replay(target: str, corpus: Path) -> int:
    """Run every file in `corpus` once (the sanitizer build's check)."""
    files = sorted(p for p in corpus.iterdir() if p.is_file())
    for p in files:
        TARGETS[target](p.read_bytes())
    print(f"{target}: replayed {len(files)} files, no findings")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] not in (*TARGETS, "seed"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[1] == "seed":
        print(f"{seed(Path(argv[2]))} seed files in {argv[2]}")
        return 0
    if "--replay" in argv:
        return replay(argv[1], Path(argv[2]))
    if "--plain" in argv or atheris is None:
        seconds = float(argv[argv.index("--seconds") + 1]) if "--seconds" in argv else 10.0
        return plain_loop(argv[1], Path(argv[2]), seconds)
    fn = TARGETS[argv[1]]
    atheris.Setup([argv[0]] + argv[2:], fn)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
