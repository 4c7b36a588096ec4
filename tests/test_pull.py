"""`phi2cpu pull` against a fake hub on 127.0.0.1 (through HF_ENDPOINT) and against HF caches laid out
by huggingface_hub itself (offline): checkpoints converted into the store, GGUFs stored as they are,
resumed downloads, corrupt downloads, Ctrl-C and a full disk."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

hf = pytest.importorskip("huggingface_hub", reason="pull needs huggingface_hub")

import phi2cpu  # noqa: E402
from fake_hub import FakeHub  # noqa: E402
from interrupts import files_in, grow_disk, interrupt, phi2cpu_cmd, small_disk, wait_until  # noqa: E402
from phi2cpu import hub as hubmod  # noqa: E402
from phi2cpu import store  # noqa: E402
from phi2cpu.checkpoint import write_random_checkpoint  # noqa: E402
from phi2cpu.errors import DownloadError, Phi2Error  # noqa: E402
from phi2cpu.quantize import quantize  # noqa: E402

PHI2 = "microsoft/phi-2"
GGUF_REPO = "TheBloke/phi-2-GGUF"
NEEDED = ["config.json", "tokenizer.json", "model.safetensors.index.json",
          "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
TINY = {"model_type": "phi", "architectures": ["PhiForCausalLM"], "hidden_size": 160, "num_attention_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 320, "vocab_size": 51200, "partial_rotary_factor": 0.4}


@pytest.fixture(scope="module")
def ggufs(mini_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gguf")
    files = {q: quantize(mini_dir, out / f"mini.{q}.gguf", q, progress=False)["out"] for q in ("q4_0", "q4_k_m")}
    files = {q: Path(p) for q, p in files.items()}
    files["q8_0"] = phi2cpu.default_model_path()
    bad = out / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + os.urandom(4000))
    files["broken"] = bad
    return files


@pytest.fixture(scope="module")
def fake(mini_dir, phi2_dir, ggufs, tmp_path_factory):
    single = write_random_checkpoint(tmp_path_factory.mktemp("single"), TINY, seed=3, shards=1, tokenizer_dir=phi2_dir)
    phi2_files = {n: mini_dir / n for n in NEEDED}
    # the rest of a real repo, which pull must leave alone
    for n in ("tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json",
              "generation_config.json"):
        phi2_files[n] = phi2_dir / n
    phi2_files.update({"README.md": b"# phi-2\n", "pytorch_model.bin": os.urandom(1 << 20)})
    with FakeHub() as hub:
        hub.add_repo(PHI2, phi2_files)
        hub.add_repo(GGUF_REPO, {"phi-2.Q4_0.gguf": ggufs["q4_0"], "phi-2.Q4_K_M.gguf": ggufs["q4_k_m"],
                                 "phi-2.Q8_0.gguf": ggufs["q8_0"], "phi-2-old.Q8_0.gguf": ggufs["q8_0"],
                                 "README.md": b"# GGUF\n"})
        hub.add_repo("someone/broken-GGUF", {"broken.Q4_0.gguf": ggufs["broken"]})
        hub.add_repo("someone/phi-single", {n: single / n for n in ("config.json", "tokenizer.json",
                                                                     "model.safetensors")})
        yield hub


@pytest.fixture
def env(fake, tmp_path) -> dict:
    fake.log.clear()
    fake.delay = 0.0
    fake.corrupt.clear()
    fake.drops.clear()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    return {**base, "HF_HOME": str(tmp_path / "hf"), "PHI2CPU_HOME": str(tmp_path / "store"),
            "HF_ENDPOINT": fake.url, "HF_HUB_DISABLE_TELEMETRY": "1"}


def cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(phi2cpu_cmd(*args), capture_output=True, text=True, env=env, timeout=timeout)


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 1, r
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("phi2cpu: error: "), r.stderr
    assert not any(line.startswith("phi2cpu: error: ") for line in lines[:-1]) and "Traceback" not in r.stderr
    for w in words:
        assert w in lines[-1], (w, lines[-1])
    return lines[-1]


def entry(env: dict, name: str) -> Path:
    return Path(env["PHI2CPU_HOME"]) / "models" / name.split(":")[0].replace("/", "--") / f"{name.split(':')[1]}.gguf"


def gets(fake: FakeHub) -> list[str]:
    """The repo files whose bytes were requested (GET on /resolve/)."""
    return sorted(r.path.split("/resolve/")[1].split("/", 1)[1] for r in fake.requests("GET", "/resolve/"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def greedy(path: Path, prompt: str = "def fibonacci(n):") -> str:
    return phi2cpu.load(path, threads=1, n_ctx=128).generate(prompt, max_tokens=16, temperature=0)


def hf_cache(env: dict) -> Path:
    return Path(env["HF_HOME"]) / "hub"


# ----------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("text, src", [
    ("microsoft/phi-2", hubmod.Source("microsoft/phi-2")),
    ("TheBloke/phi-2-GGUF:Q4_K_M", hubmod.Source("TheBloke/phi-2-GGUF", quant="Q4_K_M")),
    ("TheBloke/phi-2-GGUF/phi-2.Q4_K_M.gguf", hubmod.Source("TheBloke/phi-2-GGUF", filename="phi-2.Q4_K_M.gguf")),
    ("a/b/sub/x.GGUF", hubmod.Source("a/b", filename="sub/x.GGUF")),
])
def test_parse_source(text, src):
    assert hubmod.parse_source(text) == src


@pytest.mark.parametrize("text, words", [
    ("./phi-2", "not a hub repository"), ("a/b/c", "not a hub repository"), ("phi-2/x.gguf", "OWNER/REPO/FILE.gguf"),
    ("a/b:", "QUANT"), ("a--b/c", "not a hub repository"),
])
def test_bad_sources(text, words):
    with pytest.raises(Phi2Error, match=words):
        hubmod.parse_source(text)


def test_default_names():
    assert hubmod.default_name(hubmod.parse_source("microsoft/phi-2"), "q4_0") == "phi-2:q4_0"
    assert hubmod.default_name(hubmod.parse_source("TheBloke/phi-2-GGUF:Q4_K_M"), "q4_0") == "thebloke/phi-2-gguf:q4_k_m"
    assert hubmod.default_name(hubmod.parse_source("TheBloke/phi-2-GGUF/phi-2.Q4_K_M.gguf"), "q4_0") == \
        "thebloke/phi-2-gguf:phi-2.q4_k_m"


def test_pick_gguf_matches_whole_tags_case_blind():
    files = ["phi-2.Q4_K_M.gguf", "phi-2.Q4_K_S.gguf", "phi-2.Q4_0.gguf", "sub/phi-2_Q8_0.gguf"]
    assert hubmod.pick_gguf("r", files, "q4_k_m") == "phi-2.Q4_K_M.gguf"
    assert hubmod.pick_gguf("r", files, "Q4_0") == "phi-2.Q4_0.gguf"
    assert hubmod.pick_gguf("r", files, "q8_0") == "sub/phi-2_Q8_0.gguf"
    with pytest.raises(DownloadError, match="no .gguf file whose name matches 'Q4_K'; its GGUF files: phi-2.Q4_K_M"):
        hubmod.pick_gguf("r", files, "Q4_K")
    with pytest.raises(DownloadError, match="matches 2 files"):
        hubmod.pick_gguf("r", files + ["x.Q4_K_M.gguf"], "Q4_K_M")


def test_download_checks_git_blob_ids_too(fake, env, tmp_path):
    rf = hubmod.remote_file(PHI2, "config.json", "main", endpoint=fake.url)
    assert len(rf.etag) == 40                                    # a small file: its git blob id
    got = hubmod.download(rf, tmp_path / "config.partial", progress=False)
    assert got.read_bytes() == fake.repos[PHI2].files["config.json"].data
    wrong = hubmod.RemoteFile(**{**rf.__dict__, "etag": "0" * 40})
    with pytest.raises(DownloadError, match="git blob sha1 mismatch"):
        hubmod.download(wrong, tmp_path / "config2.partial", progress=False)
    assert not (tmp_path / "config2.partial").exists()


# ----------------------------------------------------------------------------- checkpoints

def test_pull_checkpoint_fetches_only_what_it_needs_and_runs(fake, env, mini_dir, ggufs):
    r = cli(env, "pull", PHI2)
    assert r.returncode == 0, r.stderr
    path = entry(env, "phi-2:q4_0")
    assert r.stdout.strip() == f"phi-2:q4_0: Q4_0, {path.stat().st_size / 2**20:.2f} MiB, {path}"
    # no .bin, no vocab.json, no README; tokenizer_config.json for a chat template it may hold
    assert gets(fake) == sorted(NEEDED + ["tokenizer_config.json"])
    assert not fake.requests(contains="xet")
    # the checkpoint is in the HF cache in the hub's own layout, with refs/main
    commit = fake.repos[PHI2].commit
    for name in NEEDED:
        cached = hf.try_to_load_from_cache(PHI2, name, cache_dir=hf_cache(env), revision="main")
        assert isinstance(cached, str) and Path(cached).read_bytes() == (mini_dir / name).read_bytes()
        assert f"snapshots/{commit}/" in cached
    # the stored model is the checkpoint converted to q4_0: it generates what a direct quantize does
    assert greedy(path) == greedy(ggufs["q4_0"])
    info = cli(env, "info", "phi-2:q4_0")
    assert "name:          phi-2" in info.stdout and "Q4_0" in info.stdout, info.stdout
    run = cli(env, "run", "phi-2:q4_0", "def fibonacci(n):", "-n", "16", "--temp", "0", "-q")
    assert run.returncode == 0 and run.stdout == greedy(ggufs["q4_0"]), run.stderr
    listed = cli(env, "list").stdout.splitlines()
    assert listed[1].split()[:2] == ["phi-2:q4_0", "Q4_0"]


def test_pull_again_keeps_the_store_entry_then_uses_the_hf_cache(fake, env):
    assert cli(env, "pull", PHI2, "--type", "q8_0").returncode == 0
    fake.log.clear()
    again = cli(env, "pull", PHI2, "--type", "Q8_0")
    assert again.returncode == 0 and "already in the store" in again.stderr and fake.log == []
    assert cli(env, "rm", "phi-2:q8_0").returncode == 0
    fake.log.clear()
    r = cli(env, "pull", PHI2, "--type", "q8_0")
    assert r.returncode == 0, r.stderr
    assert gets(fake) == [] and "6 of 6 files were already in the HF cache" in r.stderr
    assert entry(env, "phi-2:q8_0").is_file()


def test_pull_a_single_file_checkpoint(fake, env):
    r = cli(env, "pull", "someone/phi-single", "--type", "f16", "--name", "tiny:f16")
    assert r.returncode == 0, r.stderr
    assert gets(fake) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert cli(env, "list").stdout.splitlines()[1].split()[:2] == ["tiny:f16", "F16"]


def test_offline_pull_from_a_cache_the_hub_laid_out(fake, env):
    hf.snapshot_download(PHI2, cache_dir=hf_cache(env), endpoint=fake.url, allow_patterns=NEEDED + ["*.md"])
    fake.log.clear()
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    r = cli(offline, "pull", PHI2, "--type", "q4_k_m")
    assert r.returncode == 0, r.stderr
    assert fake.log == []                                        # not one request
    assert cli(offline, "run", "phi-2:q4_k_m", "def f(x):", "-n", "8", "-q").returncode == 0


def test_offline_pull_says_what_the_cache_lacks(fake, env):
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    one_line_error(cli(offline, "pull", PHI2), "not in the HF cache", "HF_HUB_OFFLINE")
    hf.snapshot_download(PHI2, cache_dir=hf_cache(env), endpoint=fake.url,
                         allow_patterns=["config.json", "tokenizer.json", "model.safetensors.index.json"])
    one_line_error(cli(offline, "pull", PHI2), "only partly in the HF cache", "model-00001-of-00002.safetensors")
    one_line_error(cli(offline, "pull", f"{GGUF_REPO}:Q4_0"), "HF_HUB_OFFLINE")
    assert cli(offline, "list").stdout == ""


def test_unreachable_hub_falls_back_to_the_cache(fake, env):
    hf.snapshot_download(PHI2, cache_dir=hf_cache(env), endpoint=fake.url, allow_patterns=NEEDED)
    down = {**env, "HF_ENDPOINT": "http://127.0.0.1:9"}          # nothing listens on the discard port
    r = cli(down, "pull", PHI2)
    assert r.returncode == 0 and "cannot reach the hub" in r.stderr, r.stderr
    assert entry(env, "phi-2:q4_0").is_file()


def test_hub_errors_are_one_line(fake, env):
    one_line_error(cli(env, "pull", "nobody/nothing"), "nobody/nothing", "no such repository")
    one_line_error(cli(env, "pull", PHI2, "--revision", "v9"), "no such revision")
    one_line_error(cli(env, "pull", GGUF_REPO), "holds GGUF files", f"{GGUF_REPO}:QUANT", "phi-2.Q4_0.gguf")
    one_line_error(cli(env, "pull", f"{GGUF_REPO}:Q4_0", "--type", "q8_0"), "--type", "as it is")
    one_line_error(cli(env, "pull", "./phi-2"), "phi2cpu quantize")


# ----------------------------------------------------------------------------- GGUFs

def test_pull_gguf_by_quant_tag_stores_the_file_as_it_is(fake, env, ggufs):
    r = cli(env, "pull", f"{GGUF_REPO}:q4_k_m")
    assert r.returncode == 0, r.stderr
    path = entry(env, "thebloke/phi-2-gguf:q4_k_m")
    assert sha256(path) == sha256(ggufs["q4_k_m"])
    assert gets(fake) == ["phi-2.Q4_K_M.gguf"]
    assert store.Entry("x", path, 0, 0).type == "Q4_K - Medium"
    run = cli(env, "run", "TheBloke/phi-2-GGUF:Q4_K_M", "def fibonacci(n):", "-n", "16", "--temp", "0", "-q")
    assert run.returncode == 0 and run.stdout == greedy(ggufs["q4_k_m"]), run.stderr
    by_file = cli(env, "pull", f"{GGUF_REPO}/phi-2.Q4_0.gguf")
    assert by_file.returncode == 0, by_file.stderr
    assert sha256(entry(env, "thebloke/phi-2-gguf:phi-2.q4_0")) == sha256(ggufs["q4_0"])
    assert [line.split()[0] for line in cli(env, "list").stdout.splitlines()[1:]] == \
        ["thebloke/phi-2-gguf:phi-2.q4_0", "thebloke/phi-2-gguf:q4_k_m"]


def test_gguf_tag_that_matches_none_or_several(fake, env):
    one_line_error(cli(env, "pull", f"{GGUF_REPO}:Q5_K_M"), "no .gguf file whose name matches 'Q5_K_M'",
                   "phi-2.Q4_0.gguf, phi-2.Q4_K_M.gguf")
    one_line_error(cli(env, "pull", f"{GGUF_REPO}:Q8_0"), "matches 2 files", "phi-2-old.Q8_0.gguf",
                   f"{GGUF_REPO}/FILE.gguf")
    one_line_error(cli(env, "pull", f"{GGUF_REPO}/phi-2.Q2_K.gguf"), "no file phi-2.Q2_K.gguf")
    assert gets(fake) == []


def test_a_gguf_that_is_not_a_model_never_gets_its_name(fake, env):
    one_line_error(cli(env, "pull", "someone/broken-GGUF:Q4_0"), "broken.Q4_0.gguf is not a model phi2cpu can run",
                   "deleted")
    assert files_in(Path(env["PHI2CPU_HOME"])) == []


# ----------------------------------------------------------------------------- broken downloads

def test_corrupt_gguf_download_is_deleted(fake, env, ggufs):
    fake.corrupt.add(f"{GGUF_REPO}/phi-2.Q4_0.gguf")
    one_line_error(cli(env, "pull", f"{GGUF_REPO}:Q4_0"), "sha256 mismatch", sha256(ggufs["q4_0"]), "deleted")
    assert files_in(Path(env["PHI2CPU_HOME"])) == []
    fake.corrupt.clear()
    assert cli(env, "pull", f"{GGUF_REPO}:Q4_0").returncode == 0
    assert sha256(entry(env, "thebloke/phi-2-gguf:q4_0")) == sha256(ggufs["q4_0"])


def test_corrupt_shard_is_deleted_and_never_enters_the_cache(fake, env):
    shard = "model-00002-of-00002.safetensors"
    fake.corrupt.add(f"{PHI2}/{shard}")
    one_line_error(cli(env, "pull", PHI2), shard, "sha256 mismatch")
    sha = fake.repos[PHI2].files[shard].sha256
    blobs = hf_cache(env) / "models--microsoft--phi-2" / "blobs"
    assert not any(p.name.startswith(sha) for p in blobs.iterdir())
    assert hf.try_to_load_from_cache(PHI2, shard, cache_dir=hf_cache(env)) is None
    assert not entry(env, "phi-2:q4_0").exists()
    fake.corrupt.clear()
    fake.log.clear()
    assert cli(env, "pull", PHI2).returncode == 0
    assert gets(fake) == [shard]                                 # the good files were kept


def test_a_dropped_connection_is_resumed_in_the_same_pull(fake, env, ggufs):
    fake.drops[f"{GGUF_REPO}/phi-2.Q4_0.gguf"] = 15 << 20
    r = cli(env, "pull", f"{GGUF_REPO}:Q4_0")
    assert r.returncode == 0, r.stderr
    first, second = fake.requests("GET", "/resolve/")
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", second.range)[1])
    assert first.range is None and 0 < resumed_at <= 15 << 20
    assert sha256(entry(env, "thebloke/phi-2-gguf:q4_0")) == sha256(ggufs["q4_0"])


def test_ctrl_c_mid_download_then_the_next_pull_resumes(fake, env, ggufs):
    fake.delay = 0.02                                            # about 9 s for the whole file
    src = f"{GGUF_REPO}:Q4_0"
    folder = entry(env, "thebloke/phi-2-gguf:q4_0").parent
    proc = subprocess.Popen(phi2cpu_cmd("pull", src), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    partials = lambda: list(folder.glob(".*.partial")) if folder.exists() else []  # noqa: E731
    wait_until("part of the file has arrived", lambda: any(p.stat().st_size > 0 for p in partials()), proc)
    code, err = interrupt(proc)
    assert code == 130, err
    [partial] = partials()
    have = partial.stat().st_size
    assert 0 < have < ggufs["q4_0"].stat().st_size
    assert not entry(env, "thebloke/phi-2-gguf:q4_0").exists()
    assert cli(env, "list").stdout == ""
    fake.delay = 0.0
    fake.log.clear()
    r = cli(env, "pull", src)
    assert r.returncode == 0, r.stderr
    [get] = fake.requests("GET", "/resolve/")
    assert get.range == f"bytes={have}-"
    assert sha256(entry(env, "thebloke/phi-2-gguf:q4_0")) == sha256(ggufs["q4_0"])
    assert partials() == []


def test_ctrl_c_mid_conversion_leaves_no_model(fake, env):
    assert cli(env, "pull", PHI2, "--name", "warm:q4_0").returncode == 0   # the checkpoint is now cached
    folder = entry(env, "phi-2:q4_0").parent
    proc = subprocess.Popen(phi2cpu_cmd("pull", PHI2, slow_quantize=True), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_until("the conversion is writing", lambda: folder.exists() and any(folder.glob(".*.tmp")), proc)
    code, err = interrupt(proc)
    assert code == 130, err
    assert not folder.exists() or files_in(folder) == []
    assert [line.split()[0] for line in cli(env, "list").stdout.splitlines()[1:]] == ["warm:q4_0"]


def test_full_disk_mid_download_then_resume_when_there_is_room(fake, env, ggufs, tmp_path):
    with small_disk(tmp_path / "store") as disk:
        src = f"{GGUF_REPO}:Q4_0"
        one_line_error(cli(env, "pull", src), "no space left", "run the same pull again to resume")
        assert not entry(env, "thebloke/phi-2-gguf:q4_0").exists()
        [partial] = [p for p in files_in(disk) if p.endswith(".partial")]
        have = (disk / partial).stat().st_size
        assert have > 0
        grow_disk(disk, "64m")
        fake.log.clear()
        r = cli(env, "pull", src)
        assert r.returncode == 0, r.stderr
        assert fake.requests("GET", "/resolve/")[0].range == f"bytes={have}-"
        assert sha256(entry(env, "thebloke/phi-2-gguf:q4_0")) == sha256(ggufs["q4_0"])
        assert [p for p in files_in(disk) if p.endswith(".partial")] == []


def test_full_disk_mid_conversion_leaves_no_model(fake, env, tmp_path):
    with small_disk(tmp_path / "store") as disk:
        line = one_line_error(cli(env, "pull", PHI2), "No space left on device")
        assert str(entry(env, "phi-2:q4_0")) in line
        assert [p for p in files_in(disk) if p.endswith((".gguf", ".tmp", ".json"))] == []


def test_huggingface_hub_is_imported_only_by_pull(env):
    code = ("import sys\nimport phi2cpu.hub\nfrom phi2cpu.cli import main\nmain(['list'])\n"
            "sys.exit('huggingface_hub' in sys.modules)\n")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, env=env).returncode == 0
    missing = ("import sys; sys.modules['huggingface_hub'] = None\n"
               "from phi2cpu.cli import main; sys.exit(main(['pull', 'microsoft/phi-2']))\n")
    r = subprocess.run([sys.executable, "-c", missing], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip() == "phi2cpu: error: pull needs huggingface_hub: pip install huggingface_hub"


def test_downloads_show_progress_on_a_terminal(fake, env):
    pty = pytest.importorskip("pty")
    import fcntl
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal 120 columns wide
    fake.delay = 0.002
    proc = subprocess.Popen(phi2cpu_cmd("pull", f"{GGUF_REPO}:Q4_0"), env=env, stdout=subprocess.DEVNULL,
                            stderr=slave)
    os.close(slave)
    shown = b""
    while select.select([master], [], [], 60)[0]:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:                                          # the command closed its end
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0
    bars = shown.decode(errors="replace").replace("\r", "\n").splitlines()
    assert any(line.startswith("phi-2.Q4_0.gguf:") and "100%" in line and "28.1M/28.1M" in line for line in bars), \
        shown[-2000:]
