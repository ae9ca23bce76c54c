// The cut-over dashboard: draws GET /plan every 2 s. Plain DOM, no framework, nothing fetched but
// /plan. Every value from the proxy (route names, paths clients sent, mismatch places) goes in
// as text, never as markup. With [admin] token_env set, the token is asked for once and kept in
// this tab's sessionStorage; it travels only in the Authorization header of /plan.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "strangler-admin-token";
const SVG = "http://www.w3.org/2000/svg";

let last = null; // the last report drawn
let lastOk = 0; // when it came
const open = new Set(); // route details the reader opened: kept open across redraws

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "title") e.title = v;
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function duration(secs) {
  secs = Math.max(0, Math.floor(secs));
  const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24, m = Math.floor(secs / 60) % 60, s = secs % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(s).padStart(2, "0")}s`;
  return `${s}s`;
}

function ago(r, unixMs) {
  return unixMs ? duration((r.generated_at_unix_ms - unixMs) / 1000) + " ago" : "-";
}

function total(s) {
  return s.target + s.legacy + s.fallback;
}

function pct(n, t) {
  return t ? `${Math.round((100 * n) / t)}%` : "-";
}

// a split as a bar and words: service / monolith / fallback
function split(s) {
  const t = total(s);
  if (!t) return el("span", { class: "muted" }, "no requests");
  const bar = el("div", { class: "bar", title: `service ${s.target}, monolith ${s.legacy}, fallback ${s.fallback}` });
  for (const k of ["target", "legacy", "fallback"]) {
    if (!s[k]) continue;
    const part = el("span", { class: k });
    part.style.width = `${(100 * s[k]) / t}%`; // CSSOM, not a style attribute: the page's policy allows no inline style
    bar.append(part);
  }
  return el("div", {}, `${pct(s.target, t)} service · ${pct(s.legacy, t)} monolith · ${pct(s.fallback, t)} fallback (${t})`, bar);
}

function modeBadge(route) {
  const kind = route.demoted ? "demoted" : route.mode.split(" ")[0];
  return el("span", { class: `mode ${kind}` }, route.demoted ? `${route.mode} → shadow (demoted)` : route.mode);
}

function alerts(r) {
  const out = [];
  const e = r.config.last_reload_error;
  if (e) {
    out.push(
      el("div", { class: "alert", id: "reload-error" },
        el("strong", {}, `Last reload failed ${ago(r, e.at_unix_secs * 1000)} (${e.trigger}): the previous table keeps serving.`),
        el("pre", {}, e.errors.join("\n\n"))),
    );
  }
  for (const route of r.routes) {
    if (route.breaker.state !== "closed") {
      out.push(el("div", { class: "alert" }, `Breaker ${route.breaker.state} on route ${route.name}: its requests go to the monolith.`));
    }
    if (route.demoted) {
      out.push(el("div", { class: "alert" }, `Route ${route.name} demoted to shadow ${ago(r, route.demoted.at_unix_secs * 1000)}: ${route.demoted.reason}. Reload to re-promote.`));
    }
  }
  return out;
}

function chart(t) {
  const w = 900, h = 180, pad = 28;
  const n = t.target.length;
  const sums = t.target.map((_, i) => t.target[i] + t.legacy[i] + t.fallback[i]);
  const max = Math.max(1, ...sums);
  const s = svg("svg", { class: "chart", viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none", role: "img", "aria-label": "requests by backend" });
  const bw = (w - pad) / n;
  for (const frac of [0, 0.5, 1]) {
    const y = h - pad - frac * (h - pad - 8);
    s.append(svg("line", { x1: pad, x2: w, y1: y, y2: y }));
    s.append(svg("text", { class: "axis", x: 0, y: y + 4 }, String(Math.round(frac * max))));
  }
  for (let i = 0; i < n; i++) {
    let y = h - pad;
    for (const k of ["target", "legacy", "fallback"]) {
      const v = t[k][i];
      if (!v) continue;
      const bh = (v / max) * (h - pad - 8);
      y -= bh;
      const rect = svg("rect", { x: pad + i * bw, y, width: Math.max(1, bw - 1), height: bh, class: k });
      rect.append(svg("title", {}, `${k}: ${v}`));
      s.append(rect);
    }
  }
  const span = n * t.slot_secs;
  for (const back of [span, (2 * span) / 3, span / 3, 0]) {
    const x = pad + ((span - back) / span) * (w - pad);
    s.append(svg("text", { class: "axis", x: Math.min(x, w - 24), y: h - 8 }, back ? `-${Math.round(back / 60)}m` : "now"));
  }
  return s;
}

function overview(r) {
  const o = r.overall;
  return el("section", { id: "overall" },
    el("h2", {}, "Requests by backend",
      el("span", { class: "key target" }), "service",
      el("span", { class: "key legacy" }), "monolith",
      el("span", { class: "key fallback" }), "fallback"),
    el("div", { class: "totals" },
      el("div", {}, el("div", { class: "muted" }, "last minute"), split(o.last_minute)),
      el("div", {}, el("div", { class: "muted" }, "last 5 minutes"), split(o.last_5m)),
      el("div", {}, el("div", { class: "muted" }, "since the proxy started"), split(o.since_start))),
    chart(r.timeline),
    el("div", { class: "muted" }, `${r.timeline.slot_secs}-second slots, last ${duration(r.timeline.slot_secs * r.timeline.target.length)}`));
}

function stages(r) {
  if (!r.stages.length) return null;
  return el("section", { id: "plan" },
    el("h2", {}, "Plan"),
    el("div", { class: "stages" },
      r.stages.map((st) =>
        el("div", { class: `stage ${st.status}`, "data-stage": st.name },
          el("strong", {}, st.name), " ", el("span", { class: "muted" }, st.status.replace("_", " ")),
          el("div", {}, "services: ", st.services.join(", ") || "-"),
          el("div", {}, "routes: ", st.routes.join(", ") || el("span", { class: "muted" }, "none yet")),
          st.routes.length && st.services_without_routes.length ? el("div", { class: "muted" }, "no route yet for ", st.services_without_routes.join(", ")) : null,
          st.routes.length ? split(st.traffic.last_5m) : null))));
}

function parityCell(r, p) {
  if (p.parity === null || p.parity === undefined) return el("span", { class: "muted" }, "nothing compared");
  const cls = p.mismatches ? "bad" : "good";
  return el("div", {},
    el("span", { class: cls }, `${p.parity.toFixed(2)}%`), ` of ${p.compared}`,
    p.mismatches ? ` · ${p.mismatches} mismatched` : "",
    p.errors + p.timeouts ? ` · ${p.errors + p.timeouts} failed` : "",
    el("div", { class: "muted" }, `last ${ago(r, p.last_unix_ms)}`));
}

function routeDetails(r, route) {
  const p = route.parity;
  const parts = [];
  if (p.fields.length) {
    parts.push(el("table", {},
      el("tr", {}, el("th", {}, "mismatching field"), el("th", { class: "num" }, "count"), el("th", {}, "endpoint"), el("th", {}, "example request id")),
      p.fields.map((f) => el("tr", {}, el("td", { class: "mono" }, f.place), el("td", { class: "num" }, f.count), el("td", { class: "mono" }, f.endpoint || "-"), el("td", { class: "mono" }, f.request_id || "-")))));
  }
  if (route.mode_changes.length) {
    parts.push(el("div", {}, "Mode changes: ", route.mode_changes.map((c) => `${c.from || "(added)"} → ${c.to} ${ago(r, c.at_unix_ms)}`).join("; ")));
  }
  if (route.breaker.transitions.length) {
    parts.push(el("div", {}, "Breaker: ", route.breaker.transitions.map((t) => `${t.from} → ${t.to} ${ago(r, t.at_unix_ms)}`).join("; ")));
  }
  if (route.demotions.length) {
    parts.push(el("div", {}, "Demotions: ", route.demotions.map((d) => `${ago(r, d.at_unix_secs * 1000)}: ${d.reason}` + (d.promoted_at_unix_secs ? ` (re-promoted ${ago(r, d.promoted_at_unix_secs * 1000)})` : "")).join("; ")));
  }
  const drops = Object.entries(p.dropped);
  if (drops.length) parts.push(el("div", { class: "muted" }, "Not shadowed: ", drops.map(([k, n]) => `${k} ${n}`).join(", ")));
  if (!parts.length) return null;
  const d = el("details", { "data-details": route.name, open: open.has(route.name) }, el("summary", {}, "details"), parts);
  d.addEventListener("toggle", () => (d.open ? open.add(route.name) : open.delete(route.name)));
  return d;
}

function routes(r) {
  const since = (route) => (route.mode_since_unix_ms ? (route.mode_since_start ? "≥ " : "") + duration((r.generated_at_unix_ms - route.mode_since_unix_ms) / 1000) : "-");
  const rows = r.routes.map((route) =>
    el("tr", { "data-route": route.name, "data-mode": route.demoted ? "demoted" : route.mode.split(" ")[0] },
      el("td", {}, el("strong", {}, route.name), el("div", { class: "muted" }, "→ ", route.target)),
      el("td", {}, route.stage || el("span", { class: "muted" }, "-")),
      el("td", { class: "mode-cell" }, modeBadge(route), el("div", { class: "muted" }, "for ", since(route))),
      el("td", {}, split(route.traffic.last_5m)),
      el("td", {}, parityCell(r, route.parity)),
      el("td", { class: route.breaker.state === "closed" ? "" : "bad" }, route.breaker.state,
        route.breaker.transitions.length ? el("div", { class: "muted" }, `${route.breaker.transitions.length} changes, last ${ago(r, route.breaker.transitions.at(-1).at_unix_ms)}`) : null),
      el("td", {}, routeDetails(r, route))));
  rows.push(el("tr", { "data-route": "(unmatched)" },
    el("td", {}, el("em", {}, "no route"), el("div", { class: "muted" }, "→ default upstream")), el("td", {}), el("td", {}),
    el("td", {}, split(r.unmatched.last_5m)), el("td", {}), el("td", {}), el("td", {})));
  return el("section", { id: "routes" },
    el("h2", {}, "Routes"),
    el("table", {},
      el("tr", {}, ["route", "stage", "mode", "last 5 minutes", "parity", "breaker", ""].map((h) => el("th", {}, h))),
      rows));
}

function monolith(r) {
  const m = r.monolith;
  const rows = m.templates.map((t) =>
    el("tr", {}, el("td", { class: "num" }, t.per_sec.toFixed(2)), el("td", { class: "mono" }, t.template), el("td", {}, t.route || el("span", { class: "muted" }, "no route")), el("td", { class: "num" }, t.since_start)));
  if (m.other.since_start) {
    rows.push(el("tr", {}, el("td", { class: "num" }, m.other.per_sec.toFixed(2)), el("td", { class: "muted" }, `other templates (past the first ${m.capacity} kept)`), el("td", {}), el("td", { class: "num" }, m.other.since_start)));
  }
  return el("section", { id: "monolith" },
    el("h2", {}, "Still answered by the monolith"),
    rows.length
      ? el("table", {}, el("tr", {}, el("th", { class: "num" }, `req/s (last ${duration(m.window_secs)})`), el("th", {}, "endpoint"), el("th", {}, "route"), el("th", { class: "num" }, "since start")), rows)
      : el("p", { class: "muted" }, "Nothing yet."));
}

function draw(r) {
  const hash = r.config.hash.slice(0, 12);
  document.getElementById("table").textContent =
    `table ${hash}` + (r.config.loaded_at_unix_secs ? `, loaded ${ago(r, r.config.loaded_at_unix_secs * 1000)}` : "") +
    (r.started_at_unix_ms ? `, proxy up ${duration((r.generated_at_unix_ms - r.started_at_unix_ms) / 1000)}` : "");
  document.getElementById("main").replaceChildren(...alerts(r), overview(r), ...[stages(r)].filter(Boolean), routes(r), monolith(r));
  document.body.dataset.hash = r.config.hash;
}

function setStatus(ok, text) {
  const s = document.getElementById("status");
  s.className = `status ${ok ? "ok" : "down"}`;
  s.textContent = text;
}

function askToken(message) {
  const form = document.getElementById("token-form");
  form.hidden = false;
  document.getElementById("token-error").textContent = message || "";
  document.getElementById("token").focus();
}

async function refresh() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  try {
    const res = await fetch("/plan", { cache: "no-store", headers: token ? { Authorization: `Bearer ${token}` } : {} });
    if (res.status === 401) {
      if (token) sessionStorage.removeItem(TOKEN_KEY);
      setStatus(false, "token needed");
      askToken(token ? "That token was refused." : "");
      return; // the form's submit starts polling again
    }
    if (!res.ok) throw new Error(`GET /plan answered ${res.status}`);
    last = await res.json();
    lastOk = Date.now();
    document.getElementById("token-form").hidden = true;
    draw(last);
    setStatus(true, `updated ${new Date(lastOk).toLocaleTimeString()}`);
  } catch (e) {
    setStatus(false, `${e.message || e}; ${last ? `showing data from ${duration((Date.now() - lastOk) / 1000)} ago` : "no data yet"}`);
  }
  setTimeout(refresh, REFRESH_MS);
}

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  document.getElementById("token").value = "";
  document.getElementById("token-form").hidden = true;
  refresh();
});

refresh();
