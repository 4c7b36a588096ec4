"""The server's request and response bodies as pydantic models: what `/docs` and `/openapi.json`
show, and what every request is validated against (strict types: `n: true`, `"1"` or `1.0` are
not integers; unknown fields are refused, never ignored).

Fields of OpenAI's API and of llama.cpp's server are either honoured or refused with 400. The
llama.cpp samplers this engine does not have are accepted only at the value that turns them off
(`NEUTRAL`); their tuning fields (`mirostat_tau`, `dry_base`, ...) then have nothing to tune and
are accepted as they are, since clients send them with every request.
"""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .server_errors import invalid, short

MAX_INT = 2 ** 63 - 1         # integer fields are int64, as OpenAI's
MAX_SEED = 2 ** 64 - 1
MAX_STOP_STRINGS = 4          # as OpenAI's API
MAX_PROMPTS = 16              # prompts in one /v1/completions request
MAX_CHOICES = 128             # n (or best_of) times the prompts of one request
MAX_TOP_LOGPROBS = 20         # as OpenAI's chat API

# llama.cpp fields for samplers this engine does not have -> the value that turns each off
NEUTRAL: Dict[str, Any] = {
    "mirostat": 0, "typical_p": 1.0, "tfs_z": 1.0, "dynatemp_range": 0.0, "xtc_probability": 0.0,
    "dry_multiplier": 0.0, "top_n_sigma": -1.0, "n_probs": 0, "min_keep": 0, "n_keep": 0,
    "penalize_nl": False, "samplers": None, "t_max_predict_ms": 0, "n_indent": 0,
    "post_sampling_probs": False, "return_tokens": False, "timings_per_token": False, "lora": None,
}


def _none(v: Any) -> bool:
    return v is None


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class StreamOptions(Strict):
    include_usage: Optional[bool] = Field(None, description="send a last chunk with the token usage")


class LookupOptions(Strict):
    k: Optional[int] = Field(None, ge=1, le=64, description="most guessed tokens per step")
    ngram_max: Optional[int] = Field(None, ge=1, le=MAX_INT, description="longest n-gram matched")
    ngram_min: Optional[int] = Field(None, ge=1, le=MAX_INT, description="shortest n-gram matched")
    adaptive: Optional[bool] = Field(None, description="guess only as many tokens as pay off (default true)")


