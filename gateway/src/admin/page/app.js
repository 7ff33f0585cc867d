// The admin page: reads /api/overview and renders it. Text only goes in
// through textContent, never as HTML, so nothing the gateway reports (a
// route name, an error message) can run as script.
"use strict";

const tokenKey = "wicket-admin-token";

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(table, cells) {
  const heads = [...document.querySelectorAll(`#${table} thead th`)].map((th) => th.textContent);
  const tr = document.createElement("tr");
  cells.forEach((c, i) => {
    const td = c instanceof Node ? wrap(c) : el("td", c);
    td.dataset.label = heads[i] || "";
    tr.appendChild(td);
  });
  document.querySelector(`#${table} tbody`).appendChild(tr);
}

function wrap(node) {
  const td = document.createElement("td");
  td.appendChild(node);
  return td;
}

function clear(table) {
  document.querySelector(`#${table} tbody`).replaceChildren();
}

function define(list, pairs) {
  const dl = document.getElementById(list);
  dl.replaceChildren();
  for (const [k, v, cls] of pairs) {
    dl.appendChild(el("dt", k));
    dl.appendChild(el("dd", v, cls));
  }
}

function ms(v) {
  return v ? `${v < 1 ? v.toFixed(3) : v.toFixed(1)} ms` : "–";
}

function hook(h) {
  return h.calls ? `${h.calls} · ${ms(h.p50_ms)} · ${ms(h.p99_ms)}` : "–";
}

function failures(p) {
  const all = {};
  for (const h of [p.on_request, p.on_response]) {
    for (const [k, n] of Object.entries(h.failures || {})) all[k] = (all[k] || 0) + n;
  }
  const text = Object.entries(all).map(([k, n]) => `${k} ${n}`).join(", ");
  return el("span", text || "none", text ? "bad" : "muted");
}

function when(msSinceEpoch) {
  return msSinceEpoch ? new Date(msSinceEpoch).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–";
}

function render(o) {
  document.getElementById("summary").textContent =
    `generation ${o.generation} · ${o.routes.length} routes · ${o.plugins.length} plugins · v${o.version}`;
  define("config-list", [
    ["generation", o.generation],
    ["applied", when(o.applied_at_ms)],
    ["digest", (o.config_digest || "").slice(0, 16)],
    ["reloads", `${o.reloads_ok} applied, ${o.reloads_failed} refused`],
    ["last reload", o.last_reload_error ? o.last_reload_error : "ok", o.last_reload_error ? "bad" : "good"],
  ]);

  clear("routes");
  for (const r of o.routes) {
    const match = [r.host || "any host", r.path, r.methods ? r.methods.join(",") : "", r.websocket ? "websocket" : ""]
      .filter(Boolean).join(" ");
    row("routes", [r.name, match, r.plugins.length ? r.plugins.join(" → ") : "none", r.upstream]);
  }

  clear("plugins");
  for (const p of o.plugins) {
    row("plugins", [
      `${p.name} (${p.language}, ${p.failure}, ${p.deadline_ms} ms)`,
      `${p.pools} · ${p.idle_instances} / ${p.instances_per_pool}`,
      hook(p.on_request),
      hook(p.on_response),
      failures(p),
    ]);
  }

  clear("upstreams");
  for (const u of o.upstreams) {
    const eps = u.endpoints || [];
    if (!eps.length) row("upstreams", [u.name, "none", el("span", "no endpoint", "bad")]);
    for (const e of eps) {
      const healthy = e.healthy !== false && !e.ejected;
      const label = [healthy ? "healthy" : "unhealthy", e.ejected ? "ejected" : ""].filter(Boolean).join(", ");
      row("upstreams", [u.name, e.address, el("span", label, healthy ? "good" : "bad")]);
    }
  }

  const s = o.state || {};
  const pairs = [["memory entries", (s.memory || {}).entries ?? "–"]];
  if (s.redis) {
    pairs.push(["redis", `${s.redis.url} (${s.redis.up ? "up" : "down"})`, s.redis.up ? "good" : "bad"]);
    if (s.redis.last_error) pairs.push(["redis error", s.redis.last_error, "bad"]);
    pairs.push(["plugins on redis", Object.keys(s.plugins_on_redis || {}).join(", ") || "none"]);
  }
  define("state-list", pairs);

  clear("errors");
  if (!o.recent_errors.length) row("errors", ["–", "none", "", ""]);
  for (const e of o.recent_errors) {
    const what = e.source === "request" ? `${e.status} ${e.route || "(no route)"}` : "reload";
    row("errors", [e.time, what, `${e.code}: ${e.message}`, e.request_id || ""]);
  }
}

async function load() {
  const headers = {};
  const token = sessionStorage.getItem(tokenKey);
  if (token) headers.Authorization = `Bearer ${token}`;
  const problem = document.getElementById("problem");
  try {
    const resp = await fetch("/api/overview", { headers, cache: "no-store" });
    if (resp.status === 401) {
      document.getElementById("login").hidden = false;
      document.getElementById("main").hidden = true;
      document.getElementById("summary").textContent = "token needed";
      return;
    }
    if (!resp.ok) throw new Error(`the admin API answered ${resp.status}`);
    render(await resp.json());
    document.getElementById("login").hidden = true;
    document.getElementById("main").hidden = false;
    problem.hidden = true;
  } catch (e) {
    problem.textContent = `Cannot read the gateway's state: ${e.message}`;
    problem.hidden = false;
  }
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(tokenKey, document.getElementById("token").value);
  load();
});
setInterval(() => {
  if (document.getElementById("auto").checked) load();
}, 5000);
load();
