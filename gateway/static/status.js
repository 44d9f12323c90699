// The gateway's local status page: fills its tables from /api/status/* as text only (device
// names and topics come from devices, so they are never put into the page as HTML).
"use strict";

const LOW_BATTERY = 20;
const ALARMS = new Set(["smoke_t3", "co_t4"]);

const when = (t) => (t === null || t === undefined ? "-" : new Date(t * 1000).toLocaleString());
const ago = (t, now) => {
  if (t === null || t === undefined) return "never";
  const s = Math.max(0, now - t);
  if (s < 120) return `${s.toFixed(0)} s ago`;
  if (s < 7200) return `${(s / 60).toFixed(0)} min ago`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h ago`;
  return `${(s / 86400).toFixed(1)} days ago`;
};

function fill(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map(({ cells, cls }) => {
    const tr = document.createElement("tr");
    if (cls) tr.className = cls;
    for (const [value, cellCls] of cells) {
      const td = document.createElement("td");
      td.textContent = value;
      if (cellCls) td.className = cellCls;
      tr.appendChild(td);
    }
    return tr;
  }));
}

async function get(path) {
  const resp = await fetch(path, { headers: { Accept: "application/json" } });
  if (!resp.ok && resp.status !== 503) throw new Error(`${path}: ${resp.status}`);
  return resp.json();
}

async function refresh() {
  const health = document.getElementById("health");
  try {
    const h = await get("/healthz");
    health.textContent = h.status === "ok" ? "Healthy" : `Degraded: ${Object.keys(h.checks || {}).filter((k) => !h.checks[k].ok).join(", ") || h.status}`;
    health.className = h.status === "ok" ? "ok" : "bad";
  } catch (err) {
    health.textContent = `Health unknown (${err.message})`;
    health.className = "bad";
  }
  try {
    const d = await get("/api/status/devices");
    document.getElementById("device-count").textContent = `(${d.count})`;
    fill("devices", d.devices.map((x) => {
      const low = x.battery !== null && x.battery < LOW_BATTERY;
      const offline = x.availability === "offline";
      return {
        cls: [offline ? "offline" : "", low ? "low" : ""].join(" ").trim(),
        cells: [
          [x.home], [x.room], [x.device], [x.device_class], [ago(x.last_seen, d.now)],
          [x.availability || "unknown"], [x.battery === null ? "-" : `${x.battery.toFixed(0)} %`, "battery"],
        ],
      };
    }));
    const e = await get("/api/status/events?limit=50");
    document.getElementById("event-count").textContent = `(${e.count})`;
    fill("events", e.events.map((x) => ({
      cls: ALARMS.has(x.label) ? "alarm" : "",
      cells: [[when(x.window_end)], [x.label], [x.model], [x.room], [x.device], [x.score.toFixed(2)]],
    })));
    const l = await get("/api/status/dead-letters?limit=50");
    document.getElementById("dead-count").textContent = `(${l.count})`;
    fill("dead-letters", l.dead_letters.map((x) => ({
      cells: [[when(x.last_received_at)], [x.reason], [x.detail], [x.topic], [String(x.count)], [String(x.payload_bytes)]],
    })));
  } catch (err) {
    health.textContent = `${health.textContent} (status: ${err.message})`;
  }
}

refresh();
setInterval(refresh, 10000);