class GenerationFields(Strict):
    """Fields both /v1/completions and /v1/chat/completions take. Unset sampling fields take the
    server's defaults (those of `phi2cpu run` unless `serve` was given others)."""

    model: Optional[str] = Field(None, description="the model id; see `serve --alias`")
    temperature: Optional[float] = Field(None, ge=0, le=2, description="0 is greedy")
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0, le=MAX_INT, description="0 turns it off")
    min_p: Optional[float] = Field(None, ge=0, le=1, description="0 turns it off")
    repeat_penalty: Optional[float] = Field(None, gt=0, le=10, description="1 turns it off")
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    penalty_last_n: Optional[int] = Field(None, ge=-1, le=MAX_INT,
                                          description="tokens the penalties look back; -1 = the context")
    repeat_last_n: Optional[int] = Field(None, ge=-1, le=MAX_INT, description="llama.cpp's penalty_last_n")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="choice i of a request uses seed + i")
    logit_bias: Optional[Dict[str, float]] = Field(None, description="token id (as a string) -> bias in "
                                                                       "[-100, 100]")
    stop: Optional[Union[str, List[str]]] = Field(None, description=f"up to {MAX_STOP_STRINGS} strings")
    stream: Optional[bool] = None
    stream_options: Optional[StreamOptions] = None
    n: Optional[int] = Field(None, ge=1, le=MAX_CHOICES, description="choices per prompt")
    user: Optional[str] = Field(None, description="an end-user id; recorded nowhere")
    n_predict: Optional[int] = Field(None, ge=-1, le=MAX_INT,
                                     description="llama.cpp's max_tokens; -1 = until end-of-text or a full context")
    ignore_eos: Optional[bool] = Field(None, description="never sample end-of-text")
    cache_prompt: Optional[bool] = Field(None, description="accepted; every request starts from an empty cache, "
                                                            "which gives the same tokens")
    id_slot: Optional[int] = Field(None, ge=-1, le=0, description="one slot: -1 or 0")
    grammar: Optional[str] = Field(None, description="a llama.cpp GBNF grammar the output must match (its root "
                                                    "rule)")
    json_schema: Optional[Dict[str, Any]] = Field(None, description="llama.cpp's field: a JSON schema the output "
                                                                    "must be valid against")
    lookup: Optional[Union[bool, LookupOptions]] = Field(
        None, description="speculative decoding by prompt lookup: true, false, or its settings (over the "
                          "server's); the same output distribution, faster when the output repeats the prompt; "
                          "default: the server's (`serve --lookup`)")
    # llama.cpp samplers: accepted only at the value that turns each off (NEUTRAL)
    mirostat: Optional[int] = Field(None, ge=0, le=2, description="only 0")
    mirostat_tau: Optional[float] = Field(None, description="unused: mirostat is off")
    mirostat_eta: Optional[float] = Field(None, description="unused: mirostat is off")
    typical_p: Optional[float] = Field(None, description="only 1")
    tfs_z: Optional[float] = Field(None, description="only 1")
    dynatemp_range: Optional[float] = Field(None, description="only 0")
    dynatemp_exponent: Optional[float] = Field(None, description="unused: dynatemp_range is 0")
    xtc_probability: Optional[float] = Field(None, description="only 0")
    xtc_threshold: Optional[float] = Field(None, description="unused: xtc_probability is 0")
    dry_multiplier: Optional[float] = Field(None, description="only 0")
    dry_base: Optional[float] = Field(None, description="unused: dry_multiplier is 0")
    dry_allowed_length: Optional[int] = Field(None, description="unused: dry_multiplier is 0")
    dry_penalty_last_n: Optional[int] = Field(None, description="unused: dry_multiplier is 0")
    dry_sequence_breakers: Optional[List[str]] = Field(None, description="unused: dry_multiplier is 0")
    top_n_sigma: Optional[float] = Field(None, description="only -1")
    n_probs: Optional[int] = Field(None, description="only 0; use logprobs")
    min_keep: Optional[int] = Field(None, description="only 0")
    n_keep: Optional[int] = Field(None, description="only 0: the context never shifts")
    penalize_nl: Optional[bool] = Field(None, description="only false")
    samplers: Optional[List[str]] = Field(None, description="only null: the order is fixed")
    t_max_predict_ms: Optional[int] = Field(None, description="only 0")
    n_indent: Optional[int] = Field(None, description="only 0")
    post_sampling_probs: Optional[bool] = Field(None, description="only false")
    return_tokens: Optional[bool] = Field(None, description="only false; use logprobs")
    timings_per_token: Optional[bool] = Field(None, description="only false")
    lora: Optional[List[Dict[str, Any]]] = Field(None, description="only null")

    @field_validator(*NEUTRAL)
    @classmethod
    def _off_only(cls, v: Any, info) -> Any:
        off = NEUTRAL[info.field_name]
        if v is not None and v != off:
            raise invalid(f"{info.field_name} {short(v)} is not supported: this server has no such sampler or "
                          f"option (only {short(off)}, which turns it off)")
        return v

    @field_validator("stop", mode="plain", json_schema_input_type=Optional[Union[str, List[str]]])
    @classmethod
    def _stop(cls, v: Any) -> Optional[List[str]]:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if not (isinstance(stops, list) and all(isinstance(s, str) and s for s in stops)):
            raise invalid(f"stop must be a non-empty string or a list of them, got {short(v)}")
        if len(stops) > MAX_STOP_STRINGS:
            raise invalid(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}")
        return stops

    @field_validator("logit_bias", mode="plain", json_schema_input_type=Optional[Dict[str, float]])
    @classmethod
    def _logit_bias(cls, v: Any) -> Optional[Dict[int, float]]:
        if v is None:
            return None
        if not isinstance(v, dict):
            raise invalid(f"logit_bias must be an object mapping token ids to numbers, got {short(v)}")
        out: Dict[int, float] = {}
        for key, bias in v.items():
            if not (key.isascii() and key.isdigit() and len(key) <= 10):
                raise invalid(f"logit_bias keys must be token ids, got {short(key)}")
            if not (isinstance(bias, (int, float)) and not isinstance(bias, bool) and -100 <= bias <= 100):
                raise invalid(f"logit_bias values must be numbers in [-100, 100], got {short(bias)} for {key}")
            out[int(key)] = float(bias)
        return out


def _is_ids(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)


