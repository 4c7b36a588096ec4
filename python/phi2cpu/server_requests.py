"""From a request's body to the job the engine runs: parsing and validating against the
pydantic models, the server's sampling defaults for the fields a request leaves out, tokenizing,
context checks, constraints and chat templates. It runs on the prepare thread, off the event
loop; every refusal is an :class:`phi2cpu.server_errors.APIError`."""
from __future__ import annotations

import dataclasses
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Optional, Tuple, Type, TypeVar

from pydantic import BaseModel, ValidationError

from . import grammar
from .chat_template import ChatTemplate, builtin as builtin_template
from .errors import GrammarError, Phi2Error, TemplateError
from .lookup import LookupParams, lookup_params
from .sampling import SAMPLING_OPTIONS, SamplingParams
from .server_engine import Engine, Job
from .server_errors import APIError, bad, from_validation, short
from .server_models import MAX_CHOICES, ChatCompletionRequest, ChatMessage, CompletionRequest, GenerationFields
from .tokenizer import check_text

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions


@dataclass
class ServerState:
    """What the routes need, kept in ``app.state.server``."""
    model: Any                           # a loaded phi2cpu.Model
    engine: Engine
    model_name: str                      # the id /v1/models lists and responses carry
    aliases: Optional[FrozenSet[str]]    # the names `model` may take; None: any name
    defaults: SamplingParams             # for the sampling fields a request leaves out
    api_key: Optional[str]
    metrics: Any
    prepare_pool: ThreadPoolExecutor     # parsing, validating, tokenizing: one request at a time
    created: int
    n_vocab: int
    max_prompt_bytes: int                # a prompt of more bytes cannot fit the context
    chat_template: Optional[ChatTemplate] = None  # None: Phi-2's Alice: / Bob: format
    lookup: Optional[LookupParams] = None  # prompt lookup for requests that do not set `lookup`



M = TypeVar("M", bound=BaseModel)


# --- parsing and validating (on the prepare thread) -------------------------------------------

