// homeedge dashboard: polls the query API (same origin, session cookie) and draws with plotly.js.
// Data from gateways is only ever put into the page as text, never as HTML.
"use strict";

const API = "/api/v1";
const WIDTH = { hour: 3600, day: 86400 };
const state = {
  pollS: 5, dataEnd: null, metrics: [], timer: null, refreshes: 0, busy: false,
  metricPicked: false, // the reader chose a metric: keep it; else open on temperature once present
  sparks: new Map(), // "home|metric|t" -> a flagged row's last 24 h (closed hours do not change)
};
const NOISE_K = 2; // the noise band is mean +- 2 standard deviations of the privacy noise
const HOUR_MS = 3600 * 1000;
const DAY_MS = 24 * HOUR_MS;
const layoutBase = {
  margin: { l: 50, r: 10, t: 10, b: 40 },
  // Above the plot: below it, the legend collided with two-line date ticks on narrow charts.
  legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
  hovermode: "closest",
};
const plotConfig = { displaylogo: false, responsive: true };
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

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

// A date axis that never invents precision: it spans whole buckets around the points (and the
// query's range when there is one), and its ticks step by whole buckets, so one point or a few
// sparse ones read "13:00", not "12:59:59.999 ... 13:00:00.0005".
function timeAxis(ts, widthS, start, end, chartId) {
  // About one tick per 90 px of chart, at least 3: a phone's chart gets fewer, wider steps.
  const el = chartId ? document.getElementById(chartId) : null;
  const maxTicks = Math.max(3, Math.floor(((el && el.clientWidth) || 720) / 90));
  const w = (widthS || 60) * 1000;
  const ms = ts.map((t) => t * 1000);
  let lo = ms.length ? Math.min(...ms) : null;
  let hi = ms.length ? Math.max(...ms) : null;
  if (start !== null && start !== undefined) lo = lo === null ? start * 1000 : Math.min(lo, start * 1000);
  if (end !== null && end !== undefined) hi = hi === null ? end * 1000 - w : Math.max(hi, end * 1000 - w);
  if (lo === null) return { type: "date" };
  const range = [lo - w / 2, hi + w / 2];
  const span = range[1] - range[0];
  const axis = { type: "date", range: range.map((x) => new Date(x).toISOString()), autorange: false };
  if (w >= DAY_MS) {
    const days = [1, 2, 7, 14, 28].find((d) => span / (d * DAY_MS) <= maxTicks) || 56;
    Object.assign(axis, { dtick: days * DAY_MS, tick0: "2000-01-02", tickformat: "%b %-d" });
  } else if (w >= HOUR_MS) {
    const hours = [1, 2, 3, 6, 12, 24].find((h) => span / (h * HOUR_MS) <= maxTicks);
    if (hours) Object.assign(axis, { dtick: hours * HOUR_MS, tick0: "2000-01-01", tickformat: "%H:%M<br>%b %-d" });
    else Object.assign(axis, { tickformatstops: [{ dtickrange: [null, DAY_MS], value: "%H:%M<br>%b %-d" }, { dtickrange: [DAY_MS, null], value: "%b %-d" }] });
  } else {
    // Raw windows: whole seconds at the finest.
    axis.tickformatstops = [{ dtickrange: [null, 60000], value: "%H:%M:%S" }, { dtickrange: [60000, DAY_MS], value: "%H:%M<br>%b %-d" }, { dtickrange: [DAY_MS, null], value: "%b %-d" }];
  }
  return axis;
}

// The spacing past which two neighbouring points have missing data between them: more than
// 1.5 times the series' usual (median) spacing, and than one bucket. A gateway whose windows
// are two hours long reports every other hour bucket: that is its rhythm, not a gap.
function gapSpacing(ts, widthS) {
  const steps = ts.slice(1).map((t, i) => t - ts[i]).sort((a, b) => a - b);
  const usual = steps.length ? steps[Math.floor((steps.length - 1) / 2)] : 0;
  return 1.5 * Math.max(usual, widthS || 0);
}