class CompletionRequest(GenerationFields):
    """POST /v1/completions."""

    prompt: Any = Field(..., json_schema_extra={"anyOf": [
        {"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1},
        {"type": "array", "items": {"type": "integer"}, "minItems": 1},
        {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1}, "minItems": 1}]},
        description=f"a string, a list of strings, token ids, or a list of token id lists (at most {MAX_PROMPTS})")
    max_tokens: Optional[int] = Field(None, ge=0, le=MAX_INT, description="default 16; 0 only with echo")
    echo: Optional[bool] = Field(None, description="prepend the prompt (and its tokens' log-probs)")
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                    description="log-probs of the sampled tokens and this many alternatives")
    best_of: Optional[int] = Field(None, ge=1, le=MAX_CHOICES,
                                   description="sample this many per prompt, return the n of highest mean log-prob")
    suffix: Optional[str] = Field(None, description="only empty: Phi-2 has no infilling")

    @field_validator("prompt", mode="plain")
    @classmethod
    def _prompt(cls, p: Any) -> List[Union[str, List[int]]]:
        if p is None:
            raise invalid("prompt is required")
        if isinstance(p, str):
            items: List[Any] = [p]
        elif _is_ids(p):
            items = [p]  # one prompt given as token ids
        elif isinstance(p, list) and p and all(isinstance(i, str) or _is_ids(i) for i in p):
            items = list(p)
        else:
            raise invalid("prompt must be a string, a list of strings, or token ids")
        if len(items) > MAX_PROMPTS:
            raise invalid(f"at most {MAX_PROMPTS} prompts per request, got {len(items)}")
        return items

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v: Optional[str]) -> Optional[str]:
        if v:
            raise invalid("suffix is not supported: Phi-2 was not trained to fill in the middle")
        return v


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        ..., description='"developer" is OpenAI\'s newer name for "system"')
    content: Any = Field(..., json_schema_extra={"anyOf": [
        {"type": "string"}, {"type": "array", "items": TextPart.model_json_schema()}]},
        description="a string or a list of text parts")
    name: Optional[str] = Field(None, description="only null: the prompt format has no names")
    refusal: Optional[str] = Field(None, description="only null")
    tool_calls: Optional[List[Dict[str, Any]]] = Field(None, description="only null or []")
    function_call: Optional[Dict[str, Any]] = Field(None, description="only null")
    audio: Optional[Dict[str, Any]] = Field(None, description="only null")
    annotations: Optional[List[Dict[str, Any]]] = Field(None, description="accepted: they are not text")

    @field_validator("content", mode="plain")
    @classmethod
    def _content(cls, content: Any, info) -> str:
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            parts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                        and set(part) <= {"type", "text"}):
                    raise invalid("content: only text parts are supported")
                parts.append(part["text"])
            return "".join(parts)
        raise invalid("content must be a string or a list of text parts")

    @field_validator("name", "refusal", "function_call", "audio")
    @classmethod
    def _null_only(cls, v: Any, info) -> Any:
        if v is not None:
            raise invalid(f"{info.field_name} is not supported in messages")
        return v

    @field_validator("tool_calls")
    @classmethod
    def _no_tool_calls(cls, v: Any) -> Any:
        if v:
            raise invalid("tool_calls are not supported: Phi-2 has no tool-calling format")
        return v


class JsonSchemaFormat(Strict):
    name: str
    schema_: Optional[Dict[str, Any]] = Field(None, alias="schema", description="the output must be valid "
                                                                                "against it (absent: any object)")
    description: Optional[str] = None
    strict: Optional[bool] = Field(None, description="accepted: the schema is always enforced")


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = Field(None, description='required with "type": "json_schema"')


