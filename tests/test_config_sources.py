"""config.json from every source read right, or refused.

Tiny Phi checkpoints saved by the installed transformers, and the same weights written by hand in
the older layouts (a transformers-4.x config; phi-msft and mixformer-sequential configs with their
fused-Wqkv tensor names), each converted and run by phi2cpu against HF's logits at positions 0..300.
Then every refusal: a missing key that changes the math, unimplemented settings, conflicting keys."""
from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file
from tolerances import TOLERANCES

import phi2cpu
from phi2cpu.checkpoint import TOKENIZER_FILES
from phi2cpu.config import PhiConfig
from phi2cpu.errors import ModelFileError
from phi2cpu.gguf_io import read_model_file
from phi2cpu.quantize import quantize

N_POS = 301          # positions 0..300
N_CTX = 320
N_TOKENIZER_VOCAB = 50295

# Phi-2 itself as each source writes it.
PHI2_V4 = {"architectures": ["PhiForCausalLM"], "model_type": "phi", "hidden_size": 2560,
           "intermediate_size": 10240, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32, "partial_rotary_factor": 0.4, "rope_theta": 10000.0, "rope_scaling": None,
           "layer_norm_eps": 1e-5, "max_position_embeddings": 2048, "vocab_size": 51200, "hidden_act": "gelu_new",
           "qk_layernorm": False, "tie_word_embeddings": False, "transformers_version": "4.37.0"}
PHI2_V5 = {**{k: v for k, v in PHI2_V4.items() if k not in ("partial_rotary_factor", "rope_theta", "rope_scaling")},
           "rope_parameters": {"partial_rotary_factor": 0.4, "rope_theta": 10000.0, "rope_type": "default"},
           "transformers_version": "5.24.0"}
