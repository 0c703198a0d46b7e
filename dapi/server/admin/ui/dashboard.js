// The dapi operator dashboard: polls the admin API's JSON and draws it. No build step, no dependencies.
// Everything from the server is put into the page as text (textContent), never parsed as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const params = new URLSearchParams(location.search);
// ?refresh=<ms> polls faster or slower than once a second (never below 200 ms).
const REFRESH = Math.max(200, Number(params.get("refresh")) || 1000);
const HISTORY_EVERY = 10;  // history is refreshed every tenth poll

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, String(value));
    else if (key === "title") node.title = value;
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children) node.append(child);
  return node;
}

function text(id, value) {
  const node = document.getElementById(id);
  if (node) node.textContent = value === null || value === undefined ? "–" : String(value);
}

function notAvailable(what) {
  return el("p", { class: "na" }, `${what}: not available (this daemon does not report it yet)`);
}

async function getJson(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// -- chain and epoch -------------------------------------------------------------------------------

function renderChain(doc) {
  const c = doc.chain;
  text("account", doc.account_address + (doc.read_only ? " (read-only)" : ""));
  text("height", c.height);
  text("block-age", c.seconds_since_last_block === null ? null : `${c.seconds_since_last_block.toFixed(1)} s ago`);
  text("sync", c.synced ? (c.websocket_connected ? "synced" : "synced, websocket down") : "catching up");
  text("epoch", c.epoch);
  text("effective-epoch", c.effective_epoch);
  text("phase", c.phase);
  const decisions = Object.entries(c.policy.decisions).map(([word, n]) => `${n} ${word}`).join(", ");
  text("policy", c.policy.command ? `${c.policy.command}${decisions ? ": " + decisions : ""}` : null);
  renderPhaseBar(c.phase_bar, c.epoch);
  const p = c.epoch_params;
  text("params", p ? `epoch length ${p.epoch_length} · PoC ${p.poc_stage_duration} + exchange ${p.poc_exchange_duration}`
    + ` · validation delay ${p.poc_validation_delay} + ${p.poc_validation_duration}`
    + ` · new validators after ${p.set_new_validators_delay} blocks` : "");
}

function renderPhaseBar(bar, epoch) {
  const holder = document.getElementById("phase-bar");
  const list = document.getElementById("boundaries");
  if (!bar) { holder.replaceChildren(); list.replaceChildren(); return; }
  holder.dataset.position = bar.position;
  holder.dataset.start = bar.start;
  holder.dataset.end = bar.end;
  holder.dataset.epoch = epoch;
  const span = Math.max(1, bar.end - bar.start);
  const x = (h) => ((Math.min(Math.max(h, bar.start), bar.end) - bar.start) / span) * 1000;
  const drawing = svg("svg", { viewBox: "0 0 1000 46", preserveAspectRatio: "none", role: "img",
    "aria-label": `blocks ${bar.start} to ${bar.end}, now ${bar.position}` });
  for (const s of bar.segments) {
    drawing.append(svg("rect", { class: `seg ${s.phase}`, x: x(s.start), y: 12, width: Math.max(0, x(s.end) - x(s.start)), height: 22 },
      svg("title", {}, document.createTextNode(`${s.phase}: blocks ${s.start}–${s.end - 1}`))));
  }
  for (const b of bar.boundaries) drawing.append(svg("line", { class: "tick", x1: x(b.height), x2: x(b.height), y1: 12, y2: 34 }));
  const at = x(bar.position + 0.5);
  drawing.append(svg("path", { class: "marker", d: `M${at - 6},0 L${at + 6},0 L${at},11 Z` }));
  drawing.append(svg("rect", { class: "marker", x: at - 1, y: 12, width: 2, height: 34 }));
  holder.replaceChildren(drawing);
  let nextMarked = false;
  list.replaceChildren(...bar.boundaries.map((b) => {
    const isNext = !b.passed && !nextMarked;
    nextMarked = nextMarked || isNext;
    const away = b.passed ? "" : ` (in ${b.height - bar.position})`;
    return el("li", { class: b.passed ? "passed" : isNext ? "next" : "" }, `${b.name} ${b.height}${away}`);
  }));
}

// -- nodes -----------------------------------------------------------------------------------------

function mark(label, on) {
  return el("span", { class: on ? "mark on" : "mark", title: on ? `${label} granted` : `no ${label}` }, label);
}

async function setEnabled(node, enable) {
  const verb = enable ? "enable" : "disable";
  const effect = enable ? "It takes part again from the next epoch (at once during the Inference phase)."
    : "It keeps its duties until the epoch ends, then stops.";
  if (!window.confirm(`${verb[0].toUpperCase() + verb.slice(1)} ML node ${node.id}? ${effect}`)) return;
  const response = await fetch(`/admin/v1/nodes/${encodeURIComponent(node.id)}/${verb}`, {
    method: "POST", credentials: "same-origin", headers: { "X-Dapi-UI": "1" },
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    window.alert(`Could not ${verb} ${node.id}: ${body.error || response.status}`);
  }
  poll();
}

function renderNodes(nodes) {
  const body = document.querySelector("#nodes tbody");
  if (!nodes.length) { body.replaceChildren(el("tr", {}, el("td", { colSpan: 11, class: "na" }, "no ML nodes registered"))); return; }
  body.replaceChildren(...nodes.map((n) => {
    const model = n.served_model || n.epoch_models.join(", ") || "–";
    const failure = n.failure_reason
      ? el("span", { class: "fail" }, n.failure_reason + (n.retry_in_seconds !== null ? ` · retry in ${n.retry_in_seconds.toFixed(1)} s` : ""))
      : "";
    const button = el("button", { class: n.enabled ? "disable" : "enable", type: "button" }, n.enabled ? "Disable" : "Enable");
    button.addEventListener("click", () => setEnabled(n, !n.enabled));
    const admin = el("span", {}, el("span", { class: "admin-state" }, n.enabled ? "enabled " : `disabled (epoch ${n.admin_epoch}) `), button);
    return el("tr", { "data-node": n.id },
      el("td", { class: "mono id" }, n.id),
      el("td", {}, n.node_num),
      el("td", { class: `status intended ${n.intended_status}` }, n.intended_status),
      el("td", { class: `status current ${n.current_status}` }, n.current_status),
      el("td", { class: "poc" }, n.poc_current_status === n.poc_intended_status ? n.poc_current_status : `${n.poc_current_status} → ${n.poc_intended_status}`),
      el("td", { class: "model mono" }, model),
      el("td", { class: "slots" }, mark("PRE_POC_SLOT", n.pre_poc_slot), mark("POC_SLOT", n.poc_slot)),
      el("td", { class: "why small" }, n.decision ? `${n.decision}: ${n.decision_reason}` : "–"),
      el("td", { class: "failure small" }, failure),
      el("td", {}, `${n.in_flight} / ${n.max_concurrent}`),
      el("td", { class: "admin" }, admin));
  }));
}

// -- work landing ----------------------------------------------------------------------------------

function totals(id, pairs) {
  document.getElementById(id).replaceChildren(...pairs.map(([label, value]) => el("span", {}, `${label} `, el("b", {}, value))));
}

function renderPoc(poc) {
  totals("poc-totals", [["accepted", poc.accepted], ["landed", poc.landed], ["dead-lettered", poc.dead_lettered],
    ["validated", poc.validated], ["refused", poc.refused], ["late", poc.late]]);
  const body = document.querySelector("#stages tbody");
  body.replaceChildren(...(poc.stages.length ? poc.stages.map((s) => el("tr", {},
    el("td", {}, s.stage), el("td", {}, s.accepted), el("td", {}, s.landed), el("td", { class: s.dead_lettered ? "fail" : "" }, s.dead_lettered)))
    : [el("tr", {}, el("td", { colSpan: 4, class: "na" }, "no PoC stage seen since start"))]));
}

function roleBlock(name, role) {
  if (!role) return el("p", {}, `${name}: `, el("span", { class: "na" }, "not available"));
  const failed = Object.entries(role.failed || {});
  const failedTotal = failed.reduce((sum, [, n]) => sum + n, 0);
  const latency = role.p50_ms === null || role.p50_ms === undefined ? "–" : `p50 ${role.p50_ms.toFixed(0)} ms · p99 ${(role.p99_ms ?? 0).toFixed(0)} ms`;
  return el("div", {}, el("p", {}, el("b", {}, name), ` ok ${role.ok} · failed ${failedTotal} · ${latency}`),
    failed.length ? el("ul", { class: "small" }, ...failed.map(([reason, n]) => el("li", {}, `${reason}: ${n}`))) : null);
}

function renderInference(inference, validation) {
  const holder = document.getElementById("inference");
  const serving = inference && inference.serving === false
    ? el("p", { class: "na" }, "the transfer agent is not running (see /v1/status)") : null;
  holder.replaceChildren(inference ? el("div", {}, serving, roleBlock("as transfer agent", inference.ta), roleBlock("as executor", inference.executor))
    : notAvailable("inference"));
  const v = document.getElementById("validation");
  const off = validation && validation.enabled === false
    ? el("p", { class: "na" }, "not validating: read-only daemon (no signer key)") : null;
  v.replaceChildren(validation ? el("div", {}, off, el("div", { class: "totals" }, ...["required", "selected", "pending", "sent", "landed", "failed"]
    .map((k) => el("span", {}, `${k} `, el("b", {}, validation[k] ?? 0))))) : notAvailable("validations"));
}

function renderOutbox(outbox) {
  if (!outbox) { document.getElementById("outbox-totals").replaceChildren(notAvailable("outbox")); return; }
  const c = outbox.counts;
  totals("outbox-totals", [["depth", outbox.depth], ["pending", c.pending ?? 0], ["sent", c.sent ?? 0], ["landed", c.landed ?? 0], ["dead", c.dead ?? 0]]);
  const body = document.querySelector("#dead-letters tbody");
  body.replaceChildren(...(outbox.dead_letters.length ? outbox.dead_letters.map((d) => el("tr", {},
    el("td", {}, d.id), el("td", { class: "mono small" }, d.type + (d.poc_stage !== null ? ` (stage ${d.poc_stage})` : "")),
    el("td", { class: "fail" }, `${d.codespace || "-"}/${d.code}`), el("td", {}, d.stage), el("td", { class: "small" }, d.log)))
    : [el("tr", {}, el("td", { colSpan: 5, class: "na" }, "no dead letters"))]));
}

// -- charts ----------------------------------------------------------------------------------------

function noData(holder, missing) {
  holder.replaceChildren(el("p", { class: "na" }, missing || "no data yet"));
}

function barChart(id, labels, values, altFlags, missing) {
  const holder = document.getElementById(id);
  const known = values.filter((v) => v !== null && v !== undefined);
  if (!known.length) { noData(holder, missing); return; }
  const max = Math.max(1, ...known);
  const w = 300, h = 90, n = values.length, gap = 4, bw = Math.max(2, (w - gap * (n + 1)) / n);
  const drawing = svg("svg", { viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none", role: "img" });
  values.forEach((v, i) => {
    const x = gap + i * (bw + gap);
    const bh = v === null || v === undefined ? 0 : (v / max) * (h - 24);
    const cls = v === null || v === undefined ? "bar dim" : altFlags && altFlags[i] ? "bar alt" : "bar";
    drawing.append(svg("rect", { class: cls, x, y: h - 12 - bh, width: bw, height: Math.max(bh, 1) },
      svg("title", {}, document.createTextNode(`${labels[i]}: ${v ?? "n/a"}`))));
    drawing.append(svg("text", { class: "axis", x: x + bw / 2, y: h - 2, "text-anchor": "middle" }, document.createTextNode(labels[i])));
    if (v !== null && v !== undefined) drawing.append(svg("text", { class: "axis", x: x + bw / 2, y: h - 14 - bh, "text-anchor": "middle" }, document.createTextNode(String(v))));
  });
  holder.replaceChildren(drawing);
}

function lineChart(id, series, missing) {
  const holder = document.getElementById(id);
  const all = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
  if (!all.length) { noData(holder, missing); return; }
  const max = Math.max(...all) || 1;
  const w = 300, h = 90, n = Math.max(2, series[0].values.length);
  const drawing = svg("svg", { viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none", role: "img" });
  series.forEach((s, k) => {
    const points = s.values.map((v, i) => (v === null || v === undefined ? null : `${(i / (n - 1)) * w},${h - 4 - (v / max) * (h - 16)}`)).filter(Boolean);
    if (points.length) drawing.append(svg("polyline", { class: k ? "line alt" : "line", points: points.join(" ") }));
  });
  drawing.append(svg("text", { class: "axis", x: 2, y: 10 }, document.createTextNode(`max ${Number(max.toFixed(2))}`)));
  holder.replaceChildren(drawing);
}

function renderHistory(history) {
  const epochs = history.epochs;
  const labels = epochs.map((e) => String(e.epoch));
  barChart("chart-weight", labels, epochs.map((e) => e.weight));
  // The amount the chain paid when the daemon reads it; else 1 for a claim sent (green once it landed).
  const paid = epochs.some((e) => e.reward !== null && e.reward !== undefined);
  barChart("chart-claims", labels, epochs.map((e) => (paid ? e.reward ?? null : e.claim_sent ? 1 : 0)),
    epochs.map((e) => e.claim_landed));
  const absent = "not available (this daemon does not report it yet)";
  const noValidations = epochs.every((e) => !e.validations);
  barChart("chart-validations", labels, epochs.map((e) => (e.validations ? e.validations.landed ?? 0 : null)), null,
    noValidations && !lastDoc?.validation ? absent : null);
  const points = history.points;
  const noInference = !lastDoc?.inference;
  lineChart("chart-rps", [{ values: points.map((p) => p.requests_per_s) }], noInference ? absent : null);
  lineChart("chart-latency", [{ values: points.map((p) => p.p50_ms) }, { values: points.map((p) => p.p99_ms) }],
    noInference ? absent : null);
  lineChart("chart-batches", [{ values: points.map((p) => p.batches_per_s) }]);
}

// -- polling ---------------------------------------------------------------------------------------

let polls = 0;
let busy = false;
let lastDoc = null;

async function poll() {
  if (busy) return;
  busy = true;
  const conn = document.getElementById("conn");
  try {
    const doc = await getJson("/admin/v1/dashboard");
    lastDoc = doc;
    renderChain(doc);
    renderNodes(doc.nodes);
    renderPoc(doc.poc);
    renderInference(doc.inference, doc.validation);
    renderOutbox(doc.outbox);
    if (polls % HISTORY_EVERY === 0) renderHistory(await getJson("/admin/v1/dashboard/history"));
    polls += 1;
    conn.className = "pill ok";
    conn.textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.polls = String(polls);
  } catch (error) {
    conn.className = "pill bad";
    conn.textContent = `no answer: ${error.message}`;
  } finally {
    busy = false;
  }
}

poll();
setInterval(poll, REFRESH);
