// The service graph page: polls /api/graph, draws it as SVG in layers (callers left, the
// services they call, then the workloads behind them), and shows a clicked node's traffic and
// plugins from /api/node. Plain DOM, no framework; every text from the API goes in as text.
"use strict";

const POLL_MS = 3000;
const SVG = "http://www.w3.org/2000/svg";
const COLUMN = 260;
const ROW = 130;
const MARGIN = 80;
const RADIUS = 18;

let selected = null;

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function html(name, text, parent, cls) {
  const e = document.createElement(name);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}

function rate(r) {
  if (r >= 100) return r.toFixed(0);
  if (r >= 10) return r.toFixed(1);
  return r.toFixed(2);
}

function bytes(r) {
  if (r >= 1 << 20) return (r / (1 << 20)).toFixed(1) + " MiB/s";
  if (r >= 1 << 10) return (r / (1 << 10)).toFixed(1) + " KiB/s";
  return r.toFixed(0) + " B/s";
}

function ms(v) {
  if (v === null || v === undefined) return "–";
  return v >= 100 ? v.toFixed(0) + "ms" : v.toFixed(1) + "ms";
}

// What an edge's label says: its rate, error share and p99 (bytes for TCP).
function edgeText(e) {
  if (e.protocol === "tcp" && e.rate === 0) return bytes(e.tcp_bytes_rate);
  return `${rate(e.rate)} rps · ${e.error_percent.toFixed(1)}% err · p99 ${ms(e.p99_ms)}`;
}

// Layers by longest path from the callers (cycles are cut where they close).
function layers(nodes, edges) {
  const out = new Map(nodes.map((n) => [n.id, []]));
  const indegree = new Map(nodes.map((n) => [n.id, 0]));
  for (const e of edges) {
    if (!out.has(e.source) || !out.has(e.target)) continue;
    out.get(e.source).push(e.target);
    indegree.set(e.target, indegree.get(e.target) + 1);
  }
  const layer = new Map();
  const visit = (id, depth, path) => {
    if (path.has(id) || (layer.get(id) ?? -1) >= depth) return;
    layer.set(id, depth);
    path.add(id);
    for (const next of out.get(id)) visit(next, depth + 1, path);
    path.delete(id);
  };
  for (const n of nodes) if (indegree.get(n.id) === 0) visit(n.id, 0, new Set());
  for (const n of nodes) if (!layer.has(n.id)) visit(n.id, 0, new Set());
  // Order each layer by where its callers are, to keep edges from crossing.
  const columns = [];
  for (const n of nodes) {
    const l = layer.get(n.id);
    (columns[l] = columns[l] || []).push(n);
  }
  const row = new Map();
  columns.forEach((column, l) => {
    const weight = (n) => {
      const from = edges.filter((e) => e.target === n.id && row.has(e.source)).map((e) => row.get(e.source));
      return from.length ? from.reduce((a, b) => a + b, 0) / from.length : Infinity;
    };
    if (l > 0) column.sort((a, b) => weight(a) - weight(b) || a.id.localeCompare(b.id));
    else column.sort((a, b) => (a.idle - b.idle) || a.id.localeCompare(b.id));
    column.forEach((n, i) => row.set(n.id, i));
  });
  return { columns, layer, row };
}

function drawShape(g, kind) {
  if (kind === "service") {
    const r = RADIUS + 3;
    el("polygon", { points: `0,${-r} ${r},${r * 0.75} ${-r},${r * 0.75}`, class: "shape service" }, g);
  } else if (kind === "unknown") {
    el("polygon", { points: `0,${-RADIUS} ${RADIUS},0 0,${RADIUS} ${-RADIUS},0`, class: "shape unknown" }, g);
  } else {
    el("circle", { r: RADIUS, class: "shape workload" }, g);
  }
}

function drawLock(parent, x, y) {
  const g = el("g", { class: "lock", transform: `translate(${x},${y})` }, parent);
  el("path", { d: "M2,5 V3 a3,3 0 0 1 6,0 V5" }, g);
  el("rect", { x: 0.5, y: 5, width: 9, height: 7, rx: 1 }, g);
  return g;
}