// Points at bucket starts with a null where data is missing, so a line breaks there instead
// of drawing values nobody measured.
function withGaps(points, widthS, value) {
  const xs = [];
  const ys = [];
  const gap = gapSpacing(points.map((p) => p.t), widthS);
  points.forEach((p, i) => {
    if (i > 0 && p.t - points[i - 1].t > gap) { xs.push(iso(points[i - 1].t + widthS)); ys.push(null); }
    xs.push(iso(p.t));
    ys.push(value(p));
  });
  return { x: xs, y: ys };
}

// A cluster profile (24 hours, null where no member has data): the same rule for its gaps.
function profileWithGaps(values) {
  const hours = values.map((v, h) => (v === null ? null : h)).filter((h) => h !== null);
  const gap = gapSpacing(hours, 1);
  const x = [];
  const y = [];
  hours.forEach((h, i) => {
    if (i > 0 && h - hours[i - 1] > gap) { x.push(hours[i - 1] + 1); y.push(null); }
    x.push(h);
    y.push(values[h]);
  });
  return { x, y };
}

// A pseudonym shortened for an axis on a narrow screen (the hover shows it whole).
const shortHome = (h) => (h.length > 12 ? `${h.slice(0, 10)}\u2026` : h);

function meanRange(series) {
  const means = series.flatMap((s) => s.points.map((p) => p.mean)).filter((m) => m !== null);
  if (!means.length) return {};
  const lo = Math.min(...means);
  const hi = Math.max(...means);
  const pad = Math.max(0.1 * (hi - lo), 0.05 * Math.abs(hi) || 1);
  return { range: [lo - pad, hi + pad], autorange: false };
}

function rawWidth(series) {
  let w = Infinity;
  for (const s of series) for (let i = 1; i < s.points.length; i += 1) w = Math.min(w, s.points[i].t - s.points[i - 1].t);
  return Number.isFinite(w) && w > 0 ? w : 60;
}

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
  const noised = new Set(r.metrics.filter((m) => m.noised).map((m) => m.metric));
  const select = document.getElementById("metric");
  // Temperature first (exact, familiar); a noised series is never the one the page opens on
  // unless it is all there is.
  const preferred = names.includes("temperature") ? "temperature" : (names.find((n) => !noised.has(n)) || names[0]);
  setOptions(select, names, names.map((n) => (noised.has(n) ? `${n} (noised)` : n)));
  if (!state.metricPicked && preferred) select.value = preferred;
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

const fmtPlain = (x) => (x === null || x === undefined ? "-" : Number(x).toPrecision(4));

function seriesTraces(body, widthS) {
  const traces = [];
  body.series.forEach((s, i) => {
    const label = Object.entries(s.key).filter(([k]) => k !== "unit").map(([, v]) => v).join(" / ") || "fleet";
    const color = COLORS[i % COLORS.length];
    if (s.noised) {
      // The band under the line: mean +- NOISE_K noise s.d., one closed shape per run of
      // points without a gap (upper edge left to right, lower edge back), nulls between runs.
      const line = withGaps(s.points, widthS, (p) => p);
      const x = [];
      const y = [];
      let run = [];
      const close = () => {
        if (run.length) {
          if (x.length) { x.push(null); y.push(null); }
          for (const p of run) { x.push(iso(p.t)); y.push(p.mean + NOISE_K * p.noise_sd); }
          for (const p of [...run].reverse()) { x.push(iso(p.t)); y.push(p.mean - NOISE_K * p.noise_sd); }
        }
        run = [];
      };
      for (const p of line.y) {
        if (p === null || p.mean === null || p.noise_sd === null) close();
        else run.push(p);
      }
      close();
      traces.push({ type: "scatter", mode: "lines", x, y, fill: "toself", fillcolor: `${color}33`, line: { width: 0, color }, hoverinfo: "skip", showlegend: false, legendgroup: label, name: `${label} noise band`, meta: { band: "noise" } });
    }
    const line = withGaps(s.points, widthS, (p) => p.mean);
    const byX = new Map(s.points.map((p) => [iso(p.t), p]));
    traces.push({
      type: "scatter",
      mode: s.points.length > 1 ? "lines+markers" : "markers",
      name: label,
      legendgroup: label,
      line: { color },
      marker: { color },
      x: line.x,
      y: line.y,
      customdata: line.x.map((x) => {
        const p = byX.get(x);
        if (!p) return ["", "", "", ""];
        return [p.count.toFixed(0), fmtPlain(p.min), fmtPlain(p.max), p.noise_sd === null ? "exact" : `noise s.d. ${fmtPlain(p.noise_sd)}`];
      }),
      hovertemplate: "%{x}<br>mean %{y:.3f} (%{customdata[3]})<br>n %{customdata[0]} min %{customdata[1]} max %{customdata[2]}<extra>%{fullData.name}</extra>",
      meta: { key: s.key, noised: s.noised, t: s.points.map((p) => p.t) },
    });
  });
  return traces;
}

