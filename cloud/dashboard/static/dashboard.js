// homeedge dashboard: polls the query API (same origin, session cookie) and draws with plotly.js.
// Data from gateways is only ever put into the page as text, never as HTML.
"use strict";

const API = "/api/v1";
const WIDTH = { hour: 3600, day: 86400 };
const state = { pollS: 5, dataEnd: null, metrics: [], timer: null, refreshes: 0, busy: false };
const layoutBase = {
  margin: { l: 50, r: 10, t: 10, b: 40 },
  legend: { orientation: "h", y: -0.2 },
  hovermode: "closest",
};
const plotConfig = { displaylogo: false, responsive: true };

async function getJSON(path) {
  const resp = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (resp.status === 401) {
    window.location.reload(); // the session ended: the server shows the login form
    throw new Error("signed out");
  }
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
  return body;
}

const iso = (t) => new Date(t * 1000).toISOString();
const fmtBytes = (n) => {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
};
const fmtSeconds = (s) => (s === null || s === undefined ? "-" : s < 120 ? `${s.toFixed(0)} s` : s < 7200 ? `${(s / 60).toFixed(0)} min` : `${(s / 3600).toFixed(1)} h`);
const fmtNum = (x, digits = 2) => (x === null || x === undefined ? "-" : Number(x).toFixed(digits));
const text = (id, value) => { document.getElementById(id).textContent = value; };

function fillTable(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map(({ cells, cls }) => {
    const tr = document.createElement("tr");
    if (cls) tr.className = cls;
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = cell;
      tr.appendChild(td);
    }
    return tr;
  }));
}

function setOptions(select, values, labels) {
  const current = select.value;
  const wanted = values.join("\u0000");
  if (select.dataset.values !== wanted) {
    select.replaceChildren(...values.map((v, i) => {
      const opt = document.createElement("option");
      opt.value = v;
      opt.textContent = labels ? labels[i] : v;
      return opt;
    }));
    select.dataset.values = wanted;
  }
  if (values.includes(current)) select.value = current;
}

async function refreshOverview() {
  const o = await getJSON(`${API}/analytics/overview`);
  state.pollS = o.poll_s;
  text("card-online", `${o.gateways_online} / ${Math.max(o.gateways_configured, o.gateways.length)}`);
  text("card-lag", fmtSeconds(o.max_lag_s));
  text("card-rate", o.batches_per_s.toFixed(2));
  text("card-saved", o.bandwidth.saving_pct === null ? "-" : `${o.bandwidth.saving_pct.toFixed(1)} %`);
  text("card-homes", String(o.homes));
  text("card-anomalies", String(o.anomalies_flagged));
  return o;
}

async function refreshBandwidth(overview) {
  const b = await getJSON(`${API}/analytics/bandwidth`);
  const live = Object.fromEntries(overview.gateways.map((g) => [g.gateway, g]));
  const rows = [...b.gateways, b.fleet].map((g) => ({
    cells: [
      g.gateway,
      fmtBytes(g.ingested_bytes),
      fmtBytes(g.uplink_wire_bytes),
      g.saving_pct === null ? "-" : `${g.saving_pct.toFixed(1)} % (${fmtNum(g.reduction_x, 0)}x)`,
      live[g.gateway] ? fmtSeconds(live[g.gateway].lag_s) : "",
      live[g.gateway] ? (live[g.gateway].online ? "yes" : "no") : "",
    ],
  }));
  fillTable("bandwidth", rows);
}

async function refreshMetrics() {
  const r = await getJSON(`${API}/analytics/rollups`);
  state.dataEnd = r.data_end;
  state.metrics = r.metrics;
  const names = [...new Set(r.metrics.map((m) => m.metric))];
  const select = document.getElementById("metric");
  const preferred = names.includes("temperature") ? "temperature" : names[0];
  if (!select.value && preferred) select.dataset.pending = preferred;
  setOptions(select, names);
  if (select.dataset.pending) { select.value = select.dataset.pending; delete select.dataset.pending; }
}

function seriesQuery() {
  const metric = document.getElementById("metric").value;
  const bucket = document.getElementById("bucket").value;
  const range = document.getElementById("range").value;
  const group = document.getElementById("group").value;
  const params = new URLSearchParams({ metric, bucket, group_by: group });
  if (range !== "all" && state.dataEnd !== null) {
    // Ranges end at the newest data; hour/day ranges snap to bucket edges (served by rollups).
    const w = WIDTH[bucket] || 1;
    const end = Math.ceil(state.dataEnd / w) * w;
    const start = Math.floor((end - Number(range)) / w) * w;
    params.set("start", String(start));
    params.set("end", String(end));
  }
  return params;
}

