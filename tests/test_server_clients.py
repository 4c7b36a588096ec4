"""`phi2cpu serve` as the clients people use drive it, over real HTTP on loopback: the official
openai client (sync, async, streaming), LangChain's ChatOpenAI, and lm-eval-harness's
loglikelihood request (echo + logprobs); log-probs in OpenAI's two shapes; n choices."""
from __future__ import annotations

import asyncio
import math

import pytest

pytest.importorskip("fastapi", reason="the server needs fastapi: pip install \"phi2cpu[server]\"")
pytest.importorskip("uvicorn", reason="the server needs uvicorn: pip install \"phi2cpu[server]\"")
pytest.importorskip("prometheus_client", reason="the server needs prometheus-client: pip install \"phi2cpu[server]\"")
openai = pytest.importorskip("openai", reason="these tests drive the server with the openai client")

import numpy as np  # noqa: E402

import phi2cpu  # noqa: E402
from phi2cpu.server import chat_prompt  # noqa: E402
from serve_process import start_serve, stop_serve  # noqa: E402

NAME = "phi2-mini-code.q8_0"
CTX = 1024
MESSAGES = [{"role": "user", "content": "Write a function that reverses a string."}]


@pytest.fixture(scope="module")
def server():
    proc, url = start_serve("--threads", "1", "--ctx-size", str(CTX))
    yield url
    stop_serve(proc)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def local():
    return phi2cpu.load(phi2cpu.default_model_path(), threads=1, n_ctx=CTX)


# --- the openai client: sync, async, streaming ---------------------------------------------------

def test_async_client_and_its_streams_equal_the_sync_answers(server, client):
    kw = dict(model=NAME, messages=MESSAGES, max_tokens=20, temperature=0)
    sync_chat = client.chat.completions.create(**kw).choices[0].message.content
    sync_text = client.completions.create(model=NAME, prompt="def mean(xs):", max_tokens=20,
                                          temperature=0).choices[0].text

    async def run():
        a = openai.AsyncOpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)
        chat = await a.chat.completions.create(**kw)
        streamed = [c.choices[0].delta.content or "" async for c in await a.chat.completions.create(**kw, stream=True)
                    if c.choices]
        # two requests at once: the server queues them, each gets its own answer
        both = await asyncio.gather(
            a.completions.create(model=NAME, prompt="def mean(xs):", max_tokens=20, temperature=0),
            a.chat.completions.create(**kw))
        await a.close()
        return chat.choices[0].message.content, "".join(streamed), both

    chat, streamed, (text, chat2) = asyncio.run(run())
    assert chat == streamed == chat2.choices[0].message.content == sync_chat and chat
    assert text.choices[0].text == sync_text


def test_completion_logprobs_in_openai_shape(client, local):
    prompt = "def mean(xs):"
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    ref = local.complete(prompt, 12, temperature=0)
    assert "".join(lp.tokens) == r.choices[0].text == ref.text
    assert lp.token_logprobs == pytest.approx(ref.token_logprobs, abs=1e-9)
    assert all(len(top) == 3 for top in lp.top_logprobs)
    for tok, top, own in zip(lp.tokens, lp.top_logprobs, lp.token_logprobs):
        assert max(top, key=top.get) == tok and top[tok] == own  # greedy: the sampled token is the most likely
    assert lp.text_offset[0] == len(prompt)  # offsets index prompt + text
    assert [b - a for a, b in zip(lp.text_offset, lp.text_offset[1:])] == [len(t) for t in lp.tokens[:-1]]


def test_streamed_logprobs_equal_the_whole_answer(client):
    kw = dict(model=NAME, prompt="def f():", max_tokens=30, temperature=0, logprobs=2, stop=["\n\n"])
    whole = client.completions.create(**kw).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(**kw, stream=True) if c.choices]
    tokens = [t for c in chunks if c.logprobs for t in c.logprobs.tokens]
    assert "".join(c.text for c in chunks) == whole.text
    assert tokens == whole.logprobs.tokens
    # a stop string cuts the text: only tokens that begin before the cut are listed
    assert whole.finish_reason == "stop" and whole.text.startswith("".join(tokens[:-1]))
    assert "".join(tokens).startswith(whole.text)