async function refreshSeries() {
  const metric = document.getElementById("metric").value;
  const chart = document.getElementById("chart-series");
  const marker = document.getElementById("noised-marker");
  if (!metric) { text("series-note", "No data yet."); marker.hidden = true; return; }
  const params = seriesQuery();
  let body;
  try {
    body = await getJSON(`${API}/aggregates?${params}`);
  } catch (err) {
    text("series-note", `Cannot draw: ${err.message}`);
    Plotly.react(chart, [], layoutBase, plotConfig);
    return;
  }
  const widthS = WIDTH[body.bucket] || rawWidth(body.series);
  const traces = seriesTraces(body, widthS);
  const noised = body.series.some((s) => s.noised);
  marker.hidden = !noised;
  chart.dataset.noised = noised ? "1" : "0";
  const unit = body.series.length ? body.series[0].key.unit : "";
  const ts = body.series.flatMap((s) => s.points.map((p) => p.t));
  const start = params.has("start") ? Number(params.get("start")) : null;
  const end = params.has("end") ? Number(params.get("end")) : null;
  const layout = {
    ...layoutBase,
    xaxis: { automargin: true, ...timeAxis(ts, widthS, start, end, "chart-series") },
    yaxis: {
      title: { text: `${metric}${unit ? ` (${unit})` : ""}, mean per ${body.bucket === "raw" ? "window" : body.bucket}${noised ? ", noised" : ""}` },
      // Scaled to the means: a band wider than the chart says the noise dwarfs the swings.
      ...(noised ? meanRange(body.series) : {}),
    },
    // On a phone, a legend of many homes would take the chart's place: a tap shows the name.
    showlegend: chart.clientWidth >= 500 || body.series.length <= 3,
    uirevision: `${metric}|${body.bucket}|${params.get("start")}|${params.get("group_by")}`,
  };
  chart.dataset.query = params.toString();
  await Plotly.react(chart, traces, layout, plotConfig);
  const points = body.series.reduce((n, s) => n + s.points.length, 0);
  text("series-note", `${body.series.length} series, ${points} points (${body.bucket}); times in UTC.`);
}

async function refreshClusters() {
  const r = (await getJSON(`${API}/analytics/clusters`)).report;
  const family = document.getElementById("family");
  setOptions(family, r.families);
  const f = family.value;
  // An hour no member home has data in is left out; a run of them breaks the line.
  const traces = r.clusters.map((c) => ({
    type: "scatter",
    mode: "lines+markers",
    marker: { size: 4 },
    name: `cluster ${c.id} (${c.size})`,
    ...(f ? profileWithGaps(c.centroid[f]) : { x: [], y: [] }),
  }));
  const empty = !f || !traces.length;
  await Plotly.react("chart-clusters", traces, {
    ...layoutBase,
    xaxis: { title: { text: "hour of day (UTC)" }, dtick: 3, range: [-0.5, 23.5], visible: !empty },
    yaxis: { title: { text: `${f || "profile"} / daily mean` }, visible: !empty },
    // No profile reported (power, motion, CO2): say so instead of drawing an empty scale.
    annotations: empty
      ? [{ text: "No daily profiles yet (power, occupancy or CO2)", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }]
      : [],
  }, plotConfig);
  fillTable("clusters", r.clusters.map((c) => ({ cells: [String(c.id), String(c.size), c.homes.join(", ")] })));
}