async function refreshSeries() {
  const metric = document.getElementById("metric").value;
  const chart = document.getElementById("chart-series");
  if (!metric) { text("series-note", "No data yet."); return; }
  const params = seriesQuery();
  let body;
  try {
    body = await getJSON(`${API}/aggregates?${params}`);
  } catch (err) {
    text("series-note", `Cannot draw: ${err.message}`);
    Plotly.react(chart, [], layoutBase, plotConfig);
    return;
  }
  const traces = body.series.map((s) => {
    const label = Object.entries(s.key).filter(([k]) => k !== "unit").map(([, v]) => v).join(" / ") || "fleet";
    return {
      type: "scatter",
      mode: s.points.length > 1 ? "lines+markers" : "markers",
      name: label,
      x: s.points.map((p) => iso(p.t)),
      y: s.points.map((p) => p.mean),
      customdata: s.points.map((p) => [p.count, p.min, p.max]),
      hovertemplate: "%{x}<br>mean %{y:.3f}<br>n %{customdata[0]} min %{customdata[1]} max %{customdata[2]}<extra>%{fullData.name}</extra>",
      meta: { key: s.key, t: s.points.map((p) => p.t) },
    };
  });
  const unit = body.series.length ? body.series[0].key.unit : "";
  const layout = {
    ...layoutBase,
    xaxis: { title: { text: "time (UTC)" }, type: "date" },
    yaxis: { title: { text: `${metric}${unit ? ` (${unit})` : ""}, mean per ${body.bucket === "raw" ? "window" : body.bucket}` } },
    uirevision: `${metric}|${body.bucket}|${params.get("start")}|${params.get("group_by")}`,
  };
  chart.dataset.query = params.toString();
  await Plotly.react(chart, traces, layout, plotConfig);
  const points = body.series.reduce((n, s) => n + s.points.length, 0);
  text("series-note", `${body.series.length} series, ${points} points (${body.bucket}).`);
}

async function refreshClusters() {
  const r = (await getJSON(`${API}/analytics/clusters`)).report;
  const family = document.getElementById("family");
  setOptions(family, r.families);
  const f = family.value;
  const hours = [...Array(24).keys()];
  const traces = r.clusters.map((c) => ({
    type: "scatter",
    mode: "lines",
    name: `cluster ${c.id} (${c.size})`,
    x: hours,
    y: f ? c.centroid[f] : [],
  }));
  await Plotly.react("chart-clusters", traces, {
    ...layoutBase,
    xaxis: { title: { text: "hour of day (UTC)" }, dtick: 3 },
    yaxis: { title: { text: `${f || "profile"} / daily mean` } },
  }, plotConfig);
  fillTable("clusters", r.clusters.map((c) => ({ cells: [String(c.id), String(c.size), c.homes.join(", ")] })));
}

async function refreshAnomalies() {
  const r = await getJSON(`${API}/analytics/anomalies`);
  fillTable("anomalies", r.anomalies.slice(0, 15).map((a) => ({
    cls: a.flagged ? "flagged" : "",
    cells: [a.home, a.metric, iso(a.t).slice(0, 16).replace("T", " "), fmtNum(a.value), fmtNum(a.z_history), fmtNum(a.z_peers), fmtNum(a.score)],
  })));
}

async function refreshEvents() {
  const r = (await getJSON(`${API}/analytics/events`)).report;
  const homes = [...new Set(r.timeline.map((p) => p.home))];
  const traces = [
    ["alarms", "#c0392b"],
    ["anomalies", "#e67e22"],
  ].map(([what, color]) => {
    const pts = r.timeline.filter((p) => p[what] > 0);
    return {
      type: "scatter",
      mode: "markers",
      name: what,
      x: pts.map((p) => iso(p.t)),
      y: pts.map((p) => p.home),
      marker: { color, size: pts.map((p) => 6 + 3 * Math.sqrt(p[what])) },
      text: pts.map((p) => `${p[what]} ${what}`),
    };
  });
  const empty = traces.every((t) => t.x.length === 0);
  // With nothing to plot, Plotly would draw an invented date axis; say so in words instead.
  await Plotly.react("chart-events", traces, {
    ...layoutBase,
    xaxis: { title: { text: "hour (UTC)" }, type: "date", visible: !empty },
    yaxis: { type: "category", categoryarray: homes, visible: !empty },
    annotations: empty
      ? [{ text: "No alarms or anomalies reported yet", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }]
      : [],
  }, plotConfig);
  const share = r.speech_share === null ? "-" : `${(100 * r.speech_share).toFixed(1)} %`;
  text("events-note", `Alarms per home and day: ${fmtNum(r.alarms_per_home_day)}; speech activity share: ${share}.`);
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    const overview = await refreshOverview();
    await refreshMetrics();
    await Promise.all([refreshSeries(), refreshClusters(), refreshAnomalies(), refreshEvents(), refreshBandwidth(overview)]);
    state.refreshes += 1;
    document.body.dataset.refreshes = String(state.refreshes);
    text("status", `updated ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    text("status", `update failed: ${err.message}`);
  } finally {
    state.busy = false;
    clearTimeout(state.timer);
    state.timer = setTimeout(refresh, state.pollS * 1000);
  }
}

for (const id of ["metric", "bucket", "range", "group"]) {
  document.getElementById(id).addEventListener("change", async () => {
    document.body.dataset.seriesReady = "0";
    await refreshSeries();
    document.body.dataset.seriesReady = "1";
  });
}
document.getElementById("family").addEventListener("change", refreshClusters);
refresh();
