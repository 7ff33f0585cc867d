"""The Wicket plugin SDK for Python, over the bindings componentize-py
generates from `wit/plugin.wit` (contract `wicket:plugin@0.1.5`).

A policy is a subclass of `Policy` that overrides `configure` and the hooks
it implements (`request`, `response`); `export` turns it into the
`WitWorld` class componentize-py builds the component from::

    import wicket

    class DenyHeader(wicket.Policy):
        def configure(self, config):
            self.header = wicket.config.string(config, "header")

        def request(self, req):
            if req.header(self.header) is not None:
                return wicket.respond(403, json={"error": "denied"})
            return wicket.proceed()

    WitWorld = wicket.export(DenyHeader)

Hooks the subclass does not override are not declared, so the gateway never
calls them. Header values are text (UTF-8, undecodable bytes kept as
surrogates so no two values read alike); `header_bytes` gives the raw bytes.
"""

import json as _json
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple, Union

from . import _host

__all__ = [
    "Policy", "export", "ConfigError", "StateError", "Request", "ResponseHead",
    "Outcome", "Proceed", "Respond", "Keep", "Replace", "proceed", "respond",
    "keep", "replace", "state", "context", "span", "log", "metrics", "clock",
    "upstreams", "config", "Counter", "Window", "Bucket", "TraceContext",
]

Headers = Union[None, Dict[str, Union[str, bytes]], Iterable[Tuple[str, Union[str, bytes]]]]


class ConfigError(Exception):
    """Raised by `configure` for a configuration the plugin refuses; the
    message should start with the field, e.g. `limit: must be at least 1`."""


class StateError(Exception):
    """A state call failed: `kind` is `unavailable`, `too-large` or
    `not-a-counter`."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


def _text(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else value.decode("utf-8", "surrogateescape")


def _bytes(value: Union[str, bytes]) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogateescape")


def _pairs(headers: Headers) -> List[Tuple[str, bytes]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(name.lower(), _bytes(value)) for name, value in items]


# -- what hooks see ---------------------------------------------------------


@dataclass
class TraceContext:
    """The request's W3C trace context."""
    trace_id: str
    parent_id: str
    sampled: bool
    trace_state: Optional[str]


class Request:
    """The request as it stands at this plugin; each accessor asks the host
    once and keeps the answer."""

    def __init__(self, raw):
        self._raw = raw
        self._cache = {}

    def _get(self, key, fetch):
        if key not in self._cache:
            self._cache[key] = fetch()
        return self._cache[key]

    @property
    def method(self) -> str:
        return self._get("method", self._raw.method)

    @property
    def scheme(self) -> str:
        return self._get("scheme", self._raw.scheme)

    @property
    def authority(self) -> str:
        return self._get("authority", self._raw.authority)

    @property
    def path(self) -> str:
        return self._get("path", self._raw.path)

    @property
    def query(self) -> Optional[str]:
        return self._get("query", self._raw.query)

    @property
    def route(self) -> str:
        return self._get("route", self._raw.route)

    @property
    def upstream(self) -> str:
        return self._get("upstream", self._raw.upstream)

    @property
    def client_ip(self) -> str:
        return self._get("client_ip", self._raw.client_ip)

    @property
    def client_port(self) -> int:
        return self._get("client_port", self._raw.client_port)

    @property
    def request_id(self) -> str:
        return self._get("request_id", self._raw.request_id)

    @property
    def upstream_attempts(self) -> int:
        """Tries the upstream call made: 1 unless it retried; 0 in on_request (contract 0.1.3)."""
        return self._raw.upstream_attempts()

    @property
    def trace(self) -> Optional[TraceContext]:
        def fetch():
            t = self._raw.trace_context()
            if t is None:
                return None
            return TraceContext(t.trace_id, t.parent_id, t.sampled, t.trace_state)
        return self._get("trace", fetch)

    @property
    def tls(self):
        """What the TLS handshake negotiated (`server_name`, `alpn`,
        `version`, `client_certificate`), or None on cleartext."""
        return self._get("tls", self._raw.tls)

    def header(self, name: str) -> Optional[str]:
        """The first value of header `name` as text, or None."""
        return _text(self._raw.header(name.lower()))

    def header_bytes(self, name: str) -> Optional[bytes]:
        """The first value of header `name` as bytes, or None: compare
        credentials as bytes."""
        return self._raw.header(name.lower())

    def header_values(self, name: str) -> List[str]:
        return [_text(v) for v in self._raw.header_values(name.lower())]

    def headers(self) -> List[Tuple[str, str]]:
        """Every header as (name, text) in arrival order (copies them all)."""
        return [(h.name, _text(h.value)) for h in self._raw.headers()]

    def param(self, name: str) -> Optional[str]:
        """A path parameter captured by the route."""
        return self._raw.param(name)

    def query_param(self, name: str) -> Optional[str]:
        """The first value of query parameter `name`, undecoded."""
        for pair in (self.query or "").split("&"):
            key, _, value = pair.partition("=")
            if key == name:
                return value
        return None

    def cookie(self, name: str) -> Optional[str]:
        for line in self.header_values("cookie"):
            for pair in line.split(";"):
                key, _, value = pair.strip().partition("=")
                if key == name:
                    return value
        return None