function render(doc) {
  const svg = document.getElementById("graph");
  const { columns, layer, row } = layers(doc.nodes, doc.edges);
  const tallest = Math.max(1, ...columns.map((c) => c.length));
  const width = Math.max(800, MARGIN * 2 + (columns.length - 1) * COLUMN + 120);
  const height = Math.max(400, MARGIN * 2 + (tallest - 1) * ROW + 40);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();

  const defs = el("defs", {}, svg);
  for (const health of ["healthy", "degraded", "failure", "idle"]) {
    const m = el("marker", {
      id: `arrow-${health}`, viewBox: "0 0 10 10", refX: 10, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
    }, defs);
    el("path", { d: "M0,0 L10,5 L0,10 z" }, m);
  }

  const position = new Map();
  columns.forEach((column, l) => {
    const top = (height - (column.length - 1) * ROW) / 2;
    column.forEach((n, i) => position.set(n.id, { x: MARGIN + 60 + l * COLUMN, y: top + i * ROW }));
  });

  const edgeLayer = el("g", { class: "edges" }, svg);
  for (const e of doc.edges) {
    const a = position.get(e.source);
    const b = position.get(e.target);
    if (!a || !b) continue;
    const g = el("g", {
      class: `edge ${e.health}`, "data-edge": e.id, "data-health": e.health,
      "data-protocol": e.protocol, "data-rate": e.rate.toFixed(3),
      "data-mtls": e.mtls ? "true" : "false",
    }, edgeLayer);
    // From the source's rim to the target's, curving when they are not level.
    const dx = b.x - a.x;
    const dy = b.y - a.y;
    const len = Math.max(1, Math.hypot(dx, dy));
    const pad = RADIUS + 6;
    const x1 = a.x + (dx / len) * pad, y1 = a.y + (dy / len) * pad;
    const x2 = b.x - (dx / len) * pad, y2 = b.y - (dy / len) * pad;
    const mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
    el("path", {
      d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`,
      "marker-end": `url(#arrow-${e.health})`,
    }, g);
    const title = el("title", {}, g);
    title.textContent = `${e.source} → ${e.target}\n${edgeText(e)}${e.mtls ? `\nmTLS ${e.mtls_percent.toFixed(0)}%` : ""}`;
    const label = el("text", { x: mx, y: my - 6, "text-anchor": "middle", class: "edge-label" }, g);
    label.textContent = edgeText(e);
    if (e.mtls) {
      const lock = drawLock(g, mx - 5, my + 1);
      lock.setAttribute("data-lock", "true");
    }
  }

  const nodeLayer = el("g", { class: "nodes" }, svg);
  for (const n of doc.nodes) {
    const p = position.get(n.id);
    const g = el("g", {
      class: `node ${n.kind}${n.idle ? " idle" : ""}${n.id === selected ? " selected" : ""}`,
      "data-node": n.id, "data-kind": n.kind, transform: `translate(${p.x},${p.y})`,
      tabindex: 0, role: "button",
    }, nodeLayer);
    drawShape(g, n.kind);
    const name = el("text", { y: RADIUS + 16 }, g);
    name.textContent = n.kind === "workload" ? n.name : n.kind === "service" ? n.name : "unknown";
    const sub = el("text", { y: RADIUS + 29, class: "sub" }, g);
    sub.textContent = n.kind === "workload"
      ? [n.namespace, n.version].filter(Boolean).join(" · ")
      : n.kind === "service" ? n.namespace || n.id : "";
    const title = el("title", {}, g);
    title.textContent = `${n.kind} ${n.id}`;
    g.addEventListener("click", () => select(n.id));
    g.addEventListener("keydown", (ev) => { if (ev.key === "Enter") select(n.id); });
  }

  document.getElementById("empty").hidden = doc.edges.length > 0;
  svg.setAttribute("data-nodes", doc.nodes.length);
  svg.setAttribute("data-edges", doc.edges.length);
}

function status(doc, error) {
  const s = document.getElementById("status");
  if (error) {
    s.className = "error";
    s.textContent = `cannot reach the control plane: ${error}`;
    return;
  }
  const failing = doc.scrapes.filter((p) => p.error);
  s.className = failing.length ? "error" : "";
  const parts = [
    `${doc.nodes.length} nodes, ${doc.edges.length} edges`,
    `rates over the last ${doc.window_seconds}s`,
    `${doc.scrapes.length} proxies scraped`,
    `updated ${new Date().toLocaleTimeString()}`,
  ];
  if (failing.length) parts.push(`${failing.length} unreachable: ${failing.map((p) => `${p.proxy} (${p.error})`).join(", ")}`);
  s.textContent = parts.join(" · ");
}

function trafficTable(parent, title, edges, other) {
  html("h3", title, parent);
  if (!edges.length) {
    html("p", "none in the window", parent, "meta");
    return;
  }
  const table = html("table", null, parent);
  const head = html("tr", null, table);
  for (const h of [other, "rps", "err", "p99", ""]) html("th", h, head);
  for (const e of edges) {
    const tr = html("tr", null, table);
    tr.setAttribute("data-traffic", e.id);
    const who = html("td", null, tr);
    html("span", null, who, `dot ${e.health}`);
    who.append(" " + (other === "from" ? e.source : e.target));
    html("td", e.protocol === "tcp" && e.rate === 0 ? bytes(e.tcp_bytes_rate) : rate(e.rate), tr, "num");
    html("td", e.error_percent.toFixed(1) + "%", tr, "num");
    html("td", ms(e.p99_ms), tr, "num");
    html("td", e.mtls ? "mTLS" : e.protocol, tr);
  }
}

function showDetails(d) {
  const panel = document.getElementById("panel");
  const box = document.getElementById("details");
  box.replaceChildren();
  panel.hidden = false;
  panel.setAttribute("data-panel-node", d.node.id);
  const n = d.node;
  html("h2", n.kind === "unknown" ? "unknown" : n.name, box);
  const meta = [n.kind, n.namespace && `namespace ${n.namespace}`, n.app && `app ${n.app}`, n.version && `version ${n.version}`];
  html("p", meta.filter(Boolean).join(" · "), box, "meta");
  if (n.kind === "service") html("p", n.id, box, "meta");
  if (n.proxies && n.proxies.length) html("p", `proxies: ${n.proxies.join(", ")}`, box, "meta");
  trafficTable(box, "Inbound", d.inbound, "from");
  trafficTable(box, "Outbound", d.outbound, "to");
  if (n.kind !== "workload") return;
  html("h3", "Plugins", box);
  const listeners = d.plugins.flatMap((p) => p.listeners.map((l) => ({ proxy: p.proxy, ...l })));
  if (!listeners.length) {
    html("p", "no plugins on its sidecar's listeners", box, "meta");
    return;
  }
  for (const l of listeners) {
    html("p", `${l.listener} (${l.direction})${d.plugins.length > 1 ? " · " + l.proxy : ""}`, box, "meta");
    const ul = html("ul", null, box);
    for (const p of l.plugins) {
      const li = html("li", null, ul);
      li.setAttribute("data-plugin", p.name);
      li.setAttribute("data-plugin-kind", p.kind);
      html("span", p.kind, li, `badge ${p.kind}`);
      li.append(` ${p.name}`);
      const extra = [p.root_id && `root ${p.root_id}`, p.phase && p.phase !== "UNSPECIFIED_PHASE" && p.phase, p.priority && `priority ${p.priority}`];
      if (extra.some(Boolean)) html("span", " " + extra.filter(Boolean).join(", "), li, "meta");
    }
  }
}

async function select(id) {
  selected = id;
  for (const g of document.querySelectorAll(".node")) {
    g.classList.toggle("selected", g.getAttribute("data-node") === id);
  }
  await refreshDetails();
}

async function refreshDetails() {
  if (!selected) return;
  try {
    const response = await fetch(`api/node?id=${encodeURIComponent(selected)}`, { cache: "no-store" });
    if (response.ok) showDetails(await response.json());
  } catch (e) {
    // The next poll tries again.
  }
}

async function poll() {
  try {
    const response = await fetch("api/graph", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const doc = await response.json();
    render(doc);
    status(doc);
    await refreshDetails();
  } catch (e) {
    status(null, e.message);
  }
  setTimeout(poll, POLL_MS);
}

document.getElementById("close").addEventListener("click", () => {
  selected = null;
  document.getElementById("panel").hidden = true;
  for (const g of document.querySelectorAll(".node.selected")) g.classList.remove("selected");
});

// `#node=<id>` opens a node's panel at once (a link to it, or a test).
const wanted = new URLSearchParams(location.hash.slice(1)).get("node");
if (wanted) selected = wanted;
poll();
