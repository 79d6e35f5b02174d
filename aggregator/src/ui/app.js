// Souverix fleet twin: the operator page. Plain JavaScript, no build step.
//
// Data flow: the node list comes from /api/v1/twins (paginated), edges and
// cluster memberships from /api/v1/graph when the aggregator serves it;
// aggregates from /api/v1/fleet, /connectivity and /lifecycle. The live
// stream /api/v1/stream sends one "change" per node and commit; changes are
// queued and applied once per animation frame, aggregates are refreshed
// debounced. The graph is drawn on one canvas with a deterministic layout
// (region/zone boxes, cluster groups inside, nodes on a grid), so 2,000+
// nodes draw in a few milliseconds and nothing is simulated.
"use strict";

(() => {
  const API = "/api/v1";
  const COLOURS = {
    connectivity: {
      "live": "#3ecf6e", "delayed": "#e0b341", "edge-cached": "#f08a24",
      "autonomous": "#b36bf0", "disconnected": "#e5534b", "returning": "#4fb6e8",
      "replaying": "#2f7df6",
    },
    severity: {
      "none": "#4b5a69", "low": "#9bd46b", "medium": "#e0b341", "high": "#f08a24",
      "critical": "#e5534b",
    },
    phase: {
      "provisioning": "#4fb6e8", "active": "#3ecf6e", "maintenance": "#e0b341",
      "decommissioning": "#f08a24", "decommissioned": "#6b7785",
    },
  };
  const EDGE_COLOURS = {
    signaling: "#5fb3f9", media: "#3ecf6e", control: "#e0b341", bypass: "#c678dd",
  };
  const SEVERITY_RANK = { none: 0, low: 1, medium: 2, high: 3, critical: 4 };
  const STATES = Object.keys(COLOURS.connectivity);

  // --- state -----------------------------------------------------------------
  const nodes = new Map(); // id -> node record (see nodeFromTwinRow)
  let edges = []; // {from, to, type}
  let graphAvailable = null; // null: not tried, true/false after
  let layout = { boxes: [], cell: 16, width: 0, height: 0 };
  let selected = null;
  let searchHit = null;
  let changesApplied = 0;
  let streamState = "connecting";
  const pending = new Map(); // node id -> latest NodeChange, applied per frame
  const edgeEnabled = { signaling: true, media: true, control: true, bypass: true };
  let colourBy = "connectivity";

  const $ = (id) => document.getElementById(id);
  const canvas = $("graph");
  const ctx = canvas.getContext("2d");

  function esc(v) {
    return String(v ?? "").replace(/[&<>"']/g, (c) => ({
      "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
    })[c]);
  }

  async function getJSON(path) {
    const r = await fetch(API + path, { headers: { Accept: "application/json" } });
    if (!r.ok) {
      const e = new Error(`${path}: HTTP ${r.status}`);
      e.status = r.status;
      throw e;
    }
    return r.json();
  }

  async function optionalJSON(path) {
    try { return await getJSON(path); } catch (e) { return null; }
  }

  // --- loading ---------------------------------------------------------------

  function primaryGroup(n) {
    const own = (n.clusters || []).filter(
      (c) => c !== `${n.region}-cluster` && c !== `${n.zone}-cluster`);
    return own.length ? own[0] : n.component || "unknown";
  }

  function nodeFromTwinRow(row, old) {
    const n = old || { x: 0, y: 0, el: null };
    n.id = row.node;
    n.component = row.component_type || "";
    n.region = row.region || "";
    n.zone = row.zone || "";
    n.clusters = row.clusters || [];
    n.connectivity = row.connectivity;
    n.phase = row.phase;
    n.severity = row.severity;
    n.actual_version = row.actual_version;
    n.desired_version = row.desired_version;
    n.last_seq = row.last_seq;
    n.group = primaryGroup(n);
    return n;
  }

  async function loadNodes() {
    const rows = [];
    const page = 5000;
    for (let offset = 0; ; offset += page) {
      const r = await getJSON(`/twins?limit=${page}&offset=${offset}`);
      rows.push(...r.twins);
      if (rows.length >= r.total || r.twins.length === 0) break;
    }
    const seen = new Set();
    for (const row of rows) {
      seen.add(row.node);
      nodes.set(row.node, nodeFromTwinRow(row, nodes.get(row.node)));
    }
    for (const id of [...nodes.keys()]) if (!seen.has(id)) nodes.delete(id);

    if (graphAvailable !== false) {
      const g = await optionalJSON("/graph");
      graphAvailable = !!g;
      if (g) {
        edges = (g.edges || []).map((e) => ({ from: e.from, to: e.to, type: e.link_type }));
        for (const gn of g.nodes || []) {
          const n = nodes.get(gn.id);
          if (n && gn.clusters) { n.clusters = gn.clusters; n.group = primaryGroup(n); }
        }
      }
    }
    if (graphAvailable === false) {
      $("graph-hint").textContent =
        "Zones are boxes, clusters are groups inside them; this aggregator serves no /api/v1/graph, so links are not drawn.";
    }
    rebuildIndex();
    computeLayout();
    scheduleDraw();
    renderLocalAggregates();
    publishState();
  }

  // --- hidden machine-readable index -----------------------------------------

  function rebuildIndex() {
    const ul = $("node-index");
    const frag = document.createDocumentFragment();
    const ids = [...nodes.keys()].sort();
    for (const id of ids) {
      const n = nodes.get(id);
      const li = document.createElement("li");
      li.textContent = id;
      li.dataset.node = id;
      n.el = li;
      syncIndexEntry(n);
      frag.appendChild(li);
    }
    ul.replaceChildren(frag);
    $("node-count").textContent = String(nodes.size);
  }

  function syncIndexEntry(n) {
    if (!n.el) return;
    n.el.dataset.state = n.connectivity;
    n.el.dataset.phase = n.phase;
    n.el.dataset.severity = n.severity;
    n.el.dataset.zone = n.zone;
    n.el.dataset.component = n.component;
  }

  let stateTimer = null;
  function publishState() {
    if (stateTimer) return;
    stateTimer = setTimeout(() => {
      stateTimer = null;
      const byState = {};
      for (const n of nodes.values()) byState[n.connectivity] = (byState[n.connectivity] || 0) + 1;
      $("ui-state").textContent = JSON.stringify({
        nodes: nodes.size, edges: edges.length, changes: changesApplied,
        stream: streamState, by_state: byState, selected,
        draw_ms: Math.round(lastDrawMs * 10) / 10,
      });
      document.body.dataset.changes = String(changesApplied);
    }, 200);
  }

  // --- layout ------------------------------------------------------------------

  // Boxes per (region, zone), flowed left to right; inside a zone one group
  // per cluster (or component), nodes on a grid sorted by id. Same input,
  // same picture.
  function computeLayout() {
    const wrap = $("canvas-wrap");
    const width = Math.max(480, wrap.clientWidth - 2);
    const n = Math.max(1, nodes.size);
    const cell = Math.max(7, Math.min(26, Math.floor(Math.sqrt((width * 620) / (n * 2.4)))));
    const zones = new Map();
    for (const node of nodes.values()) {
      const key = `${node.region}\u0000${node.zone}`;
      if (!zones.has(key)) zones.set(key, { region: node.region, zone: node.zone, groups: new Map() });
      const z = zones.get(key);
      if (!z.groups.has(node.group)) z.groups.set(node.group, []);
      z.groups.get(node.group).push(node);
    }
    const zoneList = [...zones.values()].sort((a, b) =>
      (a.region + a.zone).localeCompare(b.region + b.zone));
    const minZoneWidth = Math.max(220, cell * 12);
    const cols = Math.max(1, Math.min(zoneList.length, Math.floor(width / minZoneWidth)));
    const zoneWidth = Math.floor(width / cols);
    const pad = 8, header = 18, groupHeader = 14;
    const boxes = [];
    let x = 0, y = 0, rowHeight = 0, col = 0;
    for (const z of zoneList) {
      const box = { label: `${z.zone}  (${z.region})`, x: x + 4, y: y + 4, w: zoneWidth - 8, h: 0, groups: [] };
      let gy = box.y + header;
      const inner = box.w - 2 * pad;
      const perRow = Math.max(1, Math.floor(inner / cell));
      for (const name of [...z.groups.keys()].sort()) {
        const members = z.groups.get(name).sort((a, b) => a.id.localeCompare(b.id));
        const rows = Math.ceil(members.length / perRow);
        const g = { label: `${name} (${members.length})`, x: box.x + pad / 2, y: gy, w: box.w - pad, h: groupHeader + rows * cell + 4 };
        members.forEach((m, i) => {
          m.x = box.x + pad + (i % perRow) * cell + cell / 2;
          m.y = gy + groupHeader + Math.floor(i / perRow) * cell + cell / 2;
        });
        box.groups.push(g);
        gy += g.h + 4;
      }
      box.h = gy - box.y + 2;
      boxes.push(box);
      rowHeight = Math.max(rowHeight, box.h + 8);
      col += 1;
      if (col === cols) { col = 0; x = 0; y += rowHeight; rowHeight = 0; } else { x += zoneWidth; }
    }
    const height = Math.max(200, y + rowHeight + 4);
    layout = { boxes, cell, width, height };
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.floor(width * dpr);
    canvas.height = Math.floor(height * dpr);
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  }

  // --- drawing -------------------------------------------------------------------

  let drawQueued = false;
  let lastDrawMs = 0;
  function scheduleDraw() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => {
      drawQueued = false;
      const t0 = performance.now();
      draw();
      lastDrawMs = performance.now() - t0;
    });
  }

  function colourOf(n) {
    const palette = COLOURS[colourBy];
    const key = colourBy === "connectivity" ? n.connectivity : colourBy === "severity" ? n.severity : n.phase;
    return palette[key] || "#888";
  }

  function draw() {
    const { boxes, cell, width, height } = layout;
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "top";
    for (const b of boxes) {
      ctx.strokeStyle = "#2a3440";
      ctx.lineWidth = 1;
      ctx.strokeRect(b.x + 0.5, b.y + 0.5, b.w, b.h);
      ctx.fillStyle = "#d8dee6";
      ctx.fillText(b.label, b.x + 6, b.y + 4);
      for (const g of b.groups) {
        ctx.fillStyle = "#1c2530";
        ctx.fillRect(g.x, g.y, g.w, g.h);
        ctx.fillStyle = "#8a96a3";
        ctx.fillText(g.label, g.x + 4, g.y + 2);
      }
    }
    // Edges: one path per type, stroked once.
    ctx.globalAlpha = nodes.size > 500 ? 0.25 : 0.55;
    for (const type of Object.keys(EDGE_COLOURS)) {
      if (!edgeEnabled[type]) continue;
      ctx.beginPath();
      for (const e of edges) {
        if (e.type !== type) continue;
        const a = nodes.get(e.from), b = nodes.get(e.to);
        if (!a || !b) continue;
        ctx.moveTo(a.x, a.y);
        ctx.lineTo(b.x, b.y);
      }
      ctx.strokeStyle = EDGE_COLOURS[type];
      ctx.lineWidth = 1;
      ctx.setLineDash(type === "bypass" ? [4, 3] : []);
      ctx.stroke();
    }
    ctx.setLineDash([]);
    ctx.globalAlpha = 1;
    // Nodes: one path per colour, filled once.
    const r = Math.max(2.5, cell * 0.36);
    const byColour = new Map();
    for (const n of nodes.values()) {
      const c = colourOf(n);
      if (!byColour.has(c)) byColour.set(c, []);
      byColour.get(c).push(n);
    }
    for (const [c, list] of byColour) {
      ctx.beginPath();
      for (const n of list) { ctx.moveTo(n.x + r, n.y); ctx.arc(n.x, n.y, r, 0, Math.PI * 2); }
      ctx.fillStyle = c;
      ctx.fill();
    }
    // Drift ring when colouring by something else.
    if (colourBy !== "severity") {
      ctx.lineWidth = 1.5;
      for (const sev of ["high", "critical"]) {
        ctx.beginPath();
        for (const n of nodes.values()) {
          if (n.severity !== sev) continue;
          ctx.moveTo(n.x + r + 2, n.y);
          ctx.arc(n.x, n.y, r + 2, 0, Math.PI * 2);
        }
        ctx.strokeStyle = COLOURS.severity[sev];
        ctx.stroke();
      }
    }
    for (const [id, colour] of [[searchHit, "#ffffff"], [selected, "#5fb3f9"]]) {
      const n = id && nodes.get(id);
      if (!n) continue;
      ctx.beginPath();
      ctx.arc(n.x, n.y, r + 4, 0, Math.PI * 2);
      ctx.strokeStyle = colour;
      ctx.lineWidth = 2;
      ctx.stroke();
    }
  }

  function renderLegend() {
    const palette = COLOURS[colourBy];
    const parts = Object.entries(palette).map(
      ([k, c]) => `<span><i class="swatch" style="background:${c}"></i>${esc(k)}</span>`);
    const lines = Object.entries(EDGE_COLOURS).map(
      ([k, c]) => `<span><i class="swatch line" style="background:${c}"></i>${esc(k)}</span>`);
    $("legend").innerHTML = parts.join("") + (edges.length ? lines.join("") : "");
  }

  // --- interaction ---------------------------------------------------------------

  function nodeAt(px, py) {
    const r = layout.cell / 2;
    let best = null, bestD = r * r;
    for (const n of nodes.values()) {
      const dx = n.x - px, dy = n.y - py, d = dx * dx + dy * dy;
      if (d <= bestD) { best = n; bestD = d; }
    }
    return best;
  }

  function canvasPoint(ev) {
    const rect = canvas.getBoundingClientRect();
    return [ev.clientX - rect.left, ev.clientY - rect.top];
  }

  canvas.addEventListener("click", (ev) => {
    const n = nodeAt(...canvasPoint(ev));
    if (n) select(n.id);
  });

  let hoverQueued = null;
  canvas.addEventListener("mousemove", (ev) => {
    const first = hoverQueued === null;
    hoverQueued = canvasPoint(ev);
    if (!first) return;
    requestAnimationFrame(() => {
      const [x, y] = hoverQueued;
      hoverQueued = null;
      const n = nodeAt(x, y);
      const tip = $("tooltip");
      if (!n) { tip.hidden = true; return; }
      tip.hidden = false;
      tip.style.left = `${x + 12}px`;
      tip.style.top = `${y + 12}px`;
      tip.innerHTML = `<b>${esc(n.id)}</b><br>${esc(n.component)} · ${esc(n.zone)}<br>` +
        `${esc(n.connectivity)} · ${esc(n.phase)} · drift ${esc(n.severity)}`;
    });
  });
  canvas.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });

  $("colour-by").addEventListener("change", (ev) => {
    colourBy = ev.target.value;
    renderLegend();
    scheduleDraw();
  });
  for (const box of document.querySelectorAll("[data-edge-type]")) {
    box.addEventListener("change", () => {
      edgeEnabled[box.dataset.edgeType] = box.checked;
      scheduleDraw();
    });
  }
  $("search").addEventListener("input", (ev) => {
    const q = ev.target.value.trim();
    searchHit = null;
    if (q) {
      for (const id of nodes.keys()) if (id.includes(q)) { searchHit = id; break; }
    }
    scheduleDraw();
  });
  $("search").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && searchHit) select(searchHit);
  });
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { computeLayout(); scheduleDraw(); }, 150);
  });

  // --- node detail -----------------------------------------------------------------

  function select(id) {
    selected = id;
    $("detail").dataset.node = id;
    scheduleDraw();
    publishState();
    loadDetail(id);
  }

  let detailSeq = 0;
  async function loadDetail(id) {
    const mine = ++detailSeq;
    const enc = encodeURIComponent(id);
    const [twin, ledger, trust, neighbours] = await Promise.all([
      optionalJSON(`/twins/${enc}`),
      optionalJSON(`/twins/${enc}/ledger`),
      optionalJSON(`/twins/${enc}/trust`),
      optionalJSON(`/graph/neighbours/${enc}`),
    ]);
    let events = null;
    if (twin && twin.twin) {
      const from = Math.max(1, (twin.twin.last_seq || 0) - 24);
      events = await optionalJSON(`/twins/${enc}/events?from=${from}&limit=25`);
    }
    if (mine !== detailSeq) return; // a newer selection won
    renderDetail(id, twin, ledger, trust, neighbours, events);
  }

  function dl(pairs) {
    return "<dl>" + pairs.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${v}</dd>`).join("") + "</dl>";
  }

  function badge(palette, key) {
    return `<span class="badge" style="background:${COLOURS[palette][key] || "#888"}">${esc(key)}</span>`;
  }

  function renderTimeline(history) {
    if (!history || history.length === 0) return '<p class="hint">No connectivity transitions recorded.</p>';
    const now = Date.now();
    const rows = history.slice(-40);
    const times = rows.map((r) => Date.parse(r.timestamp));
    const start = times[0];
    const total = Math.max(1, now - start);
    const segs = rows.map((r, i) => {
      const end = i + 1 < rows.length ? times[i + 1] : now;
      const pct = Math.max(0.5, ((end - times[i]) / total) * 100);
      return `<div style="width:${pct.toFixed(2)}%;background:${COLOURS.connectivity[r.state] || "#888"}" ` +
        `title="${esc(r.state)} from ${esc(r.timestamp)}${r.reason ? " (" + esc(r.reason) + ")" : ""}"></div>`;
    }).join("");
    const table = rows.slice(-10).reverse().map((r) =>
      `<li>${esc(r.timestamp)} ${badge("connectivity", r.state)} ${esc(r.reason || "")}` +
      `${r.latency_ms != null ? ` · ${esc(r.latency_ms)} ms` : ""}${r.backlog != null ? ` · backlog ${esc(r.backlog)}` : ""}</li>`).join("");
    return `<div class="timeline" id="ledger-timeline">${segs}</div><ul class="events">${table}</ul>`;
  }

  function renderDrift(drift) {
    if (!drift) return "";
    const parts = [dl([
      ["severity", badge("severity", drift.severity)],
      ["drift score", esc(drift.drift_score)],
    ])];
    for (const key of ["version_drift", "config_drift", "policy_drift"]) {
      if (drift[key]) parts.push(`<b>${esc(key.replace("_", " "))}</b><pre class="json">${esc(JSON.stringify(drift[key], null, 1))}</pre>`);
    }
    return parts.join("");
  }

  function renderTrust(trust) {
    if (!trust) return '<p class="hint">Trust index not served by this aggregator.</p>';
    const chain = (trust.certificate_chain || []).map((c) =>
      `<li>${esc(c.subject)} ← ${esc(c.issuer)} · ${esc(c.validity)} until ${esc(c.valid_until)}</li>`).join("");
    const sbom = (trust.sbom_lineage || []).map((s) =>
      `<li><code>${esc(s.component)} ${esc(s.version)}</code> ${esc(s.sbom_hash)} · ${esc(s.provenance)}</li>`).join("");
    const rotations = (trust.rotations || []).map((r) =>
      `<li>${esc(r.at)} seq ${esc(r.seq)}: ${esc(r.old_fingerprint).slice(0, 23)}… → ${esc(r.new_fingerprint).slice(0, 23)}…</li>`).join("");
    const alerts = (trust.alerts || []).map((a) =>
      `<li>${badge("severity", a.severity)} ${esc(a.kind)}: ${esc(a.detail)}</li>`).join("");
    return dl([
      ["trust score", `<span id="trust-score">${esc(Number(trust.trust_score).toFixed(2))}</span>`],
      ["trust domain", esc(trust.trust_domain || "–")],
      ["attestation", esc(trust.attestation?.integrity_state || "unknown")],
    ]) +
      `<b>certificate chain</b><ul class="events">${chain || "<li>none reported</li>"}</ul>` +
      `<b>rotations</b><ul class="events">${rotations || "<li>none</li>"}</ul>` +
      `<b>SBOM lineage</b><ul class="events">${sbom || "<li>none reported</li>"}</ul>` +
      `<b>alerts</b><ul class="events">${alerts || "<li>none</li>"}</ul>`;
  }

  function renderDetail(id, data, ledger, trust, neighbours, events) {
    $("detail-title").textContent = id;
    if (!data) {
      $("detail-body").innerHTML = '<p class="hint">This node is unknown to the aggregator.</p>';
      return;
    }
    const t = data.twin, s = data.sync || {};
    const html = [];
    html.push(dl([
      ["component", esc(t.identity.component_type)],
      ["region / zone", `${esc(t.identity.region)} / ${esc(t.identity.zone)}`],
      ["clusters", esc((nodes.get(id)?.clusters || t.topology.clusters || []).join(", "))],
      ["connectivity", `<span id="detail-state">${badge("connectivity", t.connectivity.state)}</span>`],
      ["lifecycle", badge("phase", t.lifecycle.phase)],
      ["operational", esc(t.operational_state)],
      ["software", `${esc(t.software.actual_version || "–")} (desired ${esc(t.software.desired_version || "–")})`],
      ["policy", `${esc(t.policy.actual_policy || "–")} (desired ${esc(t.policy.desired_policy || "–")}), compliance ${esc(t.policy.compliance_score)}`],
      ["events", `seq ${esc(t.last_seq)}, last at ${esc(t.last_event_at || "–")}`],
      ["sync", `acked ${esc(s.acked_seq ?? "–")}, agent head ${esc(s.agent_head_seq ?? "–")}, backlog ${esc(s.backlog ?? "–")}, rtt ${esc(s.rtt_ms ?? "–")} ms, last ${esc(s.last_sync || "never")}`],
      ["hardware", `${esc(t.hardware.serial || "–")} · firmware ${esc(t.hardware.firmware_version || "–")}`],
    ]));
    if (t.lifecycle.update) {
      const u = t.lifecycle.update;
      html.push(`<p>update ${esc(u.from_version)} → ${esc(u.to_version)}: ${u.succeeded == null ? "in progress" : u.succeeded ? "succeeded" : "failed"}</p>`);
    }
    html.push("<h3>Drift</h3>", renderDrift(data.drift));
    html.push("<h3>Connectivity ledger</h3>", renderTimeline(ledger?.history));
    html.push("<h3>Trust and SBOM</h3>", renderTrust(trust));
    if (neighbours) {
      const list = (Array.isArray(neighbours) ? neighbours : neighbours.neighbours || []).map((n) =>
        `<li><a href="#" data-select="${esc(n.node)}">${esc(n.node)}</a> · ${esc(n.link_type)} · ${esc(n.direction)}</li>`).join("");
      html.push("<h3>Neighbours</h3>", `<ul class="events">${list || "<li>none</li>"}</ul>`);
    } else if (t.topology.links.length) {
      const list = t.topology.links.map((l) =>
        `<li><a href="#" data-select="${esc(l.peer)}">${esc(l.peer)}</a> · ${esc(l.link_type)}</li>`).join("");
      html.push("<h3>Declared links</h3>", `<ul class="events">${list}</ul>`);
    }
    if (events) {
      const list = events.slice().reverse().map((e) =>
        `<li>seq ${esc(e.seq)} ${esc(e.timestamp)} <code>${esc(e.event_type)}</code></li>`).join("");
      html.push("<h3>Recent events</h3>", `<ul class="events">${list}</ul>`);
    }
    $("detail-body").innerHTML = html.join("");
    for (const a of $("detail-body").querySelectorAll("[data-select]")) {
      a.addEventListener("click", (ev) => { ev.preventDefault(); select(a.dataset.select); });
    }
  }

  // --- aggregates --------------------------------------------------------------------

  // Computed from the node map (kept live by the stream).
  function renderLocalAggregates() {
    const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
    for (const n of nodes.values()) counts[n.connectivity] = (counts[n.connectivity] || 0) + 1;
    const total = Math.max(1, nodes.size);
    $("spectrum").innerHTML = STATES.filter((s) => counts[s] > 0).map((s) =>
      `<div data-state="${s}" data-count="${counts[s]}" title="${s}: ${counts[s]}" ` +
      `style="width:${((counts[s] / total) * 100).toFixed(2)}%;background:${COLOURS.connectivity[s]}">${counts[s]}</div>`).join("");
    $("spectrum-legend").innerHTML = STATES.map((s) =>
      `<span><i class="swatch" style="background:${COLOURS.connectivity[s]}"></i>${s} <b id="count-${s}">${counts[s]}</b></span>`).join("");

    // Heat map: zone x component, worst severity, drifted / total.
    const zones = [...new Set([...nodes.values()].map((n) => n.zone))].sort();
    const comps = [...new Set([...nodes.values()].map((n) => n.component))].sort();
    const cells = new Map();
    for (const n of nodes.values()) {
      const k = `${n.zone}\u0000${n.component}`;
      const c = cells.get(k) || { total: 0, drifted: 0, worst: "none" };
      c.total += 1;
      if (n.severity !== "none") c.drifted += 1;
      if ((SEVERITY_RANK[n.severity] || 0) > SEVERITY_RANK[c.worst]) c.worst = n.severity;
      cells.set(k, c);
    }
    const head = `<tr><th>zone</th>${comps.map((c) => `<th>${esc(c)}</th>`).join("")}</tr>`;
    const body = zones.map((z) => `<tr><td class="zone">${esc(z)}</td>${comps.map((c) => {
      const cell = cells.get(`${z}\u0000${c}`);
      if (!cell) return "<td></td>";
      return `<td data-zone="${esc(z)}" data-component="${esc(c)}" data-severity="${cell.worst}" ` +
        `style="background:${COLOURS.severity[cell.worst]}">${cell.drifted}/${cell.total}</td>`;
    }).join("")}</tr>`).join("");
    $("heatmap").innerHTML = `<table class="data heat">${head}${body}</table>`;
  }

  function fmtNumber(n) { return Number(n || 0).toLocaleString("en"); }

  async function refreshServerAggregates() {
    const [fleet, connZone, connGlobal, life] = await Promise.all([
      optionalJSON("/fleet"),
      optionalJSON("/connectivity?by=zone"),
      optionalJSON("/connectivity?by=global"),
      optionalJSON("/lifecycle?by=global"),
    ]);
    if (fleet) {
      $("region").textContent = fleet.region;
      $("aggregator").textContent = fleet.aggregator;
      $("events-stored").textContent = fmtNumber(fleet.events_stored);
      $("refusal-count").textContent = fmtNumber(Object.values(fleet.refusals || {}).reduce((a, b) => a + b, 0));
      $("fork-count").textContent = fmtNumber(fleet.forks);
    }
    if (connGlobal && connGlobal[0]) $("stale-count").textContent = String(connGlobal[0].stale);
    if (connZone) {
      $("sync-table").tBodies[0].innerHTML = connZone.map((z) =>
        `<tr data-zone="${esc(z.group)}"><td>${esc(z.group)}</td><td>${z.nodes}</td><td>${z.stale}</td>` +
        `<td>${esc(z.sync_debt_max)}</td><td>${esc(z.sync_debt_mean)}</td><td>${esc(z.oldest_unreceived_max)}</td>` +
        `<td>${fmtNumber(z.backlog_total)}</td><td>${fmtNumber(z.backlog_max)}</td></tr>`).join("");
    }
    if (life && life[0]) {
      const l = life[0];
      const max = Math.max(1, ...Object.values(l.phases));
      const bars = Object.entries(l.phases).map(([p, c]) =>
        `<div class="bar" data-phase="${esc(p)}" data-count="${c}"><span>${esc(p)}</span>` +
        `<div class="fill" style="width:${((c / max) * 100).toFixed(1)}%;background:${COLOURS.phase[p] || "#888"}"></div><span>${c}</span></div>`).join("");
      const updates = (l.updates || []).map((u) =>
        `<li>→ ${esc(u.to_version)}: ${u.succeeded} succeeded, ${u.in_progress} in progress, ${u.failed} failed</li>`).join("");
      $("lifecycle").innerHTML = `<div class="bars">${bars}</div>` +
        (updates ? `<b>updates</b><ul class="events">${updates}</ul>` : "") +
        `<p class="hint">${(l.maintenance || []).length} node(s) in a maintenance window.</p>`;
    }
    $("updated-at").textContent = new Date().toLocaleTimeString();
  }

  let aggregateTimer = null;
  function scheduleAggregates(delay = 1000) {
    if (aggregateTimer) return;
    aggregateTimer = setTimeout(async () => {
      aggregateTimer = null;
      renderLocalAggregates();
      await refreshServerAggregates();
    }, delay);
  }

  let reloadTimer = null;
  function scheduleReload(delay = 1500) {
    if (reloadTimer) return;
    reloadTimer = setTimeout(async () => {
      reloadTimer = null;
      try { await loadNodes(); } catch (e) { console.warn("reload failed", e); }
    }, delay);
  }

  let detailTimer = null;
  function scheduleDetail() {
    if (detailTimer || !selected) return;
    detailTimer = setTimeout(() => { detailTimer = null; if (selected) loadDetail(selected); }, 800);
  }

  // --- live stream -----------------------------------------------------------------

  let flushQueued = false;
  function applyPending() {
    flushQueued = false;
    let unknown = false, topology = false, selectedChanged = false;
    for (const change of pending.values()) {
      const n = nodes.get(change.node);
      if (!n) { unknown = true; continue; }
      n.connectivity = change.connectivity;
      n.phase = change.phase;
      n.severity = change.severity;
      n.last_seq = change.seq;
      syncIndexEntry(n);
      changesApplied += 1;
      if ((change.event_types || []).some((t) => t === "inventory.topology" || t === "inventory.identity")) topology = true;
      if (change.node === selected) selectedChanged = true;
    }
    pending.clear();
    if (unknown || topology) scheduleReload();
    if (selectedChanged) scheduleDetail();
    scheduleDraw();
    scheduleAggregates();
    publishState();
  }

  function setStream(state) {
    streamState = state;
    document.body.dataset.live = state;
    $("live-text").textContent = state === "open" ? "live" : state;
    publishState();
  }

  function connectStream() {
    const es = new EventSource(API + "/stream");
    es.addEventListener("open", () => setStream("open"));
    es.addEventListener("change", (ev) => {
      let change;
      try { change = JSON.parse(ev.data); } catch (e) { return; }
      pending.set(change.node, change);
      if (!flushQueued) { flushQueued = true; requestAnimationFrame(applyPending); }
    });
    // The server skipped changes we were too slow for: reload everything.
    es.addEventListener("lagged", () => scheduleReload(200));
    es.addEventListener("error", () => {
      setStream(es.readyState === EventSource.CLOSED ? "error" : "reconnecting");
      // EventSource reconnects by itself; on reconnect, catch up.
      scheduleReload(3000);
    });
  }

  // --- start ---------------------------------------------------------------------------

  async function start() {
    renderLegend();
    connectStream();
    await init();
  }

  async function init() {
    try {
      await loadNodes();
      renderLegend();
      await refreshServerAggregates();
      document.body.dataset.ready = "true";
      publishState();
    } catch (e) {
      $("graph-hint").textContent = `Could not load the fleet: ${e.message}`;
      setTimeout(init, 3000);
      return;
    }
    // Sync debt grows without events: refresh the server aggregates now
    // and then, and the node list (states the stream may have missed) more
    // rarely.
    setInterval(() => scheduleAggregates(0), 10000);
    setInterval(() => scheduleReload(0), 60000);
  }

  start();
})();
