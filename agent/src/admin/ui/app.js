// The lane map: polls /lanes every 2 s and draws each service's lanes side
// by side. Rates are computed here from the counters of successive polls.
// `?q=TEXT` in the address fills the filter, so a filtered view can be shared.
"use strict";

const POLL_MS = 2000;
// Rates are taken over (at most) this window of past polls.
const RATE_WINDOW_MS = 10000;

const state = {
  query: new URLSearchParams(location.search).get("q") || "",
  // Past polls: { time: ms, totals: Map("svc|tag|decision" -> total, "svc|tag|decision|5xx" -> total) }.
  samples: [],
  last: null,
};

// A DOM element: h("div", {class: "x"}, child, "text", ...). Text is always
// set as text, never parsed as HTML.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const laneName = (tag) => (tag === null ? "base" : tag === "_other" ? "other tags" : tag);
const serviceId = (s) => `${s.namespace}/${s.name}`;
const counterKey = (svc, tag, decision) => `${svc}|${tag === null ? "" : tag}|${decision}`;

// Hues far enough apart to tell lanes apart at a glance.
const LANE_HUES = [217, 152, 28, 262, 322, 190, 4, 45, 95, 240];

// A lane's color: a hue picked by its tag, the same in every service.
function laneHue(tag) {
  if (tag === null || tag === "_other") return null;
  let hash = 0;
  for (const c of tag) hash = (hash * 31 + c.codePointAt(0)) >>> 0;
  return LANE_HUES[hash % LANE_HUES.length];
}

function formatCount(n) {
  return n.toLocaleString("en-US");
}

function formatRate(r) {
  if (r === null) return "–";
  if (r === 0) return "0";
  if (r < 10) return r.toFixed(1);
  return Math.round(r).toLocaleString("en-US");
}

// Totals of one poll, by service, lane and decision (and their 5xx).
function totalsOf(map) {
  const totals = new Map();
  const add = (k, n) => totals.set(k, (totals.get(k) || 0) + n);
  for (const s of map.services) {
    for (const lane of s.lanes) {
      for (const c of lane.requests) {
        const key = counterKey(serviceId(s), lane.tag, c.decision);
        add(key, c.total);
        if (c.status_class === "5xx") add(key + "|5xx", c.total);
      }
    }
  }
  return totals;
}

function remember(map) {
  const sample = { time: map.time_ms, totals: totalsOf(map) };
  state.samples.push(sample);
  // Keep one sample at or beyond the window as the base of the rates.
  while (state.samples.length > 2 && sample.time - state.samples[1].time >= RATE_WINDOW_MS) {
    state.samples.shift();
  }
}

// Requests per second for a counter key, or null before two polls a second apart.
function rate(key) {
  const newest = state.samples[state.samples.length - 1];
  const oldest = state.samples[0];
  if (!newest || newest === oldest) return null;
  const dt = (newest.time - oldest.time) / 1000;
  if (dt < 1) return null;
  const diff = (newest.totals.get(key) || 0) - (oldest.totals.get(key) || 0);
  // A counter that went back: the agent restarted.
  return diff < 0 ? null : diff / dt;
}

function matches(text, q) {
  return text.toLowerCase().includes(q);
}

// What of a service the filter leaves: null (nothing), or its lanes, each
// with the endpoints to show.
function filtered(s, q) {
  const all = s.lanes.map((lane) => ({ lane, endpoints: lane.endpoints }));
  if (!q) return all;
  // A service matches by name and address (not its policy: `gray` should
  // find gray lanes, not every service with a gray canary).
  const serviceText = [serviceId(s), ...s.vips].join(" ");
  if (matches(serviceText, q)) return all;
  const kept = [];
  for (const { lane, endpoints } of all) {
    if (matches(laneName(lane.tag), q)) {
      kept.push({ lane, endpoints });
      continue;
    }
    const eps = endpoints.filter((e) => matches([e.name || "", e.ip, e.state].join(" "), q));
    if (eps.length) kept.push({ lane, endpoints: eps });
  }
  return kept.length ? kept : null;
}