def test_chat_logprobs_in_openai_shape(client, local):
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=16, temperature=0, logprobs=True,
                                       top_logprobs=5)
    content = r.choices[0].logprobs.content
    prompt, stops = chat_prompt(MESSAGES)
    ref = local.complete(prompt, 16, temperature=0, stop=stops)
    assert [t.logprob for t in content] == pytest.approx(ref.token_logprobs[:len(content)], abs=1e-9)
    assert bytes(b for t in content for b in t.bytes).decode().lstrip().startswith(r.choices[0].message.content)
    for t in content:
        assert len(t.top_logprobs) == 5 and t.top_logprobs[0].token == t.token
        assert [x.logprob for x in t.top_logprobs] == sorted((x.logprob for x in t.top_logprobs), reverse=True)
    plain = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize("kw, param", [
    (dict(logprobs=True, top_logprobs=21), "top_logprobs"),
    (dict(top_logprobs=2), "top_logprobs"),
    (dict(logprobs=3), "logprobs"),  # chat's logprobs is a boolean
])
def test_bad_chat_logprobs_are_400(client, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2, **kw)
    assert e.value.body["param"] == param


# --- echo and lm-eval-harness ------------------------------------------------------------------

def test_echo_returns_the_prompts_logprobs_equal_to_token_logprobs(client, local):
    prompt = "def fibonacci(n):\n    if n < 2:\n        return n\n"
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=0, echo=True, logprobs=0)
    (choice,) = r.choices
    lp = choice.logprobs
    assert choice.text == prompt and "".join(lp.tokens) == prompt
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == local.token_logprobs(prompt).tolist()  # the same numbers, exactly
    assert lp.text_offset[0] == 0 and r.usage.completion_tokens == 0
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=0, echo=True, logprobs=20)
    lp = r.choices[0].logprobs
    assert all(top[tok] == own for tok, own, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:])
               if tok in top) and sum(tok in top for tok, top in zip(lp.tokens[1:], lp.top_logprobs[1:])) > 5
    # echo with generation: the prompt, then what greedy decoding gives
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=8, echo=True, temperature=0)
    assert r.choices[0].text == prompt + local.generate(prompt, 8, temperature=0)


def _loglikelihood(client, requests):
    """lm-eval-harness's local-completions loglikelihood: token-id prompts, echo, logprobs=1,
    max_tokens=1, and its parsing of the answer (the last token is the generated one)."""
    payload = dict(model=NAME, prompt=[ctx + cont for ctx, cont in requests], temperature=0, max_tokens=1,
                   logprobs=1, seed=1234, echo=True)
    out = client.completions.create(**payload)
    results = []
    for choice, (ctx, _) in zip(sorted(out.choices, key=lambda c: c.index), requests):
        lp = choice.logprobs
        n = len(ctx)
        total = sum(lp.token_logprobs[n:-1])
        greedy = all(max(top, key=top.get) == tok for tok, top in zip(lp.tokens[n:-1], lp.top_logprobs[n:-1]))
        results.append((total, greedy))
    return results


def test_lm_eval_style_loglikelihood(client, local):
    ctx = local.tokenize("def add(a, b):\n    return")
    greedy = local.tokenize(local.generate(local.detokenize(ctx), 3, temperature=0))[:2]
    other = local.tokenize(" a * b")
    results = _loglikelihood(client, [(ctx, greedy), (ctx, other)])
    for (total, is_greedy), cont, want_greedy in zip(results, (greedy, other), (True, False)):
        ids = ctx + cont
        ref = local.token_logprobs(ids)[len(ctx) - 1:].sum()
        assert total == pytest.approx(ref, abs=1e-9) and is_greedy is want_greedy
        logits = local.logits(ids)
        assert is_greedy == all(int(np.argmax(logits[len(ctx) - 1 + i][:50295])) == t for i, t in enumerate(cont))


# --- n choices ------------------------------------------------------------------------------------

def test_n_choices_have_reproducible_per_choice_seeds(client):
    kw = dict(model=NAME, messages=MESSAGES, max_tokens=12, temperature=1.0, seed=11)
    r = client.chat.completions.create(**kw, n=3)
    texts = [c.message.content for c in r.choices]
    assert [c.index for c in r.choices] == [0, 1, 2] and len(set(texts)) > 1
    assert [c.message.content for c in client.chat.completions.create(**kw, n=3).choices] == texts
    # choice j samples with seed + j
    alone = [client.chat.completions.create(**{**kw, "seed": 11 + j}).choices[0].message.content for j in range(3)]
    assert alone == texts
    assert r.usage.prompt_tokens == client.chat.completions.create(**kw).usage.prompt_tokens  # the prompt, once