def parse_body(raw: bytes, model: Type[M]) -> M:
    """The request's JSON object as `model`. Its size and depth were bounded by RequestLimits."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise bad("the request body nests arrays and objects too deep") from None
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise from_validation(e.errors(include_url=False), model) from None


def checked_text(v: str, param: str) -> str:
    try:
        return check_text(v, param)
    except Phi2Error as e:
        raise bad(str(e), param) from None


def check_model(st: ServerState, name: Optional[str]) -> None:
    if name is None or st.aliases is None or name in st.aliases:
        return
    raise APIError(404, f"the model {short(name)} does not exist; this server serves "
                        f"{', '.join(repr(a) for a in sorted(st.aliases))}", param="model", code="model_not_found")


def sampling(st: ServerState, req: GenerationFields) -> SamplingParams:
    """SamplingParams from the request's fields, the server's defaults for those it leaves out."""
    d = st.defaults
    kwargs: Dict[str, Any] = {}
    for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty",
                 "frequency_penalty", "seed"):
        v = getattr(req, name)
        kwargs[name] = getattr(d, name) if v is None else v
    last_n = req.penalty_last_n if req.penalty_last_n is not None else req.repeat_last_n
    kwargs["penalty_last_n"] = d.penalty_last_n if last_n is None else (st.model.n_ctx if last_n == -1 else last_n)
    bias = dict(d.logit_bias)
    for tok, b in (req.logit_bias or {}).items():
        if not 0 <= tok < st.n_vocab:
            raise bad(f"logit_bias token id {tok} is outside 0..{st.n_vocab - 1}", "logit_bias")
        bias[tok] = b
    if req.ignore_eos:
        bias[st.model.tokenizer.eos_id] = -math.inf
    kwargs["logit_bias"] = bias
    try:
        return SamplingParams(**kwargs).validate()
    except Phi2Error as e:  # its messages start with the field's name
        name = str(e).split(" ", 1)[0]
        raise bad(str(e), name if name in SAMPLING_OPTIONS else None) from None


def lookup_setting(st: ServerState, req: GenerationFields) -> Optional[LookupParams]:
    """The request's prompt-lookup settings: its own fields over the server's (or the defaults)."""
    v = req.lookup
    if v is None:
        return st.lookup
    if v is False:
        return None
    base = st.lookup or LookupParams()
    given = {} if v is True else {k: x for k, x in v.model_dump().items() if x is not None}
    try:
        return lookup_params({**dataclasses.asdict(base), **given})
    except Phi2Error as e:
        raise bad(str(e), "lookup") from None


def stream_flags(req: GenerationFields) -> Tuple[bool, bool]:
    """(stream, include_usage). OpenAI refuses stream_options without stream; so does this."""
    if req.stream_options is not None and not req.stream:
        raise bad("stream_options is only allowed when stream is true", "stream_options")
    return bool(req.stream), bool(req.stream_options and req.stream_options.include_usage)


def token_ids(st: ServerState, prompt: str, param: str) -> List[int]:
    model = st.model
    n_bytes = len(checked_text(prompt, param).encode("utf-8"))
    if n_bytes > st.max_prompt_bytes:
        raise bad(f"the prompt is {n_bytes} bytes, more than {model.n_ctx - 1} tokens of at most "
                  f"{model.tokenizer.max_token_bytes} bytes each; the context holds {model.n_ctx} tokens "
                  f"and must leave room to generate", param, code="context_length_exceeded")
    return model.tokenizer.encode(prompt, release_gil=True) or [model.tokenizer.eos_id]


def check_length(st: ServerState, ids: List[int], param: str) -> None:
    n_ctx = st.model.n_ctx
    if len(ids) + 1 > n_ctx:
        raise bad(f"the prompt is {len(ids)} tokens; the context holds {n_ctx} tokens, so it leaves no room "
                  f"to generate (shorten the prompt or start the server with a larger --ctx-size)", param,
                  code="context_length_exceeded")


def constraint(st: ServerState, req: GenerationFields) -> Optional[grammar.Constraint]:
    """The output constraint of `response_format` (chat), llama.cpp's `json_schema` or `grammar`
    (at most one), compiled and checked against the tokenizer here, before the job is queued."""
    given = [(name, getattr(req, name, None)) for name in ("response_format", "json_schema", "grammar")]
    given = [(name, v) for name, v in given
             if v is not None and not (name == "response_format" and v.type == "text")
             and not (name == "grammar" and v == "")]  # llama.cpp's clients send "" for none
    if not given:
        return None
    if len(given) > 1:
        raise bad(f"give one of response_format, json_schema and grammar, not {' and '.join(n for n, _ in given)}",
                  given[1][0])
    name, v = given[0]
    try:
        if name == "grammar":
            c = grammar.gbnf(v)
        elif name == "json_schema":
            c = grammar.json_schema(v)
        elif v.type == "json_schema" and v.json_schema.schema_ is not None:
            c = grammar.json_schema(v.json_schema.schema_)
        else:
            c = grammar.json_object()
        c.matcher(st.model.tokenizer, st.n_vocab)
    except GrammarError as e:
        raise bad(str(e), name) from None
    return c


def _choices(n_prompts: int, n: int, param: str) -> None:
    if n_prompts * n > MAX_CHOICES:
        raise bad(f"{n_prompts} prompts x {param} {n} is more than the {MAX_CHOICES} choices one request may ask "
                  f"for", param)


@dataclass
class Prepared:
    job: Job
    stream: bool
    include_usage: bool
    n: int                               # choices per prompt returned (best_of may sample more)


def completion_job(st: ServerState, raw: bytes) -> Prepared:
    req = parse_body(raw, CompletionRequest)
    check_model(st, req.model)
    params = sampling(st, req)
    stream, include_usage = stream_flags(req)
    max_tokens = req.max_tokens
    if max_tokens is None and req.n_predict is not None:
        max_tokens = st.model.n_ctx if req.n_predict == -1 else req.n_predict
    if max_tokens is None:
        max_tokens = DEFAULT_COMPLETION_TOKENS
    if max_tokens == 0 and not req.echo:
        raise bad("max_tokens must be an integer >= 1 (0 only with echo: true)",
                  "max_tokens" if req.max_tokens is not None else "n_predict")
    n = 1 if req.n is None else req.n
    sampled = n if req.best_of is None else req.best_of
    if sampled < n:
        raise bad(f"best_of must be at least n ({n}), got {sampled}", "best_of")
    if stream and sampled > n:
        raise bad("best_of greater than n cannot stream: the best choices are known only at the end", "best_of")
    _choices(len(req.prompt), sampled, "best_of" if req.best_of is not None else "n")
    prompts, echo = [], []
    for item in req.prompt:
        if isinstance(item, str):
            ids = token_ids(st, item, "prompt")
            echo.append(item)
        else:
            if not all(0 <= t < st.n_vocab for t in item):
                raise bad(f"prompt token ids must lie in 0..{st.n_vocab - 1}", "prompt")
            ids = list(item)
            echo.append(st.model.tokenizer.decode(ids))
        check_length(st, ids, "prompt")
        prompts.append(ids)
    stops = [checked_text(s, "stop") for s in req.stop or []]
    job = Job(prompts, params, max_tokens, stops, n=sampled, prompt_texts=echo, echo=bool(req.echo),
              logprobs=req.logprobs, constraint=constraint(st, req), lookup=lookup_setting(st, req))
    return Prepared(job, stream, include_usage, n)


def chat_prompt(messages: Any, template: Optional[ChatTemplate] = None) -> Tuple[str, List[str]]:
    """The prompt `template` (default: Phi-2's Alice: / Bob: format) renders for OpenAI-style
    `messages` (dicts or ChatMessage), ending with the reply's cue or inside a final assistant
    message, which is continued; and the stop strings that end the template's turn."""
    if not (isinstance(messages, list) and messages):
        raise bad("messages must be a non-empty list", "messages")
    plain = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, ChatMessage):
            try:
                msg = ChatMessage.model_validate(msg)
            except ValidationError as e:
                raise from_validation([{**err, "loc": ("messages", i, *err["loc"])}
                                       for err in e.errors(include_url=False)]) from None
        content = checked_text(msg.content, f"messages[{i}].content")
        plain.append({"role": "system" if msg.role == "developer" else msg.role, "content": content})
    template = template or builtin_template("phi2")
    try:
        prompt = template.render(plain)
    except TemplateError as e:
        raise bad(str(e), "messages") from None
    return prompt, list(template.stop)