function renderPolicy(s) {
  const chips = s.policy.map((p) =>
    h("span", { class: "chip policy", "data-policy": p.name }, h("b", {}, p.name), " ", p.value),
  );
  return h(
    "div",
    { class: "policy-row" },
    h("span", { class: "label" }, "policy"),
    chips.length ? chips : h("span", { class: "muted" }, "none: tags and base only"),
    s.policy_error
      ? h("div", { class: "policy-error" }, "policy error (the last good policy is in force): ", s.policy_error)
      : null,
  );
}

function renderEndpoint(e) {
  const ports = e.ports.join(", ");
  const weight = e.state === "warming" ? `${Math.round(e.weight * 100)}%` : null;
  return h(
    "li",
    { class: "endpoint", "data-endpoint": e.ip },
    h("span", { class: `badge state-${e.state}` }, e.state),
    h(
      "span",
      { class: "ep-id" },
      h("span", { class: "ep-name" }, e.name || e.ip),
      h("span", { class: "ep-addr" }, e.name ? `${e.ip} :${ports}` : `:${ports}`),
    ),
    h(
      "span",
      { class: "ep-load num", title: "requests in flight" + (weight ? "; warm-up weight" : "") },
      weight ? h("span", { class: "warm" }, weight) : null,
      h("span", {}, `${e.in_flight}`),
      h("span", { class: "unit" }, " in flight"),
    ),
  );
}

function renderTraffic(s, lane) {
  const svc = serviceId(s);
  const decisions = [...new Set(lane.requests.map((c) => c.decision))];
  if (!decisions.length) return h("p", { class: "muted small" }, "no requests yet");
  const rows = decisions.map((d) => {
    const key = counterKey(svc, lane.tag, d);
    const total = lane.requests.filter((c) => c.decision === d).reduce((n, c) => n + c.total, 0);
    const errors = lane.requests
      .filter((c) => c.decision === d && c.status_class === "5xx")
      .reduce((n, c) => n + c.total, 0);
    const errorRate = rate(key + "|5xx");
    return h(
      "tr",
      { "data-decision": d },
      h("td", {}, h("span", { class: `decision decision-${d}` }, d)),
      h("td", { class: "num rate" }, formatRate(rate(key))),
      h("td", { class: "num total" }, formatCount(total)),
      h(
        "td",
        { class: "num errors" + (errors ? " bad" : "") },
        errors ? `${formatCount(errors)} 5xx` + (errorRate ? ` (${formatRate(errorRate)}/s)` : "") : "",
      ),
    );
  });
  return h(
    "table",
    { class: "traffic" },
    h("thead", {}, h("tr", {}, h("th", {}, "decision"), h("th", { class: "num" }, "req/s"), h("th", { class: "num" }, "total"), h("th", {}, ""))),
    h("tbody", {}, rows),
  );
}

function laneRate(s, lane) {
  const rates = [...new Set(lane.requests.map((c) => c.decision))].map((d) => rate(counterKey(serviceId(s), lane.tag, d)));
  if (!rates.length) return 0;
  if (rates.some((r) => r === null)) return null;
  return rates.reduce((a, b) => a + b, 0);
}