const SVG = "http://www.w3.org/2000/svg";

// A flagged row's last 24 hours of that home and metric, as a small line: gaps where no data.
function sparkline(points, t) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 96 24");
  svg.setAttribute("width", "96");
  svg.setAttribute("height", "24");
  svg.setAttribute("class", "spark");
  const title = document.createElementNS(SVG, "title");
  title.textContent = `${points.length} hours with data in the 24 h to ${iso(t + 3600).slice(11, 16)} UTC`;
  svg.appendChild(title);
  const values = points.filter((p) => p.mean !== null);
  if (!values.length) return svg;
  const lo = Math.min(...values.map((p) => p.mean));
  const hi = Math.max(...values.map((p) => p.mean));
  const x = (pt) => 2 + (92 * (pt - (t - 23 * 3600))) / (23 * 3600);
  const y = (v) => (hi === lo ? 12 : 21 - (18 * (v - lo)) / (hi - lo));
  let run = [];
  const runs = [run];
  const gap = gapSpacing(values.map((p) => p.t), 3600);
  values.forEach((p, i) => {
    if (i > 0 && p.t - values[i - 1].t > gap) { run = []; runs.push(run); }
    run.push(`${x(p.t).toFixed(1)},${y(p.mean).toFixed(1)}`);
  });
  for (const r of runs) {
    const line = document.createElementNS(SVG, r.length > 1 ? "polyline" : "circle");
    if (r.length > 1) line.setAttribute("points", r.join(" "));
    else { const [cx, cy] = r[0].split(","); line.setAttribute("cx", cx); line.setAttribute("cy", cy); line.setAttribute("r", "1.5"); }
    line.setAttribute("class", "spark-line");
    svg.appendChild(line);
  }
  const last = values[values.length - 1];
  if (last.t === t) {
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", x(last.t).toFixed(1));
    dot.setAttribute("cy", y(last.mean).toFixed(1));
    dot.setAttribute("r", "2.5");
    dot.setAttribute("class", "spark-dot");
    svg.appendChild(dot);
  }
  return svg;
}

async function lastDay(a) {
  const key = `${a.home}|${a.metric}|${a.t}`;
  if (!state.sparks.has(key)) {
    const params = new URLSearchParams({ metric: a.metric, bucket: "hour", group_by: "", home: a.home, start: String(a.t - 23 * 3600), end: String(a.t + 3600) });
    const body = await getJSON(`${API}/aggregates?${params}`);
    state.sparks.set(key, body.series.flatMap((s) => s.points).sort((p, q) => p.t - q.t));
  }
  return state.sparks.get(key);
}

async function refreshAnomalies() {
  const r = await getJSON(`${API}/analytics/anomalies?flagged=true`);
  const flagged = r.anomalies;
  const body = document.querySelector("#anomalies tbody");
  text("anomalies-note", `${flagged.length} flagged: the newest complete hour is more than ${r.threshold} robust s.d. from both the home's own history and its peers (noised values count their noise in that s.d.).`);
  document.getElementById("anomalies").dataset.count = String(flagged.length);
  if (!flagged.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 7;
    td.className = "muted";
    td.textContent = "No anomalies flagged.";
    tr.appendChild(td);
    body.replaceChildren(tr);
    return;
  }
  const histories = await Promise.all(flagged.map((a) => lastDay(a).catch(() => [])));
  // Keep only the rows still flagged: the cache does not grow with the hours a page stays open.
  const wanted = new Set(flagged.map((a) => `${a.home}|${a.metric}|${a.t}`));
  for (const key of state.sparks.keys()) if (!wanted.has(key)) state.sparks.delete(key);
  body.replaceChildren(...flagged.map((a, i) => {
    const tr = document.createElement("tr");
    tr.className = "flagged";
    const value = a.noise_sd === null ? fmtPlain(a.value) : `${fmtPlain(a.value)} \u00b1 ${fmtPlain(NOISE_K * a.noise_sd)} (noised)`;
    const cells = [a.home, a.metric, iso(a.t).slice(0, 16).replace("T", " "), value, fmtNum(a.z_history, 1), a.z_peers === null ? "-" : `${fmtNum(a.z_peers, 1)} (${a.peers})`];
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = cell;
      tr.appendChild(td);
    }
    const td = document.createElement("td");
    td.appendChild(sparkline(histories[i], a.t));
    tr.appendChild(td);
    return tr;
  }));
}

