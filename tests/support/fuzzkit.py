"""Hypothesis strategies for the HTTP fuzz suite: requests to every route of an aiohttp app,
built from that app's router (a route added later is fuzzed without touching the suite), with
valid example bodies mutated in the ways clients get bodies wrong."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import strategies as st

from sesflow.common.settings import Settings

from support.snssign import SnsSigner

API_KEY = "fuzz-api-key-0123456789"
JWT_SECRET = "a-fuzz-jwt-secret-of-at-least-32-bytes"
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO"]
RANDOM_PATHS = ["/", "/v1", "/v1/", "/v1/messages/x", "//", "/%FF", "/v1/../health", "/.env"]

# Bytes that break a decoder, a Redis write or a header: not UTF-8, a surrogate encoded as
# UTF-8, NUL, line breaks, and the start of nesting deeper than the interpreter's stack.
BAD_BYTES = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\r\n", b'"', b"\\", b"\\u0000"]
NESTING = [b"[" * 200_000 + b"]" * 200_000, b'{"a":' * 50_000, b"[" * 5_000]

# JSON texts a value may be replaced with: wrong types, extremes, escapes Python keeps but
# UTF-8 cannot encode (a lone surrogate), a number Python cannot turn into text (> 4300 digits).
ODD_VALUES = [
    "5",
    "-1",
    "0",
    "1.5",
    "1e308",
    "-1e999",
    "9" * 30,
    "1" + "0" * 5000,
    "true",
    "null",
    "[]",
    "{}",
    '""',
    '" "',
    '"\\u0000"',
    '"\\ud800"',
    '"\\udc80"',
    '"a\\r\\nb: c"',
    '"' + "a" * 70_000 + '"',
    '["a@x.io", 5]',
    '{"a": {"b": [1]}}',
    '"2024-13-45T99:99:99Z"',
    '"99999-01-01T00:00:00Z"',
    '"\\u00e9\\u4e2d\\ud83d\\ude00"',
]

PARAM_TEXTS = [
    "a@x.io",
    "A@X.IO",
    "t",
    "%FF",
    "%ED%A0%80",
    "%00",
    "%0D%0A",
    "..",
    "%2F",
    "a" * 300,
    "a" * 9_000,
    "%C3%A9",
    "@",
    "-1",
    "99999999999999999999999",
]
QUERY_NAMES = ["hours", "limit", "cursor", "metric", "from", "to", "step", "topic", "topic_id"]
QUERY_NAMES += ["t", "requestId", "request_id", "x", "minutes"]
QUERY_VALUES = ["", "1", "0", "-1", "24", "721", "1e9", "abc", "%FF", "%00", "1" * 400, "sent"]
QUERY_VALUES += ["2024-01-01T00:00:00Z", "nan", "inf", "a.b", "%C3%A9", "9" * 5000, "%C2%B2"]
QUERY_VALUES += ["1795535162423-0_0", "1-0_%C2%B2", "1-0_" + "9" * 5000, "%C2%B2-0_1"]

HEADER_VALUES = {
    "Content-Type": [
        "application/json",
        "application/x-www-form-urlencoded",
        "text/plain; charset=latin-1",
        "multipart/form-data; boundary=x",
        "application/json; charset=utf-16",
        "garbage",
    ],
    "Content-Encoding": ["gzip", "deflate", "br", "identity", "x-unknown"],
    "Accept": ["application/json", "text/html", "*/*", "image/gif"],
    "Idempotency-Key": ["k", "", " ", "a" * 300, "\u00e9", "k\t1"],
    "x-api-key": ["", "wrong", "a" * 5000, API_KEY + " "],
    "Authorization": ["Bearer ", "Bearer x.y.z", "Basic Zm9vOmJhcg==", "bearer " + "a" * 3000],
    "X-Forwarded-For": ["1.2.3.4", "::1", "x"],
    "Expect": ["100-continue", "a-miracle"],
}


@dataclass
class Roles:
    """The three HTTP roles, started in-process; `signer` signs SNS messages they accept."""

    ingest: TestClient[Any, Any]
    tracker: TestClient[Any, Any]
    stats: TestClient[Any, Any]
    signer: SnsSigner
    settings: Settings


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # the resource's formatter, e.g. /v1/topics/{topic_id}
    params: tuple[str, ...]


@dataclass(frozen=True)
class Fuzzed:
    """One request. The URL is sent as given, always ASCII: a raw byte in a URL is refused by
    aiohttp's parser before it knows the method, so its answer to a HEAD would carry a body the
    client rejects (see the regression tests for raw bytes in a URL)."""

    method: str
    path_qs: str  # already percent-encoded
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def routes_of(app: web.Application) -> list[Route]:
    """Every (method, path) the app's router answers, HEAD aside (aiohttp adds it to GETs)."""
    routes: list[Route] = []
    for resource in app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter")
        if not isinstance(path, str):
            continue
        params = tuple(p.split(":")[0] for p in _placeholders(path))
        for route in resource:
            if route.method != "HEAD":
                routes.append(Route(route.method, path, params))
    return routes


