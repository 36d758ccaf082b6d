// The status page: fetches /status/data every 15 s and draws it. Charts are plain SVG drawn here (two kinds:
// stacked bars and lines), so the page needs no library and nothing from outside this server. Every text from
// the data goes in through textContent, never as markup.
"use strict";

(function () {
  const REFRESH_MS = 15000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const HEIGHT = 230;
  const MARGIN = { top: 10, right: 12, bottom: 26, left: 46 };
  const OUTCOMES = {
    success: ["success", "#2e9e5b"],
    failed: ["failed (exit code)", "#d64545"],
    time_limit: ["time limit", "#e08a1e"],
    output_limit: ["output limit", "#c9a81a"],
    out_of_memory: ["out of memory", "#8e44ad"],
    cpu_limit: ["CPU limit", "#a0522d"],
    killed_by_signal: ["killed by signal", "#6c7a89"],
    sandbox_error: ["sandbox error", "#2c3e50"],
    sandbox_lost: ["sandbox lost", "#111111"],
    fetch_failed: ["fetch failed", "#3b7dd8"],
    rate_limited: ["rate limited", "#e67eb5"],
    not_started: ["not started", "#95a5a6"],
  };
  let latest = null;

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
    return Math.floor(seconds / 3600) + " h " + Math.round((seconds % 3600) / 60) + " min";
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  // A top for a count axis whose four grid lines fall on whole numbers.
  function countMax(value) {
    for (const top of [4, 8, 12, 20, 40, 60, 80, 100, 200, 400, 600, 800, 1000]) if (value <= top) return top;
    return 4 * niceMax(value / 4);
  }

  function outcomeName(kind) {
    return (OUTCOMES[kind] || [kind])[0];
  }

  function outcomeColor(kind) {
    return (OUTCOMES[kind] || [kind, "#7f8c8d"])[1];
  }

  // Axes, grid and tick labels shared by both chart kinds; returns the plot's geometry.
  function frame(root, width, count, maxValue, formatY, tickLabel, tickEvery) {
    const plot = { x: MARGIN.left, y: MARGIN.top, w: width - MARGIN.left - MARGIN.right,
      h: HEIGHT - MARGIN.top - MARGIN.bottom };
    for (let i = 0; i <= 4; i++) {
      const y = plot.y + plot.h - (plot.h * i) / 4;
      root.appendChild(svg("line", { class: "grid", x1: plot.x, x2: plot.x + plot.w, y1: y, y2: y }));
      root.appendChild(svg("text", { x: plot.x - 6, y: y + 4, "text-anchor": "end" }, formatY((maxValue * i) / 4)));
    }
    root.appendChild(svg("line", { class: "axis", x1: plot.x, x2: plot.x + plot.w,
      y1: plot.y + plot.h, y2: plot.y + plot.h }));
    const step = plot.w / count;
    for (let i = 0; i < count; i += tickEvery) {
      const x = plot.x + step * i + step / 2;
      root.appendChild(svg("text", { x: x, y: HEIGHT - 8, "text-anchor": "middle" }, tickLabel(i)));
    }
    return { plot: plot, step: step };
  }

  function legend(container, names) {
    const box = el("div", null, "legend");
    for (const [name, color] of names) {
      const item = el("span");
      const swatch = svg("svg", { width: 12, height: 12, "aria-hidden": "true" });
      swatch.appendChild(svg("rect", { width: 12, height: 12, rx: 2, fill: color }));
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(name));
      box.appendChild(item);
    }
    container.appendChild(box);
  }

  function stackedBars(container, data, tickEvery, tickLabel) {
    container.replaceChildren();
    const width = Math.max(container.clientWidth, 320);
    const labels = data.labels;
    const kinds = Object.keys(data.series);
    const totals = labels.map((_, i) => kinds.reduce((sum, kind) => sum + data.series[kind][i], 0));
    const maxValue = countMax(Math.max(0, ...totals));
    const root = svg("svg", { width: width, height: HEIGHT, role: "img",
      "aria-label": "runs by outcome", class: "bars" });
    const geometry = frame(root, width, labels.length, maxValue, (v) => String(Math.round(v)),
      (i) => tickLabel(labels[i]), tickEvery);
    const plot = geometry.plot;
    const barWidth = Math.max(geometry.step - 1, 1);
    labels.forEach((label, i) => {
      let base = plot.y + plot.h;
      for (const kind of kinds) {
        const count = data.series[kind][i];
        if (!count) continue;
        const h = (plot.h * count) / maxValue;
        base -= h;
        const bar = svg("rect", { x: plot.x + geometry.step * i, y: base, width: barWidth, height: h,
          fill: outcomeColor(kind), "data-kind": kind });
        bar.appendChild(svg("title", {}, label + ": " + count + " " + outcomeName(kind)));
        root.appendChild(bar);
      }
    });
    container.appendChild(root);
    if (kinds.length) legend(container, kinds.map((kind) => [outcomeName(kind), outcomeColor(kind)]));
    else container.appendChild(el("p", "no finished runs in this period", "empty"));
  }

  function lines(container, data) {
    container.replaceChildren();
    const width = Math.max(container.clientWidth, 320);
    const series = [["p50", "#3b7dd8", data.p50], ["p95", "#d64545", data.p95]];
    const values = series.flatMap((s) => s[2]).filter((v) => v !== null);
    const maxValue = niceMax(Math.max(0, ...values));
    const root = svg("svg", { width: width, height: HEIGHT, role: "img", "aria-label": "time to result",
      class: "lines" });
    const geometry = frame(root, width, data.labels.length, maxValue, duration,
      (i) => data.labels[i].slice(11) + ":00", 6);
    const plot = geometry.plot;
    for (const [name, color, points] of series) {
      let path = "";
      points.forEach((value, i) => {
        if (value === null) return;
        const x = plot.x + geometry.step * i + geometry.step / 2;
        const y = plot.y + plot.h - (plot.h * value) / maxValue;
        path += (path && points[i - 1] !== null ? " L " : " M ") + x.toFixed(1) + " " + y.toFixed(1);
        const dot = svg("circle", { cx: x, cy: y, r: 2.5, fill: color });
        dot.appendChild(svg("title", {}, data.labels[i] + ":00 " + name + " " + duration(value)));
        root.appendChild(dot);
      });
      if (path) root.appendChild(svg("path", { d: path.trim(), fill: "none", stroke: color, "stroke-width": 2 }));
    }
    container.appendChild(root);
    if (values.length) legend(container, series.map((s) => [s[0], s[1]]));
    else container.appendChild(el("p", "no runs in this period", "empty"));
  }

  function table(node, headers, rows, empty) {
    node.replaceChildren();
    const head = el("tr");
    for (const header of headers) head.appendChild(el("th", header));
    node.appendChild(head);
    if (!rows.length) {
      const row = el("tr");
      const cell = el("td", empty, "empty");
      cell.colSpan = headers.length;
      row.appendChild(cell);
      node.appendChild(row);
      return;
    }
    for (const cells of rows) {
      const row = el("tr");
      for (const cell of cells) row.appendChild(cell instanceof Node ? wrap(cell) : el("td", cell));
      node.appendChild(row);
    }
  }

  function wrap(node) {
    if (node.tagName === "TD") return node;
    const cell = el("td");
    cell.appendChild(node);
    return cell;
  }

  function num(value) {
    return el("td", value, "num");
  }

  function render(data) {
    latest = data;
    const queue = data.queue;
    document.getElementById("queued").textContent = String(queue.queued);
    document.getElementById("oldest").textContent = queue.queued ? duration(queue.oldest_seconds) : "–";
    document.getElementById("running").textContent = String(queue.running);
    for (const span of ["hour", "day"]) {
      for (const q of ["p50", "p95"]) {
        document.getElementById(q + "-" + span).textContent = duration(data.latency[span][q]);
      }
    }
    table(document.getElementById("nodes"), ["node", "state", "slots busy / total", "runs held", "limits by"],
      data.nodes.map((node) => {
        const state = node.reachable === null ? "not configured here" : node.status;
        const healthy = node.reachable && node.healthy;
        const slots = node.slots && node.slots.total !== undefined ? node.slots.busy + " / " + node.slots.total : "–";
        const limits = node.enforcement ? Object.entries(node.enforcement).map(([k, v]) => k + ": " + v).join(", ") : "";
        return [node.node ? node.node + " (" + node.url + ")" : node.url, el("td", state, healthy ? "ok" : "down"),
          num(slots), num(node.in_flight), limits];
      }), "no sandbox nodes configured");
    const hourMinute = (label) => label.slice(11);
    stackedBars(document.getElementById("chart-minutes"), data.minutes, 30, hourMinute);
    stackedBars(document.getElementById("chart-hours"), data.hours, 24, (label) => label.slice(5, 10));
    lines(document.getElementById("chart-latency"), data.latency.by_hour);
    table(document.getElementById("slowest"), ["base", "script", "runs", "average", "longest"],
      data.slowest.map((s) => [el("td", s.base.slice(0, 8), null), s.script, num(s.runs),
        num(duration(s.avg_seconds)), num(duration(s.max_seconds))]), "no runs in the last 24 hours");
    table(document.getElementById("failing"), ["base", "script", "failed", "of runs"],
      data.failing.map((s) => [el("td", s.base.slice(0, 8)), s.script, num(s.failures), num(s.runs)]),
      "no failures in the last 24 hours");
    table(document.getElementById("failures"), ["run", "ended", "base", "script", "owner", "outcome", "output (end)"],
      data.recent_failures.map((f) => {
        const output = el("pre", f.output);
        return [num(f.id), (f.finished_at || "").replace("T", " ").slice(0, 19), f.base.slice(0, 8), f.script,
          f.owner || "", el("td", outcomeName(f.outcome) + (f.return_code !== null ? " (" + f.return_code + ")" : "")),
          output];
      }), "no failed runs");
    table(document.getElementById("teams"), ["team", "queued", "oldest"],
      data.queue.teams.map((t) => [t.team, num(t.queued), num(duration(t.oldest_seconds))]), "nothing queued");
    const updated = document.getElementById("updated");
    updated.className = "";
    updated.textContent = "updated " + data.generated_at.replace("T", " ") + ", refreshes every 15 s";
  }

  async function refresh() {
    try {
      const response = await fetch("data", { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) throw new Error("the scheduler answered " + response.status);
      render(await response.json());
    } catch (error) {
      const updated = document.getElementById("updated");
      updated.className = "error";
      updated.textContent = "could not refresh: " + error.message + " (retrying)";
    } finally {
      window.setTimeout(refresh, REFRESH_MS);
    }
  }

  let resizing = null;
  window.addEventListener("resize", () => {
    window.clearTimeout(resizing);
    resizing = window.setTimeout(() => latest && render(latest), 200);
  });
  document.addEventListener("DOMContentLoaded", refresh);
})();