def chat_job(st: ServerState, raw: bytes) -> Prepared:
    req = parse_body(raw, ChatCompletionRequest)
    check_model(st, req.model)
    params = sampling(st, req)
    stream, include_usage = stream_flags(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise bad("top_logprobs needs logprobs: true", "top_logprobs")
    max_tokens = next((v for v in (req.max_tokens, req.max_completion_tokens) if v is not None), None)
    if max_tokens is None and req.n_predict not in (None, -1):
        max_tokens = req.n_predict
    if max_tokens == 0:
        raise bad("n_predict must be -1 or an integer >= 1", "n_predict")
    n = 1 if req.n is None else req.n
    _choices(1, n, "n")
    stops = [checked_text(s, "stop") for s in req.stop or []]
    prompt, chat_stops = chat_prompt(req.messages, st.chat_template)
    ids = token_ids(st, prompt, "messages")
    check_length(st, ids, "messages")
    c = constraint(st, req)
    last = req.messages[-1]
    continued = last.role == "assistant" and bool(last.content.strip())
    # no limit given: until the reply ends or the context is full. A constraint decides itself where
    # the reply ends and what it begins with: no turn stops, no stripping; nor is the continuation of
    # an assistant message stripped (its first characters may be a newline and an indent)
    job = Job([ids], params, max_tokens or st.model.n_ctx, stops + (chat_stops if c is None else []), n=n,
              lstrip=c is None and not continued, logprobs=(req.top_logprobs or 0) if req.logprobs else None,
              constraint=c, lookup=lookup_setting(st, req))
    return Prepared(job, stream, include_usage, n)