def _placeholders(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def fill(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


def encoded_param() -> st.SearchStrategy[str]:
    """A path segment: a known troublemaker (already encoded) or any text, percent-encoded."""
    return st.one_of(
        st.sampled_from(PARAM_TEXTS),
        st.text(max_size=40).map(lambda s: quote(s, safe="@")),
    )


def query_string() -> st.SearchStrategy[str]:
    pair = st.tuples(
        st.one_of(st.sampled_from(QUERY_NAMES), st.text(max_size=8).map(quote)),
        st.one_of(st.sampled_from(QUERY_VALUES), st.text(max_size=20).map(quote)),
    )
    return st.lists(pair, max_size=4).map(
        lambda pairs: "&".join(f"{k}={v}" if v != "" else k for k, v in pairs)
    )


def raw_header_lines() -> st.SearchStrategy[list[bytes]]:
    """Header lines as bytes no HTTP client would send: values that are not UTF-8 or hold
    control characters, names that are not tokens."""
    known = st.sampled_from([n.encode() for n in HEADER_VALUES])
    names = st.one_of(known, known, known, st.binary(min_size=1, max_size=12))
    values = st.one_of(
        st.sampled_from(
            [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"a\x7fb", b"Bearer \xff"]
        ),
        st.binary(max_size=40),
    )
    line = st.tuples(names.filter(lambda b: b":" not in b), values).map(b": ".join)
    return st.lists(line.filter(lambda b: b"\r" not in b and b"\n" not in b), max_size=3)


def headers() -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(
        st.sampled_from(sorted(HEADER_VALUES)),
        st.just(""),
        max_size=3,
    ).flatmap(
        lambda chosen: st.fixed_dictionaries(
            {name: st.sampled_from(HEADER_VALUES[name]) for name in chosen}
        )
    )


def json_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=12,
    )


def _leaf_paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Where a value may be replaced: every key of every object, every item of every list."""
    paths = [at]
    if isinstance(value, dict):
        for key, inner in value.items():
            paths += _leaf_paths(inner, (*at, key))
    elif isinstance(value, list):
        for n, inner in enumerate(value):
            paths += _leaf_paths(inner, (*at, n))
    return paths


SENTINEL = "\x00__sesflow_fuzz_value__\x00"


def replace_at(document: Any, path: tuple[Any, ...], raw_json: str) -> bytes:
    """The document with the value at `path` replaced by `raw_json`, spelt exactly as given."""
    if not path:
        return raw_json.encode()
    copy = json.loads(json.dumps(document))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = SENTINEL
    return json.dumps(copy).replace(json.dumps(SENTINEL), raw_json).encode()


# Valid bodies and single wrong values weigh more: they reach past the decoder into the checks,
# the Redis writes and the answers.
MUTATIONS = ["valid", "valid", "value", "value", "value", "flip", "truncate", "insert", "drop"]
MUTATIONS += ["nest", "random", "json"]


def byte_mutation(draw: st.DrawFn, example: bytes, kind: str) -> bytes:
    """A flipped byte, a cut, or a bad byte sequence inserted (`example` is not empty)."""
    if kind == "flip":
        at = draw(st.integers(0, len(example) - 1))
        return example[:at] + bytes([example[at] ^ draw(st.integers(1, 255))]) + example[at + 1 :]
    if kind == "truncate":
        return example[: draw(st.integers(0, max(len(example) - 1, 0)))]
    at = draw(st.integers(0, len(example)))
    return example[:at] + draw(st.sampled_from(BAD_BYTES)) + example[at:]


def json_mutation(draw: st.DrawFn, example: bytes, kind: str) -> bytes:
    """One JSON value replaced by an odd one ("value"), or dropped ("drop")."""
    try:
        document = json.loads(example)
    except ValueError:
        return example
    path = draw(st.sampled_from(_leaf_paths(document)))
    if kind == "drop" and path:
        copy = json.loads(example)
        target = copy
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]
        return json.dumps(copy).encode()
    return replace_at(document, path, draw(st.sampled_from(ODD_VALUES)))


@st.composite
def mutated(draw: st.DrawFn, example: bytes) -> bytes:
    """`example`, valid or broken in one of the ways a client breaks a body."""
    kind = draw(st.sampled_from(MUTATIONS))
    if kind == "valid" or (not example and kind in {"flip", "truncate", "value", "drop"}):
        return example
    if kind in {"flip", "truncate", "insert"}:
        return byte_mutation(draw, example, kind)
    if kind in {"value", "drop"}:
        return json_mutation(draw, example, kind)
    if kind == "nest":
        return draw(st.sampled_from(NESTING))
    if kind == "random":
        return draw(st.binary(max_size=200))
    return json.dumps(draw(json_values())).encode()


@st.composite
def requests(
    draw: st.DrawFn,
    routes: list[Route],
    examples: dict[tuple[str, str], list[bytes]],
    bodies: dict[tuple[str, str], st.SearchStrategy[bytes]] | None = None,
    queries: st.SearchStrategy[str] | None = None,
) -> Fuzzed:
    """A request to one of `routes` (or elsewhere), with a body mutated from `examples`, or
    drawn from the route's own strategy in `bodies` (e.g. a signed SNS message around a mutated
    SES event), and sometimes a query from `queries` (e.g. signed tracking tokens)."""
    if draw(st.integers(0, 9)) == 0:
        path = draw(st.sampled_from(RANDOM_PATHS))
        method = draw(st.sampled_from(METHODS))
        body = draw(mutated(b'{"messages": []}'))
    else:
        route = draw(st.sampled_from(routes))
        values = {name: draw(encoded_param()) for name in route.params}
        path = fill(route.path, values)
        # Mostly the route's own method; sometimes another, for the 405s.
        method = route.method if draw(st.integers(0, 5)) else draw(st.sampled_from(METHODS))
        candidates = examples.get((route.method, route.path), [b""])
        own = (bodies or {}).get((route.method, route.path))
        if own is not None and draw(st.booleans()):
            body = draw(own)
        else:
            body = draw(mutated(draw(st.sampled_from(candidates))))
    own_query = queries is not None and draw(st.booleans())
    query = draw(queries if queries is not None and own_query else query_string())
    return Fuzzed(
        method=method,
        path_qs=f"{path}?{query}" if query else path,
        headers={"x-api-key": API_KEY, **draw(headers())},
        body=body if method not in {"GET", "HEAD"} or draw(st.booleans()) else b"",
    )
