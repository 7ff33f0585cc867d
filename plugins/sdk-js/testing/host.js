// The FakeHost the fakes in `fakes/` answer from.
let current;

export function host() {
  if (!current) throw new Error("create a FakeHost before calling the policy");
  return current;
}

const stateError = (kind) => {
  const e = new Error(kind);
  e.payload = kind;
  return e;
};

/** State with TTLs on a clock that moves only with `advance`, and records of logs and metrics. */
export class FakeHost {
  constructor({ nowMs = 1_700_000_000_000, upstreams = ["default"] } = {}) {
    this.nowMs = nowMs;
    this.upstreams = [...upstreams].sort();
    this.entries = new Map();
    this.version = 0n;
    this.contextValues = new Map();
    // What the plugin added to its span: ["attribute", key, value] or ["event", name, attributes].
    this.spanNotes = [];
    this.logs = [];
    this.counters = new Map();
    this.unavailable = false;
    const self = this;
    this.state = {
      get(k) { self.#check(); const e = self.#live(k); return e && { value: e.value, version: e.version }; },
      set(k, v, t) { self.#check(); return self.#write(k, v, t === undefined ? undefined : self.nowMs + Number(t)); },
      compareAndSwap(k, expected, v, t) {
        self.#check();
        const e = self.#live(k);
        if ((e?.version) !== expected) return { tag: "conflict", val: e && { value: e.value, version: e.version } };
        return { tag: "swapped", val: this.set(k, v, t) };
      },
      incrementWithTtl(k, d, t) {
        self.#check();
        const e = self.#live(k);
        let current = 0n;
        let expires = t === undefined ? undefined : self.nowMs + Number(t);
        if (e) {
          if (e.value.length !== 8) throw stateError("not-a-counter");
          current = new DataView(e.value.buffer, e.value.byteOffset, 8).getBigInt64(0, true);
          expires = e.expires;
        }
        const value = current + d;
        const buf = new Uint8Array(8);
        new DataView(buf.buffer).setBigInt64(0, value, true);
        self.#write(k, buf, expires);
        return { value, ttlMs: expires === undefined ? undefined : BigInt(expires - self.nowMs) };
      },
      delete(k) { self.#check(); const had = !!self.#live(k); self.entries.delete(k); return had; },
    };
    this.context = {
      get: (k) => self.contextValues.get(k),
      set(k, v) {
        let bytes = k.length + v.length, keys = 1;
        for (const [key, value] of self.contextValues) if (key !== k) { keys++; bytes += key.length + value.length; }
        if (keys > 16 || bytes > 4096) return false;
        self.contextValues.set(k, v);
        return true;
      },
    };
    current = this;
  }
  advance(ms) { this.nowMs += ms; }
  newRequest() { this.contextValues.clear(); }
  counter(name, labels, value) {
    const key = JSON.stringify([name, labels]);
    this.counters.set(key, (this.counters.get(key) ?? 0n) + value);
  }
  histogram() {}
  #check() { if (this.unavailable) throw stateError("unavailable"); }
  #live(k) {
    const e = this.entries.get(k);
    if (e && e.expires !== undefined && e.expires <= this.nowMs) { this.entries.delete(k); return undefined; }
    return e;
  }
  #write(k, value, expires) {
    this.version += 1n;
    this.entries.set(k, { value, version: this.version, expires });
    return this.version;
  }
}