class ResponseHead:
    """The response head `response` sees."""

    def __init__(self, raw):
        self._raw = raw

    @property
    def status(self) -> int:
        return self._raw.status()

    def header(self, name: str) -> Optional[str]:
        return _text(self._raw.header(name.lower()))

    def header_values(self, name: str) -> List[str]:
        return [_text(v) for v in self._raw.header_values(name.lower())]


@dataclass
class Outcome:
    """What the upstream did: `status` when it answered; `error`
    (`connect-failed`, `timeout`, `reset`, `no-endpoint`, `protocol`) when
    it failed; `skipped` when a plugin answered instead."""
    status: Optional[int] = None
    error: Optional[str] = None
    skipped: bool = False
    latency_us: int = 0
    endpoint: Optional[str] = None


def _outcome(raw) -> Outcome:
    result = raw.result
    name = type(result).__name__
    out = Outcome(latency_us=raw.latency_us, endpoint=raw.endpoint)
    if name.endswith("_Status"):
        out.status = result.value
    elif name.endswith("_Error"):
        out.error = result.value.name.lower().replace("_", "-")
    else:
        out.skipped = True
    return out


# -- what hooks return ------------------------------------------------------


@dataclass
class Proceed:
    """Let the request go on, with these changes."""
    set_headers: List[Tuple[str, bytes]] = field(default_factory=list)
    remove_headers: List[str] = field(default_factory=list)
    path: Optional[str] = None
    query: Optional[str] = None
    upstream: Optional[str] = None
    response_headers: List[Tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Respond:
    """Answer the client in place of the upstream."""
    status: int
    headers: List[Tuple[str, bytes]] = field(default_factory=list)
    body: bytes = b""

    def json(self):
        """The body as JSON (for tests)."""
        return _json.loads(self.body)

    def header(self, name: str) -> Optional[str]:
        return next((_text(v) for n, v in self.headers if n == name.lower()), None)


@dataclass
class Keep:
    """Keep the response, with these changes to its head."""
    status: Optional[int] = None
    set_headers: List[Tuple[str, bytes]] = field(default_factory=list)
    remove_headers: List[str] = field(default_factory=list)


@dataclass
class Replace(Respond):
    """Replace the response with this one."""


def proceed(set_headers: Headers = None, remove_headers: Iterable[str] = (),
            path: Optional[str] = None, query: Optional[str] = None,
            upstream: Optional[str] = None, response_headers: Headers = None) -> Proceed:
    """`continue`: every argument defaults to "no change"."""
    return Proceed(_pairs(set_headers), [n.lower() for n in remove_headers], path,
                   query, upstream, _pairs(response_headers))


def _body(body, json, headers):
    pairs = _pairs(headers)
    if json is not None:
        body = _json.dumps(json, separators=(",", ":"))
        if not any(n == "content-type" for n, _ in pairs):
            pairs.append(("content-type", b"application/json"))
    return pairs, _bytes(body)


def respond(status: int, body: Union[str, bytes] = b"", headers: Headers = None,
            json=None) -> Respond:
    """Answer the client: `json=` serialises a body and sets its type."""
    pairs, data = _body(body, json, headers)
    return Respond(status, pairs, data)


def keep(status: Optional[int] = None, set_headers: Headers = None,
         remove_headers: Iterable[str] = ()) -> Keep:
    """`continue` in `response`: every argument defaults to "no change"."""
    return Keep(status, _pairs(set_headers), [n.lower() for n in remove_headers])


def replace(status: int, body: Union[str, bytes] = b"", headers: Headers = None,
            json=None) -> Replace:
    pairs, data = _body(body, json, headers)
    return Replace(status, pairs, data)


def _wit_headers(types, pairs):
    return [types.Header(name, value) for name, value in pairs]


def _wit_response(types, r: Respond):
    return types.Response(r.status, _wit_headers(types, r.headers), r.body)


def _wit_request_action(action):
    types = _host.module("types")
    if action is None:
        action = Proceed()
    if isinstance(action, Respond):
        return types.RequestAction_Respond(_wit_response(types, action))
    if isinstance(action, Proceed):
        return types.RequestAction_Continue(types.RequestPatch(
            _wit_headers(types, action.set_headers), action.remove_headers, action.path,
            action.query, action.upstream, _wit_headers(types, action.response_headers)))
    raise TypeError(f"request() returned {type(action).__name__}, not proceed() or respond()")


def _wit_response_action(action):
    types = _host.module("types")
    if action is None:
        action = Keep()
    if isinstance(action, Replace):
        return types.ResponseAction_Replace(_wit_response(types, action))
    if isinstance(action, Keep):
        return types.ResponseAction_Continue(types.ResponsePatch(
            action.status, _wit_headers(types, action.set_headers), action.remove_headers))
    raise TypeError(f"response() returned {type(action).__name__}, not keep() or replace()")


# -- the policy -------------------------------------------------------------


class Policy:
    """Override `configure`, and `request` and/or `response`."""

    def configure(self, config: dict) -> None:
        """Check and keep the route's config (a dict); raise `ConfigError`
        naming the field to refuse it."""

    def request(self, req: Request):
        """Return `proceed(...)`, `respond(...)` or None (proceed)."""
        return None

    def response(self, req: Request, outcome: Outcome, resp: ResponseHead):
        """Return `keep(...)`, `replace(...)` or None (keep)."""
        return None


def _declared(policy: Policy):
    cls = type(policy)
    return cls.request is not Policy.request, cls.response is not Policy.response


def export(cls):
    """The `WitWorld` class componentize-py expects, running `cls`."""

    class WitWorld:
        _policy = None

        def init(self, config: str):
            types = _host.module("types")
            try:
                parsed = _json.loads(config)
                if not isinstance(parsed, dict):
                    raise ConfigError("configuration must be a JSON object")
                policy = cls()
                policy.configure(parsed)
            except ConfigError as e:
                raise _err(str(e))
            except Exception as e:  # a bug in configure: say what, not abort
                raise _err(f"configure raised {type(e).__name__}: {e}")
            WitWorld._policy = policy
            on_request, on_response = _declared(policy)
            hooks = types.Hooks(0)
            if on_request:
                hooks |= types.Hooks.ON_REQUEST
            if on_response:
                hooks |= types.Hooks.ON_RESPONSE
            return hooks

        def on_request(self, request):
            return _wit_request_action(WitWorld._policy.request(Request(request)))

        def on_response(self, request, outcome, response):
            action = WitWorld._policy.response(Request(request), _outcome(outcome),
                                               ResponseHead(response))
            return _wit_response_action(action)

    WitWorld.__name__ = "WitWorld"
    return WitWorld


def _err(message: str):
    from componentize_py_types import Err
    return Err(message)


def _call(f, *args):
    """Call a host function, turning its `Err(state-error)` into StateError."""
    try:
        return f(*args)
    except Exception as e:
        value = getattr(e, "value", None)
        if value is not None and hasattr(value, "name"):
            raise StateError(value.name.lower().replace("_", "-")) from None
        raise


# -- host services ----------------------------------------------------------


@dataclass
class Counter:
    value: int
    ttl_ms: Optional[int]


@dataclass
class Window:
    """One step of a fixed window: whether this request fits, the count so
    far, how many remain, and milliseconds until the window resets."""
    allowed: bool
    count: int
    remaining: int
    reset_ms: int


@dataclass
class Bucket:
    """One `take_tokens` step (contract 0.1.5): whether the tokens were
    taken, whole tokens left, milliseconds until the bucket is full again
    (`RateLimit-Reset`), and when refused, milliseconds until `cost` tokens
    are there (`Retry-After`)."""
    taken: bool
    remaining: int
    reset_ms: int
    retry_after_ms: int


class _State:
    """Key-value state shared by every instance of this plugin."""

    def get(self, key: str) -> Optional[bytes]:
        entry = _call(_host.module("state").get, key)
        return None if entry is None else entry.value

    def get_entry(self, key: str):
        """`(value, version)` or None."""
        entry = _call(_host.module("state").get, key)
        return None if entry is None else (entry.value, entry.version)

    def set(self, key: str, value: Union[str, bytes], ttl_ms: Optional[int] = None) -> int:
        return _call(_host.module("state").set, key, _bytes(value), ttl_ms)

    def compare_and_swap(self, key: str, expected: Optional[int], value: Union[str, bytes],
                         ttl_ms: Optional[int] = None):
        """The new version when it swapped, else None."""
        result = _call(_host.module("state").compare_and_swap, key, expected, _bytes(value), ttl_ms)
        return result.value if type(result).__name__.endswith("_Swapped") else None

    def increment(self, key: str, delta: int = 1, ttl_ms: Optional[int] = None) -> Counter:
        c = _call(_host.module("state").increment_with_ttl, key, delta, ttl_ms)
        return Counter(c.value, c.ttl_ms)

    def delete(self, key: str) -> bool:
        return _call(_host.module("state").delete, key)

    def take_tokens(self, key: str, rate: int, period_ms: int, burst: int, cost: int = 1) -> Bucket:
        """Take `cost` tokens from the token bucket `key` (refilled with
        `rate` tokens every `period_ms`, at most `burst`, starting full) in
        one atomic host call: a rate limit exact across instances and, with
        state on Redis, across gateways."""
        b = _call(_host.module("state").take_tokens, key, rate, period_ms, burst, cost)
        return Bucket(b.taken, b.remaining, b.reset_ms, b.retry_after_ms)

    def fixed_window(self, key: str, limit: int, window_ms: int) -> Window:
        """Count one request in the window `key` (created with `window_ms`
        on first use) and say whether it is within `limit`."""
        c = self.increment(key, 1, window_ms)
        reset = window_ms if c.ttl_ms is None else c.ttl_ms
        return Window(c.value <= limit, c.value, max(limit - c.value, 0), reset)


class _Context:
    """Values kept for the rest of this request (on-request to on-response)."""

    def get(self, key: str) -> Optional[bytes]:
        return _host.module("context").get(key)

    def set(self, key: str, value: Union[str, bytes]) -> bool:
        return _host.module("context").set(key, _bytes(value))


class _Span:
    """This hook call's span in the request's trace (since contract 0.1.4): when
    the request is not recorded, every call does nothing."""

    def recording(self) -> bool:
        return _host.module("span").recording()

    def set_attribute(self, key: str, value) -> None:
        _host.module("span").set_attribute(key, str(value))

    def add_event(self, name: str, attributes: Optional[Dict[str, object]] = None) -> None:
        span = _host.module("span")
        attrs = [span.Attribute(k, str(v)) for k, v in (attributes or {}).items()]
        span.add_event(name, attrs)


class _Log:
    def _log(self, level: str, message: str):
        log = _host.module("log")
        log.log(getattr(log.Level, level), str(message))

    def trace(self, message): self._log("TRACE", message)
    def debug(self, message): self._log("DEBUG", message)
    def info(self, message): self._log("INFO", message)
    def warn(self, message): self._log("WARN", message)
    def error(self, message): self._log("ERROR", message)


class _Metrics:
    def counter(self, name: str, value: int = 1, **labels: str):
        m = _host.module("metrics")
        m.counter_add(name, [m.Label(k, str(v)) for k, v in labels.items()], value)

    def histogram(self, name: str, value: float, **labels: str):
        m = _host.module("metrics")
        m.histogram_observe(name, [m.Label(k, str(v)) for k, v in labels.items()], float(value))


class _Clock:
    def now_ms(self) -> int:
        return _host.module("clock").now_ms()

    def monotonic_ns(self) -> int:
        return _host.module("clock").monotonic_ns()


class _Config:
    """Reading a config dict with errors that name the field."""

    def string(self, config: dict, name: str, default=None) -> str:
        value = config.get(name, default)
        if not isinstance(value, str) or (value == "" and default is None):
            raise ConfigError(f"{name}: expected a non-empty string")
        return value

    def integer(self, config: dict, name: str, default=None, minimum=None, maximum=None) -> int:
        value = config.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{name}: must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name}: must be at most {maximum}")
        return value

    def only(self, config: dict, *names: str) -> None:
        """Refuse fields other than `names` (typos fail loudly)."""
        for key in config:
            if key not in names:
                raise ConfigError(f"{key}: unknown field (expected one of {', '.join(names)})")


def upstreams() -> List[str]:
    """The configuration's upstream names, for checking a config in
    `configure`."""
    return list(_host.module("gateway").upstreams())


state = _State()
context = _Context()
span = _Span()
log = _Log()
metrics = _Metrics()
clock = _Clock()
config = _Config()