const EVENT_KINDS = [
  ["alarms", "#c0392b", "alarms"],
  ["anomalies", "#e67e22", "sensor anomalies"],
  ["keywords", "#2c7fb8", "voice commands"],
];

async function refreshEvents() {
  const r = (await getJSON(`${API}/analytics/events`)).report;
  const homes = [...new Set(r.timeline.map((p) => p.home))];
  const traces = EVENT_KINDS.map(([what, color, label]) => {
    const pts = r.timeline.filter((p) => p[what] > 0);
    return {
      type: "scatter",
      mode: "markers",
      name: label,
      x: pts.map((p) => iso(p.t)),
      y: pts.map((p) => p.home),
      marker: { color, size: pts.map((p) => 6 + 3 * Math.sqrt(p[what])) },
      text: pts.map((p) => `${p[what].toFixed(0)} ${label}`),
      hovertemplate: "%{x}<br>%{text}<extra>%{y}</extra>",
    };
  });
  const empty = traces.every((t) => t.x.length === 0);
  // With nothing to plot, Plotly would draw an invented date axis; say so in words instead.
  await Plotly.react("chart-events", traces, {
    ...layoutBase,
    margin: { ...layoutBase.margin, l: 10 },
    xaxis: { automargin: true, ...timeAxis(r.timeline.map((p) => p.t), 3600, null, null, "chart-events"), visible: !empty },
    yaxis: {
      type: "category", categoryarray: homes, visible: !empty, automargin: true,
      tickvals: homes, ticktext: window.innerWidth < 700 ? homes.map(shortHome) : homes,
    },
    annotations: empty
      ? [{ text: "No alarms, anomalies or voice commands reported yet", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }]
      : [],
  }, plotConfig);
  const share = r.speech_share === null ? "-" : `${(100 * r.speech_share).toFixed(1)} %`;
  const per = (what) => r.days.reduce((n, d) => n + (d[what] || 0), 0);
  text("events-note", `Per home pseudonym and hour (UTC). Look-back totals: ${per("alarms").toFixed(0)} alarms, ${per("anomalies").toFixed(0)} sensor anomalies, ${per("keywords").toFixed(0)} voice commands. Alarms per home and day: ${fmtNum(r.alarms_per_home_day)}; speech activity share: ${share}.`);
}

function fmtVersion(v) {
  return v === null || v === undefined ? "built-in" : `v${v}`;
}

// Rollout writes take the operator token, typed into the form: never stored, sent as a Bearer
// header (no cookie, so no cross-site request can carry it).
async function operatorCall(method, path, body) {
  const token = document.getElementById("op-token").value.trim();
  if (!token) throw new Error("enter the operator token first");
  const resp = await fetch(path, {
    method,
    credentials: "omit",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json", Accept: "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await resp.json();
  if (!resp.ok) throw new Error(answer.error ? answer.error.message : `HTTP ${resp.status}`);
  return answer;
}

const listOf = (id) => document.getElementById(id).value.split(",").map((x) => x.trim()).filter(Boolean);

document.getElementById("rollout-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const spec = {
    version: Number(document.getElementById("op-version").value),
    tags: listOf("op-tags"),
    gateways: listOf("op-gateways"),
    canary_count: Number(document.getElementById("op-canary").value),
    wave_factor: Number(document.getElementById("op-factor").value),
    soak_s: Number(document.getElementById("op-soak").value),
  };
  try {
    const r = await operatorCall("POST", `${API}/rollouts`, spec);
    text("op-result", `rollout ${r.id.slice(0, 8)} started`);
    await refreshFleet();
  } catch (err) {
    text("op-result", `refused: ${err.message}`);
  }
});

