"""Unit-testing a policy in plain CPython, without a gateway or a
component: a fake host (state with TTLs on a clock you move, context, log,
metrics) and fake requests.

    from wicket import testing
    host = testing.FakeHost()               # installs itself
    policy = testing.load(DenyHeader, {"header": "x-debug"})
    action = policy.request(testing.request(headers={"x-debug": "1"}))
    assert action.status == 403
"""

import json as _json
from dataclasses import dataclass
from enum import Enum
from types import SimpleNamespace
from typing import Dict, List, Optional

from . import ConfigError, Policy, StateError, _host


@dataclass
class _Header:
    name: str
    value: bytes


class _Level(Enum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


class _Err(Exception):
    def __init__(self, kind):
        super().__init__(kind)
        self.value = SimpleNamespace(name=kind.upper().replace("-", "_"))


class FakeHost:
    """Everything the SDK asks the gateway for. `now_ms` only moves with
    `advance`; `logs` and `counters` record what the policy reported."""

    def __init__(self, now_ms: int = 1_700_000_000_000, upstreams: List[str] = ("default",)):
        self.now_ms = now_ms
        self.entries: Dict[str, tuple] = {}  # key -> (value, version, expires_ms)
        self.version = 0
        self.context_values: Dict[str, bytes] = {}
        self.logs: List[tuple] = []
        self.counters: Dict[tuple, int] = {}
        self.histograms: Dict[tuple, List[float]] = {}
        self.unavailable = False
        self._upstreams = sorted(upstreams)
        host = self
        self.state = SimpleNamespace(
            get=self._get, set=self._set, compare_and_swap=self._cas,
            increment=lambda k, d, t: self._increment(k, d, t).value,
            increment_with_ttl=self._increment, delete=self._delete,
            take_tokens=self._take_tokens)
        self.context = SimpleNamespace(get=self.context_values.get, set=self._context_set)
        # Spans: recorded as (kind, name, value) so a test can assert them.
        self.span_notes = []
        self.span = SimpleNamespace(
            Attribute=lambda k, v: (k, v), recording=lambda: True,
            set_attribute=lambda k, v: host.span_notes.append(("attribute", k, v)),
            add_event=lambda n, a: host.span_notes.append(("event", n, list(a))))
        self.log = SimpleNamespace(Level=_Level, log=lambda lvl, msg: host.logs.append((lvl.name.lower(), msg)))
        self.metrics = SimpleNamespace(
            Label=lambda n, v: (n, v), counter_add=self._counter, histogram_observe=self._histogram)
        self.clock = SimpleNamespace(now_ms=lambda: host.now_ms, monotonic_ns=lambda: host.now_ms * 1_000_000)
        self.gateway = SimpleNamespace(upstreams=lambda: list(host._upstreams))
        _host.install(self)

    def advance(self, ms: int):
        self.now_ms += ms

    def new_request(self):
        """Forget the request context, as a new request would."""
        self.context_values.clear()

    def _live(self, key):
        entry = self.entries.get(key)
        if entry is None or (entry[2] is not None and entry[2] <= self.now_ms):
            self.entries.pop(key, None)
            return None
        return entry

    def _check(self):
        if self.unavailable:
            raise _Err("unavailable")

    def _write(self, key, value, expires):
        self.version += 1
        self.entries[key] = (value, self.version, expires)
        return self.version

    def _get(self, key):
        self._check()
        e = self._live(key)
        return None if e is None else SimpleNamespace(value=e[0], version=e[1])

    def _set(self, key, value, ttl_ms):
        self._check()
        return self._write(key, bytes(value), None if ttl_ms is None else self.now_ms + ttl_ms)

    def _cas(self, key, expected, value, ttl_ms):
        self._check()
        e = self._live(key)
        if (None if e is None else e[1]) != expected:
            class CasResult_Conflict(SimpleNamespace):
                pass
            return CasResult_Conflict(value=None if e is None else SimpleNamespace(value=e[0], version=e[1]))

        class CasResult_Swapped(SimpleNamespace):
            pass
        return CasResult_Swapped(value=self._set(key, value, ttl_ms))

    def _increment(self, key, delta, ttl_ms):
        self._check()
        e = self._live(key)
        if e is None:
            current, expires = 0, None if ttl_ms is None else self.now_ms + ttl_ms
        else:
            if len(e[0]) != 8:
                raise _Err("not-a-counter")
            current, expires = int.from_bytes(e[0], "little", signed=True), e[2]
        value = current + delta
        self._write(key, value.to_bytes(8, "little", signed=True), expires)
        return SimpleNamespace(value=value, ttl_ms=None if expires is None else expires - self.now_ms)

    def _take_tokens(self, key, rate, period_ms, burst, cost):
        # The host's arithmetic (gateway/src/state/bucket.rs): tokens counted
        # in 1/period_ms units, refilled exactly, a refusal writes nothing.
        if min(rate, period_ms, burst) < 1 or not 0 <= cost <= burst or burst * period_ms + rate >= 1 << 53:
            raise _Err("too-large")
        self._check()
        cap, need = burst * period_ms, cost * period_ms
        ttl = max(-(-cap // rate), 1)
        e = self._live(key)
        units, last = cap, self.now_ms
        if e is not None and len(e[0]) == 17 and e[0][0] == 1:
            stored_last = int.from_bytes(e[0][9:17], "little")
            elapsed = min(max(self.now_ms - stored_last, 0), ttl)
            units = min(min(int.from_bytes(e[0][1:9], "little"), cap) + elapsed * rate, cap)
            last = max(stored_last, self.now_ms)
        taken = units >= need
        if taken:
            units -= need
            self._write(key, bytes([1]) + units.to_bytes(8, "little") + last.to_bytes(8, "little"),
                        self.now_ms + ttl)
        return SimpleNamespace(taken=taken, remaining=units // period_ms,
                               reset_ms=-(-(cap - units) // rate),
                               retry_after_ms=0 if taken else -(-(need - units) // rate))

    def _delete(self, key):
        self._check()
        return self.entries.pop(key, None) is not None and True

    def _context_set(self, key, value):
        others = {k: v for k, v in self.context_values.items() if k != key}
        if len(others) + 1 > 16 or sum(len(k) + len(v) for k, v in others.items()) + len(key) + len(value) > 4096:
            return False
        self.context_values[key] = bytes(value)
        return True

    def _counter(self, name, labels, value):
        key = (name, tuple(labels))
        self.counters[key] = self.counters.get(key, 0) + value

    def _histogram(self, name, labels, value):
        self.histograms.setdefault((name, tuple(labels)), []).append(value)


class FakeRequest:
    """The contract's `request` handle, from plain values."""

    def __init__(self, method="GET", path="/", query=None, headers=None, authority="example.test",
                 scheme="http", client="203.0.113.7:40000", route="route", upstream="default",
                 params=None, request_id="0123456789abcdef", trace=None, tls=None,
                 upstream_attempts=0):
        self._method, self._path, self._query = method, path, query
        self._headers = [_Header(n.lower(), v.encode() if isinstance(v, str) else v)
                         for n, v in (headers.items() if isinstance(headers, dict) else headers or [])]
        self._authority, self._scheme, self._route, self._upstream = authority, scheme, route, upstream
        ip, _, port = client.rpartition(":")
        self._ip, self._port = ip.strip("[]"), int(port)
        self._params = dict(params or {})
        self._request_id, self._trace, self._tls = request_id, trace, tls
        self._attempts = upstream_attempts

    def method(self): return self._method
    def scheme(self): return self._scheme
    def authority(self): return self._authority
    def path(self): return self._path
    def query(self): return self._query
    def header(self, name): return next((h.value for h in self._headers if h.name == name), None)
    def header_values(self, name): return [h.value for h in self._headers if h.name == name]
    def headers(self): return list(self._headers)
    def client_addr(self): return f"[{self._ip}]:{self._port}" if ":" in self._ip else f"{self._ip}:{self._port}"
    def client_ip(self): return self._ip
    def client_port(self): return self._port
    def route(self): return self._route
    def param(self, name): return self._params.get(name)
    def upstream(self): return self._upstream
    def request_id(self): return self._request_id
    def upstream_attempts(self): return self._attempts
    def trace_context(self): return self._trace
    def tls(self): return self._tls


class FakeResponseHead:
    def __init__(self, status=200, headers=None):
        self._status = status
        self._headers = [_Header(n.lower(), v.encode() if isinstance(v, str) else v)
                         for n, v in (headers or {}).items()]

    def status(self): return self._status
    def header(self, name): return next((h.value for h in self._headers if h.name == name), None)
    def header_values(self, name): return [h.value for h in self._headers if h.name == name]


def request(**kwargs):
    """A request as a hook receives it (`wicket.Request`)."""
    from . import Request
    return Request(FakeRequest(**kwargs))


def response_head(status=200, headers=None):
    from . import ResponseHead
    return ResponseHead(FakeResponseHead(status, headers))


def load(cls, config: Optional[dict] = None) -> Policy:
    """Configure `cls` as `init` would (a JSON round trip of `config`);
    raises `ConfigError` for a refused config."""
    parsed = _json.loads(_json.dumps({} if config is None else config))
    policy = cls()
    policy.configure(parsed)
    return policy


__all__ = ["FakeHost", "FakeRequest", "FakeResponseHead", "request", "response_head", "load",
           "ConfigError", "StateError"]