function renderLane(s, lane, endpoints) {
  const hue = laneHue(lane.tag);
  const badges = [];
  if (lane.mode) badges.push(h("span", { class: `badge mode-${lane.mode}` }, lane.mode));
  if (lane.canary_percent !== null && lane.canary_percent !== undefined) {
    badges.push(h("span", { class: "badge canary", "data-canary": lane.canary_percent }, `canary ${lane.canary_percent}%`));
  }
  for (const m of lane.matched_by) badges.push(h("span", { class: "badge match", title: "match rule" }, `match ${m}`));
  let body;
  if (endpoints.length) {
    body = h("ul", { class: "endpoints" }, endpoints.map(renderEndpoint));
  } else if (lane.endpoints.length) {
    body = null;
  } else {
    const why =
      lane.tag === null
        ? "no base endpoint: untagged requests go to every endpoint"
        : lane.tag === "_other"
          ? "tags this service does not know"
          : lane.mode === "strict"
            ? "no endpoint: requests get 503 (strict)"
            : "no endpoint: requests fall back to base";
    body = h("p", { class: "muted small no-endpoints" }, why);
  }
  const total = laneRate(s, lane);
  const card = h(
    "article",
    { class: "lane" + (hue === null ? " neutral" : ""), "data-lane": `${serviceId(s)} ${laneName(lane.tag)}` },
    h(
      "header",
      {},
      h("h3", {}, laneName(lane.tag)),
      h("span", { class: "lane-rate num", title: "requests per second in this lane" }, formatRate(total), h("span", { class: "unit" }, " req/s")),
    ),
    badges.length ? h("div", { class: "badges" }, badges) : null,
    body,
    renderTraffic(s, lane),
  );
  // Through the CSSOM: the page's Content-Security-Policy allows no inline style attribute.
  if (hue !== null) card.style.setProperty("--lane-hue", String(hue));
  return card;
}

function renderService(s, lanes) {
  const ports = s.ports.map((p) => `${p.port}→${p.target_port} ${p.protocol}`);
  return h(
    "section",
    { class: "service", "data-service": serviceId(s) },
    h(
      "header",
      {},
      h("h2", {}, h("span", { class: "ns" }, `${s.namespace}/`), s.name),
      h("span", { class: "addr" }, s.vips.join(", ")),
      ports.map((p) => h("span", { class: "chip port" }, p)),
    ),
    renderPolicy(s),
    h("div", { class: "lanes" }, lanes.map(({ lane, endpoints }) => renderLane(s, lane, endpoints))),
  );
}

function render() {
  const map = state.last;
  if (!map) return;
  const q = state.query.trim().toLowerCase();
  const main = document.getElementById("services");
  const shown = [];
  for (const s of map.services) {
    const lanes = filtered(s, q);
    if (lanes) shown.push(renderService(s, lanes));
  }
  if (!shown.length) {
    shown.push(h("p", { class: "empty" }, map.services.length ? `Nothing matches “${state.query}”.` : "The agent knows no service yet."));
  }
  main.replaceChildren(...shown);
  document.getElementById("agent").replaceChildren(
    h("span", {}, `agent ${map.version}`),
    h("span", { class: "sep" }, "·"),
    h("span", {}, `${map.mode} mode`),
    h("span", { class: "sep" }, "·"),
    h("span", { class: "mono" }, map.source),
    h("span", { class: "sep" }, "·"),
    h("span", {}, `${map.services.length} services`),
  );
  document.getElementById("updated").textContent = `updated ${new Date(map.time_ms).toLocaleTimeString("en-GB")}`;
  document.body.dataset.polls = String(state.samples.length);
}

async function poll() {
  const problem = document.getElementById("problem");
  try {
    const answer = await fetch("/lanes", { cache: "no-store" });
    if (!answer.ok) throw new Error(`/lanes answered ${answer.status}`);
    const map = await answer.json();
    state.last = map;
    remember(map);
    problem.hidden = true;
    render();
  } catch (e) {
    problem.textContent = `Cannot read the agent's lanes (${e.message}); retrying every ${POLL_MS / 1000} s. The last view is kept.`;
    problem.hidden = false;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function init() {
  const input = document.getElementById("q");
  input.value = state.query;
  input.addEventListener("input", () => {
    state.query = input.value;
    const url = new URL(location.href);
    if (state.query) url.searchParams.set("q", state.query);
    else url.searchParams.delete("q");
    history.replaceState(null, "", url);
    render();
  });
  poll();
}

init();