function actionButtons(r) {
  const actions = r.state === "running" ? ["pause", "abort"] : r.state === "paused" ? ["resume", "abort"] : [];
  return actions.map((action) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = action;
    b.dataset.action = action;
    b.addEventListener("click", async () => {
      try {
        await operatorCall("POST", `${API}/rollouts/${r.id}/${action}`);
        text("op-result", `rollout ${r.id.slice(0, 8)}: ${action}`);
        await refreshFleet();
      } catch (err) {
        text("op-result", `refused: ${err.message}`);
      }
    });
    return b;
  });
}

async function refreshFleet() {
  const [fleet, listed] = await Promise.all([getJSON(`${API}/fleet/versions`), getJSON(`${API}/rollouts`)]);
  const details = await Promise.all(listed.rollouts.slice(0, 5).map((r) => getJSON(`${API}/rollouts/${r.id}`)));
  fillTable("rollouts", details.map((r) => ({
    cls: r.state === "halted" || r.state === "aborted" ? "flagged" : "",
    cells: [
      r.id.slice(0, 8),
      `v${r.version}`,
      r.reason ? `${r.state} (${r.reason})` : r.state,
      r.waves.map((w) => `${w.number}: ${w.counts.healthy || 0}/${w.size} ${w.state}`).join(" \u00b7 "),
      r.failures.map((f) => f.gateway).join(", ") || "-",
      r.rollbacks.map((b) => `${b.gateway} \u2192 ${fmtVersion(b.rollback_to || null)}`).join(", ") || "-",
      new Date(r.created_at * 1000).toISOString().slice(0, 16).replace("T", " "),
    ],
  })));
  document.querySelectorAll("#rollouts tbody tr").forEach((tr, i) => {
    const td = document.createElement("td");
    td.replaceChildren(...actionButtons(details[i]));
    tr.appendChild(td);
  });
  const now = fleet.now;
  fillTable("fleet-versions", fleet.gateways.map((g) => ({
    cells: [
      g.gateway,
      g.tags.join(", "),
      g.reported_at === null ? "?" : fmtVersion(g.running_version),
      g.staged_version === null ? "-" : fmtVersion(g.staged_version),
      g.desired_version === null ? "-" : fmtVersion(g.desired_version),
      g.state === null ? "-" : (g.reason ? `${g.state}: ${g.reason}` : g.state),
      g.reported_at === null ? "never" : `${fmtSeconds(now - g.reported_at)} ago`,
    ],
  })));
  const versions = Object.entries(fleet.versions).map(([v, n]) => `${n} on ${v === "builtin" || v === "unknown" ? v : `v${v}`}`);
  text("fleet-note", versions.length ? `Running: ${versions.join(", ")}.` : "No gateway has reported a version yet.");
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    const overview = await refreshOverview();
    await refreshMetrics();
    await Promise.all([refreshSeries(), refreshClusters(), refreshAnomalies(), refreshEvents(), refreshBandwidth(overview), refreshFleet()]);
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

document.getElementById("metric").addEventListener("change", () => { state.metricPicked = true; });
for (const id of ["metric", "bucket", "range", "group"]) {
  document.getElementById(id).addEventListener("change", async () => {
    document.body.dataset.seriesReady = "0";
    await refreshSeries();
    document.body.dataset.seriesReady = "1";
  });
}
document.getElementById("family").addEventListener("change", refreshClusters);
refresh();