class ChatCompletionRequest(GenerationFields):
    """POST /v1/chat/completions."""

    messages: List[ChatMessage] = Field(..., description="rendered by the chat template (`serve --chat-template`; "
                                                         "default: the model file's, else Phi-2's Alice: / Bob: "
                                                         "format); a final assistant message is continued")
    max_tokens: Optional[int] = Field(None, ge=1, le=MAX_INT, description="default: until the reply ends")
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=MAX_INT, description="OpenAI's newer max_tokens")
    logprobs: Optional[bool] = Field(None, description="log-probs of the sampled tokens")
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="alternatives per token; "
                                                                                    "needs logprobs")
    response_format: Optional[ResponseFormat] = Field(None, description='"json_object": the reply is one JSON '
                                                      'object; "json_schema": JSON valid against its schema')
    tools: Optional[List[Dict[str, Any]]] = Field(None, description="only null or []")
    tool_choice: Optional[Union[str, Dict[str, Any]]] = Field(None, description='only "none" or "auto" without tools')
    functions: Optional[List[Dict[str, Any]]] = Field(None, description="only null or []")
    function_call: Optional[Union[str, Dict[str, Any]]] = Field(None, description='only "none" or "auto"')
    parallel_tool_calls: Optional[bool] = Field(None, description="accepted: there are no tools")
    audio: Optional[Dict[str, Any]] = Field(None, description="only null")
    modalities: Optional[List[str]] = Field(None, description='only ["text"]')
    prediction: Optional[Dict[str, Any]] = Field(None, description="only null")
    reasoning_effort: Optional[str] = Field(None, description="only null: Phi-2 does not reason first")
    verbosity: Optional[str] = Field(None, description="only null")
    web_search_options: Optional[Dict[str, Any]] = Field(None, description="only null")
    service_tier: Optional[str] = Field(None, description="accepted: there is one queue")
    store: Optional[bool] = Field(None, description="only false: nothing is stored")
    metadata: Optional[Dict[str, str]] = Field(None, description="accepted; stored nowhere")

    @field_validator("messages")
    @classmethod
    def _non_empty(cls, v: List[ChatMessage]) -> List[ChatMessage]:
        if not v:
            raise invalid("messages must be a non-empty list")
        return v

    @field_validator("response_format")
    @classmethod
    def _schema_given(cls, v: Optional[ResponseFormat]) -> Optional[ResponseFormat]:
        if v is not None and v.type == "json_schema" and v.json_schema is None:
            raise invalid('response_format with "type": "json_schema" needs a "json_schema" object')
        return v

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, v: Any, info) -> Any:
        if v:
            raise invalid(f"{info.field_name} are not supported: Phi-2 has no tool-calling format")
        return v

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_choice(cls, v: Any, info) -> Any:
        if v not in (None, "none", "auto"):
            raise invalid(f"{info.field_name} {short(v)} is not supported: there are no tools")
        return v

    @field_validator("audio", "prediction", "reasoning_effort", "verbosity", "web_search_options")
    @classmethod
    def _null_only(cls, v: Any, info) -> Any:
        if v is not None:
            raise invalid(f"{info.field_name} is not supported by this server")
        return v

    @field_validator("modalities")
    @classmethod
    def _text_modality(cls, v: Optional[List[str]]) -> Optional[List[str]]:
        if v is not None and v != ["text"]:
            raise invalid(f'modalities must be ["text"], got {short(v)}')
        return v

    @field_validator("store")
    @classmethod
    def _no_store(cls, v: Optional[bool]) -> Optional[bool]:
        if v:
            raise invalid("store is not supported: this server stores no completions")
        return v


# --- responses ---------------------------------------------------------------------------------

class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(..., description="prompt tokens a slot's cache held: not evaluated again")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: Optional[PromptTokensDetails] = None


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy shape: one entry per token; the first prompt token has no log-prob."""
    tokens: List[str]
    token_logprobs: List[Optional[float]]
    top_logprobs: List[Optional[Dict[str, float]]]
    text_offset: List[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[Literal["stop", "length"]] = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: List[CompletionChoice]
    usage: Optional[Usage] = Field(None, exclude_if=_none, description="absent from stream chunks but the last")


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: List[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: List[TopLogprob]


class ChatLogprobs(BaseModel):
    content: List[ChatTokenLogprob]
    refusal: Optional[List[ChatTokenLogprob]] = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: Optional[ChatLogprobs] = None
    finish_reason: Literal["stop", "length"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: List[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Optional[Literal["assistant"]] = Field(None, exclude_if=_none)
    content: Optional[str] = Field(None, exclude_if=_none)


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: Optional[ChatLogprobs] = None
    finish_reason: Optional[Literal["stop", "length"]] = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: List[ChatChunkChoice]
    usage: Optional[Usage] = Field(None, exclude_if=_none, description="only in the last chunk, when asked for")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "phi2cpu"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: List[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "error"] = "ok"
    model: str
    requests_running: int = Field(..., description="requests at least one of whose choices has a slot")
    requests_waiting: int = Field(..., description="requests none of whose choices has a slot yet (serve "
                                                   "--max-queue bounds those beyond the free slots)")
    slots_busy: int = Field(..., description="KV-cache slots generating now")
    slots_total: int = Field(..., description="KV-cache slots (serve --parallel)")
    queue_length: int = Field(..., description="choices waiting in the scheduler's queue for a slot: a request "
                                               "of n choices counts n until each has one")
    error: Optional[str] = None  # with status "error" (HTTP 503): why the model cannot serve


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class TokenizeRequest(Strict):
    """POST /tokenize, as llama.cpp's server."""
    content: str
    add_special: Optional[bool] = Field(None, description="accepted: Phi-2's tokenizer adds no special tokens")
    with_pieces: Optional[bool] = Field(None, description="return {id, piece} objects instead of ids")


class TokenPiece(BaseModel):
    id: int
    piece: Union[str, List[int]] = Field(..., description="the text, or its bytes when they are not UTF-8")


class TokenizeResponse(BaseModel):
    tokens: Union[List[int], List[TokenPiece]]


class DetokenizeRequest(Strict):
    """POST /detokenize, as llama.cpp's server."""
    tokens: List[int]


class DetokenizeResponse(BaseModel):
    content: str
