"""Errors of the HTTP server in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
and the translation of pydantic's validation errors into that shape (``param`` is the location of
the first error, as ``messages[0].content``)."""
from __future__ import annotations

import json
from typing import Any, Dict, Optional, Sequence

from pydantic import BaseModel
from pydantic_core import PydanticCustomError

CUSTOM = "phi2cpu_invalid"  # the error type of our validators' messages


def invalid(message: str) -> PydanticCustomError:
    """An error for a field validator to raise; the message is answered as it is."""
    return PydanticCustomError(CUSTOM, "{message}", {"message": message})


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 type_: Optional[str] = None, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def error_body(status: int, message: str, code: Optional[str] = None) -> dict:
    return APIError(status, message, code=code).body()


def short(v: object, limit: int = 60) -> str:
    """A client's value as JSON, cut short: an error message must not echo a megabyte back."""
    try:
        r = json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        r = repr(v)
    return r if len(r) <= limit else r[:limit] + "..."


def param_of(loc: Sequence[Any]) -> Optional[str]:
    """``("messages", 0, "content")`` -> ``"messages[0].content"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or None


def _bounds(model: Optional[type], loc: Sequence[Any]) -> Optional[str]:
    """A top-level numeric field's interval, as "[0, 2]" or "(0, 1]", from its declared bounds."""
    if model is None or len(loc) != 1 or loc[0] not in getattr(model, "model_fields", {}):
        return None
    lo = hi = None
    lo_open = hi_open = False
    for m in model.model_fields[loc[0]].metadata:
        for attr, is_lo, is_open in (("ge", True, False), ("gt", True, True), ("le", False, False),
                                     ("lt", False, True)):
            v = getattr(m, attr, None)
            if v is None:
                continue
            if is_lo:
                lo, lo_open = v, is_open
            else:
                hi, hi_open = v, is_open
    if lo is None or hi is None:
        return None
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}" if _is_float_field(model, loc[0]) \
        else f"[{lo}, {hi}]"


def _is_float_field(model: Optional[type], name: object) -> bool:
    fields = getattr(model, "model_fields", {})
    return name in fields and float in (fields[name].annotation, *getattr(fields[name].annotation, "__args__", ()))


def _message(err: dict, name: str, model: Optional[type]) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    got = f", got {short(value)}"
    interval = _bounds(model, err["loc"])
    if kind == "missing":
        return f"{name} is required"
    if kind == "extra_forbidden":
        return f"{name} is not a field this server knows; it refuses what it cannot honour"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{name} must be an integer{' in ' + interval if interval else ''}{got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{name} must be true or false{got}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"{name} must be a finite number{' in ' + interval if interval else ''}{got}"
    if kind in ("string_type", "string_unicode"):
        return f"{name} must be a string{got}"
    if kind == "list_type":
        return f"{name} must be a list{got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"{name} must be an object{got}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        if interval:
            what = "a number" if _is_float_field(model, err["loc"][0]) else "an integer"
            return f"{name} must be {what} in {interval}{got}"
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()), "")
        return f"{name} must be {op} {bound}{got}"
    if kind == "too_short":
        return f"{name} takes at least {ctx.get('min_length')} items{got}"
    if kind == "too_long":
        return f"{name} takes at most {ctx.get('max_length')} items, got {ctx.get('actual_length')}"
    if kind == "literal_error":
        return f"{name} must be one of {ctx.get('expected')}{got}"
    if kind == CUSTOM:  # raised by our own validators, with the whole message; nested fields get their path
        field = str(err["loc"][-1]) if err["loc"] else ""
        msg = err["msg"]
        return name + msg[len(field):] if len(err["loc"]) > 1 and field and msg.startswith(field) else msg
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    return f"{name}: {err.get('msg', 'invalid value')}"


def from_validation(errors: Sequence[dict], model: Optional[type[BaseModel]] = None,
                    drop_prefix: int = 0) -> APIError:
    """A 400 for the first of pydantic's errors (``ValidationError.errors()``). `drop_prefix` leading
    parts of each location are not field names (FastAPI's "body")."""
    err = dict(errors[0])
    err["loc"] = tuple(err.get("loc", ()))[drop_prefix:]
    param = param_of(err["loc"])
    return bad(_message(err, param or "the request body", model), param)