PHI2_MSFT = {"architectures": ["PhiForCausalLM"], "model_type": "phi-msft", "n_embd": 2560, "n_head": 32,
             "n_head_kv": None, "n_inner": None, "n_layer": 32, "n_positions": 2048, "rotary_dim": 32,
             "vocab_size": 51200, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
             "pad_vocab_size_multiple": 64, "tie_word_embeddings": False, "flash_attn": False,
             "flash_rotary": False, "fused_dense": False, "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.1}
PHI2_MIXFORMER = {"architectures": ["MixFormerSequentialForCausalLM"], "model_type": "mixformer-sequential",
                  "n_embd": 2560, "n_head": 32, "n_inner": None, "n_layer": 32, "n_positions": 2048,
                  "rotary_dim": 32, "vocab_size": 51200, "activation_function": "gelu_new",
                  "layer_norm_epsilon": 1e-5, "pad_vocab_size_multiple": 64, "embd_layer": "default",
                  "architecture": {"block_cls": "parallel", "mixer": {}, "mlp": {"mlp_cls": "mlp"}},
                  "tie_word_embeddings": False}
SOURCES = {"transformers-4": PHI2_V4, "transformers-5": PHI2_V5, "phi-msft": PHI2_MSFT,
           "mixformer-sequential": PHI2_MIXFORMER}


def with_(cfg: dict, **changes) -> dict:
    """A copy of cfg; a value of ... deletes the key; a__b reaches key b of the dict under a."""
    out = copy.deepcopy(cfg)
    for key, value in changes.items():
        *path, last = key.split("__")
        node = out
        for p in path:
            node = node[p]
        if value is ...:
            node.pop(last, None)
        else:
            node[last] = value
    return out


# ----------------------------------------------------------------------------- reading, no torch

def test_real_phi2_config(phi2_dir):
    cfg = PhiConfig.from_hf(json.loads((phi2_dir / "config.json").read_text()))
    assert cfg == PhiConfig()
    assert (cfg.n_rot, cfg.head_dim, cfg.rope_theta, cfg.norm_eps, cfg.n_ff) == (32, 80, 10000.0, 1e-5, 10240)


@pytest.mark.parametrize("source", SOURCES)
def test_every_source_of_phi2_reads_to_phi2(source):
    assert PhiConfig.from_hf(SOURCES[source]) == PhiConfig()


def test_transformers_5_rope_parameters_are_read():
    cfg = PhiConfig.from_hf(with_(PHI2_V5, rope_parameters={"partial_rotary_factor": 0.25, "rope_theta": 5e5}))
    assert (cfg.n_rot, cfg.rope_theta) == (20, 5e5)
    # the top level as well (transformers 5 moves it into rope_parameters), and agreeing duplicates
    cfg = PhiConfig.from_hf(with_(PHI2_V5, partial_rotary_factor=0.4, rope_theta=10000.0))
    assert cfg == PhiConfig()
    # no rope_theta anywhere: transformers' default 10000 is Phi-2's
    assert PhiConfig.from_hf(with_(PHI2_V5, rope_parameters__rope_theta=...)).rope_theta == 10000.0


def test_rotary_dims_truncate_as_transformers_does():
    # 100 * 0.29 = 28.999999999999996: transformers takes int() of it
    cfg = PhiConfig.from_hf(with_(PHI2_V4, hidden_size=200, num_attention_heads=2, num_key_value_heads=2,
                                  partial_rotary_factor=0.29))
    assert cfg.n_rot == 28


def test_remote_code_semantics():
    # n_inner null or absent: 4 * n_embd; rotary_dim capped at head_dim; vocabulary padded
    for n_inner in (None, ...):
        assert PhiConfig.from_hf(with_(PHI2_MSFT, n_inner=n_inner)).n_ff == 4 * 2560
    assert PhiConfig.from_hf(with_(PHI2_MSFT, n_inner=6000)).n_ff == 6000
    assert PhiConfig.from_hf(with_(PHI2_MSFT, rotary_dim=128)).n_rot == 80
    assert PhiConfig.from_hf(with_(PHI2_MSFT, vocab_size=50257)).n_vocab == 50304
    assert PhiConfig.from_hf(with_(PHI2_MSFT, vocab_size=50257, pad_vocab_size_multiple=1)).n_vocab == 50257
    # rotary_dim absent: the config class's default 32 is Phi-2's
    assert PhiConfig.from_hf(with_(PHI2_MSFT, rotary_dim=...)).n_rot == 32
    # the attribute_map names are accepted (and must agree)
    alias = with_(PHI2_MSFT, n_embd=..., hidden_size=2560, n_positions=..., max_position_embeddings=4096)
    assert PhiConfig.from_hf(alias) == PhiConfig(n_ctx_train=4096)


def test_remote_code_config_with_model_type_phi():
    """Microsoft's remote code wrote model_type "phi" (n_embd, n_head, rotary_dim ...) before it was
    renamed phi-msft; those keys mean what they mean there, not transformers' defaults."""
    assert PhiConfig.from_hf(with_(PHI2_MSFT, model_type="phi")) == PhiConfig()
    cfg = PhiConfig.from_hf(with_(PHI2_MSFT, model_type="phi", rotary_dim=16, vocab_size=50257, n_inner=None))
    assert (cfg.n_rot, cfg.n_vocab, cfg.n_ff) == (16, 50304, 4 * 2560)


def test_mixformer_architecture():
    blk = {"block_cls": "parallel", "mixer": {"rotary_dim": 24, "flash_attn": True}, "mlp": {"mlp_cls": "fused_mlp"}}
    cfg = PhiConfig.from_hf(with_(PHI2_MIXFORMER, architecture=[blk] * 3, n_layer=...))
    assert (cfg.n_layer, cfg.n_rot, cfg.n_ff) == (3, 24, 10240)   # a list gives the layer count
    cfg = PhiConfig.from_hf(with_(PHI2_MIXFORMER, architecture=..., blocks={"mlp": {"mlp_cls": "mlp", "n_inner": 999}}))
    assert cfg.n_ff == 999   # `blocks` is the older name
    assert PhiConfig.from_hf(with_(PHI2_MIXFORMER, architecture=None)) == PhiConfig()


def test_matches_the_installed_transformers_reading():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    for cfg in (PHI2_V4, PHI2_V5, with_(PHI2_V5, rope_parameters={"partial_rotary_factor": 0.35, "rope_theta": 3e4}),
                with_(PHI2_V4, partial_rotary_factor=0.5, rope_theta=123.0, layer_norm_eps=1e-6,
                      intermediate_size=4096, num_attention_heads=16, num_key_value_heads=16, vocab_size=50304)):
        hf = transformers.PhiConfig.from_dict(copy.deepcopy(cfg))
        head_dim = hf.hidden_size // hf.num_attention_heads
        ours = PhiConfig.from_hf(cfg)
        assert (ours.n_vocab, ours.n_embd, ours.n_ff, ours.n_layer, ours.n_head, ours.norm_eps) == \
            (hf.vocab_size, hf.hidden_size, hf.intermediate_size, hf.num_hidden_layers, hf.num_attention_heads,
             hf.layer_norm_eps)
        assert ours.n_rot == int(head_dim * hf.rope_parameters["partial_rotary_factor"])
        assert ours.rope_theta == hf.rope_parameters["rope_theta"]


REFUSED = [
    # a key that changes the math, missing, whose library default is not Phi-2's
    (with_(PHI2_V4, partial_rotary_factor=...), "partial_rotary_factor"),
    (with_(PHI2_V5, rope_parameters__partial_rotary_factor=...), "partial_rotary_factor"),
    (with_(PHI2_V5, rope_parameters=...), "partial_rotary_factor"),
    (with_(PHI2_V4, intermediate_size=...), "intermediate_size"),
    (with_(PHI2_V4, hidden_size=...), "hidden_size"),
    (with_(PHI2_V4, num_hidden_layers=...), "num_hidden_layers"),
    (with_(PHI2_MSFT, n_embd=...), "n_embd"),
    (with_(PHI2_MSFT, n_head=...), "n_head"),
    (with_(PHI2_MSFT, n_layer=...), "n_layer"),
    (with_(PHI2_MSFT, vocab_size=...), "vocab_size"),
    (with_(PHI2_MIXFORMER, n_layer=...), "n_layer"),
    (with_(PHI2_MSFT, rotary_dim=None), "rotary_dim is null"),
    # settings the engine does not implement
    (with_(PHI2_V4, rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    (with_(PHI2_V5, rope_parameters__rope_type="linear", rope_parameters__factor=2.0), "rope_type"),
    (with_(PHI2_V5, rope_parameters__type="dynamic"), "dynamic"),
    (with_(PHI2_V5, rope_parameters__factor=2.0), "rope_parameters.factor"),
    (with_(PHI2_V4, qk_layernorm=True), "qk_layernorm"),
    (with_(PHI2_V4, hidden_act="gelu"), "hidden_act"),
    (with_(PHI2_V4, num_key_value_heads=8), "grouped-query"),
    (with_(PHI2_V4, head_dim=64), "head_dim"),
    (with_(PHI2_V4, tie_word_embeddings=True), "tie_word_embeddings"),
    (with_(PHI2_MSFT, n_head_kv=8), "grouped-query"),
    (with_(PHI2_MSFT, activation_function="relu"), "activation_function"),
    (with_(PHI2_MSFT, tie_word_embeddings=True), "tie_word_embeddings"),
    (with_(PHI2_MSFT, rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    (with_(PHI2_MIXFORMER, architecture__block_cls="sequential"), "parallel block"),
    (with_(PHI2_MIXFORMER, architecture__mixer={"rotary_emb_scale_base": 512}), "xPos"),
    (with_(PHI2_MIXFORMER, architecture__mixer={"softmax_scale": 0.5}), "softmax_scale"),
    (with_(PHI2_MIXFORMER, architecture__mixer={"causal": False}), "non-causal"),
    (with_(PHI2_MIXFORMER, architecture__mixer={"rotary_base": 5000}), "mixer.rotary_base: unknown option"),
    (with_(PHI2_MIXFORMER, architecture__mlp={"mlp_cls": "mlp", "act_fn": "relu"}), "mlp.act_fn is 'relu'"),
    (with_(PHI2_MIXFORMER, architecture__mlp={"mlp_cls": "glu"}), "mlp_cls"),
    (with_(PHI2_MIXFORMER, embd_layer="positional"), "embd_layer"),
    (with_(PHI2_MIXFORMER, n_layer=..., architecture=[{"mixer": {"rotary_dim": 32}}, {"mixer": {"rotary_dim": 16}}]),
     "blocks in architecture differ"),
    (with_(PHI2_MIXFORMER, n_layer=..., architecture=[]), "empty"),
    # conflicting duplicates
    (with_(PHI2_V5, rope_theta=20000.0), "conflicting values: rope_parameters.rope_theta=10000.0, rope_theta=20000.0"),
    (with_(PHI2_V5, partial_rotary_factor=0.5), "conflicting values"),
    (with_(PHI2_V4, rotary_dim=40), "conflicting values: rotary_dim=40"),
    (with_(PHI2_V4, n_embd=2048), "conflicting values: n_embd=2048"),
    (with_(PHI2_MSFT, hidden_size=2048), "conflicting values: n_embd=2560, hidden_size=2048"),
    (with_(PHI2_MSFT, partial_rotary_factor=0.5), "conflicting values: partial_rotary_factor=0.5 gives 40"),
    (with_(PHI2_MSFT, rope_theta=5000.0), "conflicting values: rope_theta=5000.0"),
    (with_(PHI2_MIXFORMER, intermediate_size=8192), "conflicting values: intermediate_size=8192"),
    # malformed or out-of-range values
    (with_(PHI2_V4, partial_rotary_factor=1.5), r"must be in \(0, 1\]"),
    (with_(PHI2_V4, partial_rotary_factor="0.4"), "partial_rotary_factor must be a number"),
    (with_(PHI2_V4, hidden_size=2560.5), "hidden_size must be an integer"),
    (with_(PHI2_V4, hidden_size=True), "hidden_size must be a number"),
    (with_(PHI2_V4, partial_rotary_factor=0.01), "rotary dims 0"),
    (with_(PHI2_V4, rope_theta=float("nan")), "rope_theta nan"),
    (with_(PHI2_V5, rope_parameters__rope_theta=float("inf")), "rope_theta inf"),
    (with_(PHI2_V4, layer_norm_eps=float("nan")), "layer_norm_eps nan"),
    (with_(PHI2_MSFT, layer_norm_epsilon=-1e-5), "layer_norm_eps -1e-05"),
    (with_(PHI2_V4, model_type="llama", architectures=["LlamaForCausalLM"]), "not a Phi-2 config"),
]


@pytest.mark.parametrize("cfg, match", REFUSED, ids=[m for _, m in REFUSED])
def test_refused_with_the_key_named(cfg, match):
    with pytest.raises(ModelFileError, match=match) as e:
        PhiConfig.from_hf(cfg, "some/config.json")
    assert str(e.value).startswith("some/config.json: ")


def test_validate_rejects_non_finite_eps_and_theta():
    for bad in ({"norm_eps": math.nan}, {"norm_eps": math.inf}, {"rope_theta": math.nan}, {"rope_theta": -math.inf}):
        with pytest.raises(ModelFileError, match="must be positive and finite"):
            PhiConfig(**bad).validate()


def test_gguf_metadata_config_validated_too():
    kv = PhiConfig().to_gguf_kv()
    kv["phi2.rope.freq_base"] = math.nan
    with pytest.raises(ModelFileError, match="rope_theta nan"):
        PhiConfig.from_gguf_kv(kv, 51200, "m.gguf")


# ----------------------------------------------------------------------------- logits vs transformers

# (hidden, heads, layers, ffn, partial_rotary_factor, rope_theta, eps): head_dim 80 with Phi-2's 0.4
# (32 rotary dims), and head_dim 64 with 0.25 (16), each with a rotary base other than 10000.
GEOMETRIES = {
    "hd80-rot32": (160, 2, 2, 320, 0.4, 2500.0, 1e-5),
    "hd64-rot16": (128, 2, 3, 512, 0.25, 40000.0, 1e-6),
}
LAYOUTS = ("transformers-5", "transformers-4", "phi-msft", "mixformer-sequential")


def _hf_model(geometry: str):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    hidden, heads, layers, ffn, factor, theta, eps = GEOMETRIES[geometry]
    config = transformers.PhiConfig(
        vocab_size=51200, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=N_CTX + 192,
        layer_norm_eps=eps, partial_rotary_factor=factor, rope_theta=theta, bos_token_id=50256, eos_token_id=50256)
    torch.manual_seed(0)
    model = transformers.PhiForCausalLM(config).eval()
    # std 0.08 makes attention scores O(1), so a rotary error shows from position 1 on
    gen = torch.Generator().manual_seed(sum(map(ord, geometry)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            x = torch.randn(p.shape, generator=gen)
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * x)
            else:
                p.copy_(x * (0.08 if name.endswith("weight") else 0.02))
    return torch, transformers, model


def _copy_tokenizer(src, dst):
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)


def _write_remote_code_layout(dst, layout: str, tensors: dict[str, np.ndarray], hidden, heads, layers, ffn,
                              factor, eps) -> None:
    """The same weights as Microsoft's remote code names them, with a config.json it writes."""
    head_dim = hidden // heads
    common = {"n_embd": hidden, "n_head": heads, "n_layer": layers, "n_positions": N_CTX + 192,
              "rotary_dim": int(head_dim * factor), "vocab_size": 51200, "activation_function": "gelu_new",
              "layer_norm_epsilon": eps, "pad_vocab_size_multiple": 64, "tie_word_embeddings": False,
              "n_inner": None if ffn == 4 * hidden else ffn, "torch_dtype": "float32"}
    if layout == "phi-msft":
        cfg = {"architectures": ["PhiForCausalLM"], "model_type": "phi-msft", "n_head_kv": None, **common,
               "flash_attn": False, "flash_rotary": False, "fused_dense": False}
        embd, block, ln_f, head = "transformer.embd.wte", "transformer.h.{i}", "lm_head.ln", "lm_head.linear"
    else:
        cfg = {"architectures": ["MixFormerSequentialForCausalLM"], "model_type": "mixformer-sequential", **common,
               "embd_layer": "default",
               "architecture": {"block_cls": "parallel", "mixer": {}, "mlp": {"mlp_cls": "mlp"}}}
        embd, block, ln_f, head = "layers.0.wte", "layers.{j}", f"layers.{layers + 1}.ln", f"layers.{layers + 1}.linear"
    out = {f"{embd}.weight": tensors["model.embed_tokens.weight"]}
    for i in range(layers):
        src, b = f"model.layers.{i}", block.format(i=i, j=i + 1)
        for p in ("weight", "bias"):
            out[f"{b}.ln.{p}"] = tensors[f"{src}.input_layernorm.{p}"]
            out[f"{b}.mixer.Wqkv.{p}"] = np.concatenate([tensors[f"{src}.self_attn.{x}_proj.{p}"] for x in "qkv"])
            out[f"{b}.mixer.out_proj.{p}"] = tensors[f"{src}.self_attn.dense.{p}"]
            out[f"{b}.mlp.fc1.{p}"] = tensors[f"{src}.mlp.fc1.{p}"]
            out[f"{b}.mlp.fc2.{p}"] = tensors[f"{src}.mlp.fc2.{p}"]
    for p in ("weight", "bias"):
        out[f"{ln_f}.{p}"] = tensors[f"model.final_layernorm.{p}"]
        out[f"{head}.{p}"] = tensors[f"lm_head.{p}"]
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


@pytest.fixture(scope="module", params=list(GEOMETRIES))
def case(request, tmp_path_factory, phi2_dir):
    """One geometry: HF's logits at positions 0..300 and an f32 GGUF converted from each layout."""
    geometry = request.param
    torch, transformers, model = _hf_model(geometry)
    hidden, heads, layers, ffn, factor, theta, eps = GEOMETRIES[geometry]
    root = tmp_path_factory.mktemp(geometry)
    ids = np.random.default_rng(5).integers(0, N_TOKENIZER_VOCAB, N_POS)
    # The remote code has the rotary base 10000 built in: its layouts are HF's model at that base.
    remote = transformers.PhiForCausalLM(transformers.PhiConfig.from_dict(
        {**model.config.to_dict(), "rope_parameters": {**model.config.rope_parameters, "rope_theta": 10000.0}})).eval()
    remote.load_state_dict(model.state_dict())
    with torch.no_grad():
        hf_logits = {layout: (model if layout.startswith("transformers") else remote)(
            torch.tensor(ids)[None]).logits[0].numpy() for layout in LAYOUTS}
    assert np.abs(hf_logits["phi-msft"] - hf_logits["transformers-5"]).max() > 1e-2  # the bases differ

    dirs = {layout: root / layout for layout in LAYOUTS}
    for d in dirs.values():
        d.mkdir()
        _copy_tokenizer(phi2_dir, d)
    model.save_pretrained(dirs["transformers-5"])
    saved = json.loads((dirs["transformers-5"] / "config.json").read_text())
    assert saved["rope_parameters"]["partial_rotary_factor"] == factor and "partial_rotary_factor" not in saved
    # transformers 4.x wrote the rotary settings at the top level, next to rope_scaling
    v4 = {k: v for k, v in saved.items() if k not in ("rope_parameters", "dtype")}
    v4.update(partial_rotary_factor=factor, rope_theta=theta, rope_scaling=None, torch_dtype="float32",
              transformers_version="4.37.0")
    shutil.copyfile(dirs["transformers-5"] / "model.safetensors", dirs["transformers-4"] / "model.safetensors")
    (dirs["transformers-4"] / "config.json").write_text(json.dumps(v4, indent=2) + "\n")
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    for layout in ("phi-msft", "mixformer-sequential"):
        _write_remote_code_layout(dirs[layout], layout, tensors, hidden, heads, layers, ffn, factor, eps)

    ggufs = {}
    for layout, d in dirs.items():
        ggufs[layout] = root / f"{layout}.f32.gguf"
        quantize(d, ggufs[layout], "f32", progress=False)
    return {"geometry": geometry, "ids": ids, "hf": hf_logits, "dirs": dirs, "ggufs": ggufs,
            "transformers": transformers, "torch": torch}


def _theta(layout: str, theta: float) -> float:
    return theta if layout.startswith("transformers") else 10000.0


def _rel_err(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per position: max |got - want| over the vocabulary / max |want| over everything."""
    return np.abs(got - want).max(axis=1) / np.abs(want).max()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logits_match_transformers_to_position_300(case, layout):
    model = phi2cpu.load(case["ggufs"][layout], threads=1, n_ctx=N_CTX, kv_type="f32")
    hidden, heads, _, _, factor, theta, _ = GEOMETRIES[case["geometry"]]
    assert (model.config.n_rot, model.config.rope_theta) == (int(hidden // heads * factor), _theta(layout, theta))
    got = model.logits(case["ids"].tolist())
    want = case["hf"][layout]
    tol = TOLERANCES["f32"]
    err = _rel_err(got, want)
    assert err.max() < tol["max_rel"], f"{layout}: max relative error {err.max():.2e} at position {err.argmax()}"
    top1 = (got[:, :N_TOKENIZER_VOCAB].argmax(1) == want[:, :N_TOKENIZER_VOCAB].argmax(1)).mean()
    assert top1 >= tol["top1"]
    print(f"{case['geometry']} {layout}: max |diff| {np.abs(got - want).max():.3g}, "
          f"max rel {err.max():.3g}, logits up to {np.abs(want).max():.3g}")


def test_hand_written_4x_config_is_what_transformers_reads(case):
    """The 4.x-style config means the same model to the installed transformers as the one it saved."""
    torch, transformers = case["torch"], case["transformers"]
    hf = transformers.PhiForCausalLM.from_pretrained(case["dirs"]["transformers-4"], dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(torch.tensor(case["ids"])[None]).logits[0].numpy()
    want = case["hf"]["transformers-5"]
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_the_old_misreading_is_caught(case, tmp_path):
    """The comparison sees the bug this file guards against: the same weights run with
    transformers' fallback factor 0.5 agree at position 0 and are wrong from position 1 on."""
    src = case["dirs"]["transformers-5"]
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_parameters"]["partial_rotary_factor"] = 0.5
    (bad / "config.json").write_text(json.dumps(cfg))
    quantize(bad, tmp_path / "bad.gguf", "f32", progress=False)
    got = phi2cpu.load(tmp_path / "bad.gguf", threads=1, n_ctx=N_CTX, kv_type="f32").logits(case["ids"][:40].tolist())
    err = _rel_err(got, case["hf"]["transformers-5"][:40])
    tol = TOLERANCES["f32"]["max_rel"]
    assert err[0] < tol and err[1:].min() > 100 * tol


def test_gguf_stores_the_rotary_dims(case):
    hidden, heads, _, _, factor, theta, eps = GEOMETRIES[case["geometry"]]
    for layout, path in case["ggufs"].items():
        mf = read_model_file(path)
        assert mf.kv["phi2.rope.dimension_count"] == int(hidden // heads * factor), layout
        assert mf.kv["phi2.rope.freq_base"] == pytest.approx(_theta(layout, theta)), layout
        assert mf.kv["phi2.attention.layer_norm_epsilon"] == pytest.approx(eps), layout
    if case["geometry"] == "hd80-rot32":   # Phi-2's head: 32 rotary dims of 80
        assert read_model_file(case["ggufs"]["transformers-5"]).kv["phi2.rope.dimension_count"] == 32


def test_info_shows_the_rotary_dims(case):
    hidden, heads, _, _, factor, _, _ = GEOMETRIES[case["geometry"]]
    r = subprocess.run([sys.executable, "-m", "phi2cpu", "info", str(case["ggufs"]["transformers-5"])],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("n_rot"))
    head_dim = hidden // heads
    assert line.split() == ["n_rot", str(int(head_dim * factor)), "(rotary", "dims", "per", "head,", "of",
                            "head_dim", f"{head_dim})"]