def test_n_choices_for_several_prompts_stream_by_index(client):
    kw = dict(model=NAME, prompt=["x = ", "def g():"], max_tokens=6, temperature=0.9, seed=3, n=2)
    whole = client.completions.create(**kw)
    assert [c.index for c in whole.choices] == [0, 1, 2, 3]
    got = {}
    for chunk in client.completions.create(**kw, stream=True):
        for c in chunk.choices:
            got[c.index] = got.get(c.index, "") + c.text
    assert [got[i] for i in range(4)] == [c.text for c in whole.choices]
    first = client.completions.create(**{**kw, "n": 1})
    assert [c.text for c in first.choices] == [whole.choices[0].text, whole.choices[2].text]


def test_best_of_returns_the_choice_of_highest_mean_logprob(client):
    kw = dict(model=NAME, prompt="class Point:", max_tokens=10, temperature=1.0, seed=21)
    every = client.completions.create(**kw, n=4, logprobs=0).choices
    means = [sum(c.logprobs.token_logprobs) / len(c.logprobs.token_logprobs) for c in every]
    best = client.completions.create(**kw, best_of=4).choices
    assert len(best) == 1 and best[0].text == every[int(np.argmax(means))].text
    with pytest.raises(openai.BadRequestError):
        client.completions.create(**kw, best_of=2, n=3)


@pytest.mark.parametrize("n_seq", [1, 4])
def test_n_choices_share_one_prefill(n_seq):
    """In-process: the prompt is evaluated once for all n choices; each later choice starts from a
    copy of the cached prompt (its own slot, or the same one after the first choice), evaluates its
    last token again, then only its own sampled tokens."""
    from fastapi.testclient import TestClient

    from phi2cpu.server import create_app

    model = phi2cpu.load(phi2cpu.default_model_path(), threads=1, n_ctx=256, n_seq=n_seq)
    prompt = "def parse(path):\n    with open(path) as f:\n"
    n_prompt = len(model.tokenize(prompt))
    with TestClient(create_app(model, NAME)) as c:
        sched = c.app.state.engine.scheduler
        r = c.post("/v1/completions", json=dict(prompt=prompt, n=4, max_tokens=5, temperature=1, seed=1,
                                                ignore_eos=True))
        assert r.status_code == 200 and len(r.json()["choices"]) == 4
        assert r.json()["usage"]["prompt_tokens"] == n_prompt
        assert r.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        # one prefill, 3 choices x their last prompt token again, 4 choices x (5 - 1) decode steps
        assert sched.tokens_evaluated == n_prompt + 3 + 4 * 4
        metrics = c.get("/metrics").text
    assert f"phi2cpu_prompt_tokens_evaluated_total {float(n_prompt + 3)}" in metrics
    texts = [ch["text"] for ch in sorted(r.json()["choices"], key=lambda ch: ch["index"])]
    alone = [model.complete(prompt, 5, temperature=1, seed=1 + j, logit_bias={model.tokenizer.eos_id: -math.inf}).text
             for j in range(4)]
    assert texts == alone  # choice j is the prompt sampled alone with seed + j


# --- LangChain -----------------------------------------------------------------------------------

def test_langchain_chat_openai(server, client):
    lc = pytest.importorskip("langchain_openai", reason="pip install langchain-openai")
    llm = lc.ChatOpenAI(base_url=server + "/v1", api_key="unused", temperature=0, max_tokens=20, max_retries=0,
                        timeout=120)  # LangChain's default model name: any name is served
    want = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=20, temperature=0)
    answer = llm.invoke(MESSAGES[0]["content"])
    assert answer.content == want.choices[0].message.content
    assert "".join(chunk.content for chunk in llm.stream(MESSAGES[0]["content"])) == answer.content
    assert answer.response_metadata["finish_reason"] == want.choices[0].finish_reason
    scored = lc.ChatOpenAI(base_url=server + "/v1", api_key="unused", temperature=0, max_tokens=5, max_retries=0,
                           logprobs=True).invoke(MESSAGES[0]["content"])
    assert all(math.isfinite(t["logprob"]) for t in scored.response_metadata["logprobs"]["content"])
