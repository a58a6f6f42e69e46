/* ChronoMoE report: draws the panels the page declares (canvas heatmaps, SVG charts) from the embedded data.
 *
 * Every element with a data-panel attribute is drawn here: canvas.heatmap[data-kind] and svg.chart[data-kind].
 * All step-axis panels share one step domain and the same left and right margins, so they line up.
 * Selecting a layer (the select box, the arrow buttons, or a click on a layer row) redraws the layer panels.
 * Hand-written, no library: the page must work offline from one file.
 */
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("chronomoe-data").textContent);
  const PAL = DATA.palette;
  const LEFT = 70, RIGHT = 14, TOP = 4, AXIS = 22;
  const NS = "http://www.w3.org/2000/svg";
  const tooltip = document.getElementById("tooltip");
  const domain = DATA.domain; // [first step - 1, last step] over every run

  // -- decoding and colours ------------------------------------------------------------------------
  function decode(text, Type) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return new Type(bytes.buffer);
  }
  function rgb(hex) { return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)); }
  function lut(stops, size) {
    const colors = stops.map(rgb), out = [];
    for (let i = 0; i < size; i++) {
      const t = (i / (size - 1)) * (colors.length - 1), k = Math.min(Math.floor(t), colors.length - 2), f = t - k;
      const c = colors[k].map((v, j) => Math.round(v + (colors[k + 1][j] - v) * f));
      out.push(`rgb(${c[0]},${c[1]},${c[2]})`);
    }
    return out;
  }
  const VIRIDIS = lut(PAL.viridis, 256), LOADS = lut(PAL.loads, 254);
  const STATE_COLORS = PAL.states; // by code 0, 1, 2
  const STATE_NAMES = ["nominal", "pre_collapse", "collapse_confirmed"];
  function viridis(t) { return VIRIDIS[Math.max(0, Math.min(255, Math.round(t * 255)))]; }

  for (const run of DATA.runs) {
    const L = run.layers.length;
    run.layerRow = new Map(run.layers.map((id, row) => [id, row]));
    run.cols = run.columns.first.length;
    run.m = {
      diversity: decode(run.metrics.diversity, Float32Array), top2: decode(run.metrics.top2, Float32Array),
      maxVio: decode(run.metrics.maxVio, Float32Array), states: decode(run.metrics.states, Int8Array),
    };
    run.loads = decode(run.experts.loads, Uint8Array);
    run.ecols = run.experts.first.length;
    if (run.controller) {
      run.controller.p = decode(run.controller.pressure, Float32Array);
      run.controller.b = decode(run.controller.bias, Float32Array);
      let most = 0;
      for (const v of run.controller.b) if (v > most) most = v;
      run.controller.biasMax = most;
    }
    run.L = L;
  }
  const allLayers = [...new Set(DATA.runs.flatMap((run) => run.layers))].sort((a, b) => a - b);
  let selected = DATA.initialLayer;
  let sortExperts = true;

  // -- scales, ticks and formatting ----------------------------------------------------------------
  function xScale(width) {
    const span = Math.max(domain[1] - domain[0], 1), plot = width - LEFT - RIGHT;
    return (step) => LEFT + ((step - domain[0]) / span) * plot;
  }
  function ticks(lo, hi, count) {
    const span = hi - lo;
    if (!(span > 0)) return [lo];
    const raw = span / count, power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => span / s <= count) || 10 * power;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }
  function fmt(v, digits) { return v === null || Number.isNaN(v) ? "-" : v.toFixed(digits); }
  function columnAt(first, last, x, X) {
    let lo = 0, hi = first.length - 1;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (X(last[mid]) < x) lo = mid + 1; else hi = mid; }
    return lo;
  }
  function stepRange(first, last, c) { return first[c] === last[c] ? `step ${last[c]}` : `steps ${first[c]}..${last[c]}`; }

  // -- heatmaps (canvas) -------------------------------------------------------------------------
  function setupCanvas(canvas, height) {
    const ratio = window.devicePixelRatio || 1, width = canvas.clientWidth || canvas.parentElement.clientWidth;
    canvas.style.height = height + "px";
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, width, height);
    return [ctx, width];
  }
  function stepAxis(ctx, X, y, width) {
    ctx.strokeStyle = "#8c8c8c"; ctx.fillStyle = PAL.muted; ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    ctx.beginPath(); ctx.moveTo(LEFT, y + 0.5); ctx.lineTo(width - RIGHT, y + 0.5); ctx.stroke();
    for (const t of ticks(domain[0], domain[1], Math.max(2, Math.floor((width - LEFT - RIGHT) / 90)))) {
      const x = Math.round(X(t)) + 0.5;
      ctx.beginPath(); ctx.moveTo(x, y); ctx.lineTo(x, y + 4); ctx.stroke();
      ctx.fillText(String(t), x, y + 6);
    }
  }
  /* spec: {rows, rowLabel(r), label, first, last, color(c, r) -> css or null, tip(c, r) -> text,
   *        highlight (row or -1), onRow(r) or null, maxHeight} */
  function drawHeatmap(canvas, spec) {
    const rowH = Math.max(1, Math.min(18, Math.floor(spec.maxHeight / spec.rows)));
    const plotH = rowH * spec.rows;
    const [ctx, width] = setupCanvas(canvas, TOP + plotH + AXIS);
    const X = xScale(width);
    ctx.fillStyle = PAL.noData;
    ctx.fillRect(LEFT, TOP, width - LEFT - RIGHT, plotH);
    for (let c = 0; c < spec.first.length; c++) {
      const x0 = Math.floor(X(spec.first[c] - 1)), x1 = Math.ceil(X(spec.last[c]));
      for (let r = 0; r < spec.rows; r++) {
        const color = spec.color(c, r);
        if (color === null) continue;
        ctx.fillStyle = color;
        ctx.fillRect(x0, TOP + r * rowH, Math.max(x1 - x0, 1), rowH);
      }
    }
    ctx.fillStyle = PAL.muted; ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "right"; ctx.textBaseline = "middle";
    const every = Math.max(1, Math.ceil(13 / rowH));
    for (let r = 0; r < spec.rows; r += every) ctx.fillText(spec.rowLabel(r), LEFT - 6, TOP + r * rowH + rowH / 2);
    ctx.save(); ctx.translate(10, TOP + plotH / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center";
    ctx.fillText(spec.label, 0, 0); ctx.restore();
    if (spec.highlight >= 0) { // a marker and a bold label in the margin; lines around the row when it is tall enough
      const y = TOP + spec.highlight * rowH, middle = y + rowH / 2;
      ctx.fillStyle = "#ffffff"; ctx.fillRect(16, middle - 7, LEFT - 17, 14);
      ctx.fillStyle = "#000000"; ctx.font = "bold 11px system-ui, sans-serif";
      ctx.fillText(spec.rowLabel(spec.highlight), LEFT - 10, middle);
      ctx.beginPath(); ctx.moveTo(LEFT - 8, middle - 5); ctx.lineTo(LEFT - 1, middle); ctx.lineTo(LEFT - 8, middle + 5); ctx.fill();
      if (rowH >= 5) {
        ctx.strokeStyle = "#000000"; ctx.lineWidth = 1;
        ctx.strokeRect(LEFT + 0.5, y - 0.5, width - LEFT - RIGHT - 1, rowH + 1);
      }
    }
    stepAxis(ctx, X, TOP + plotH, width);
    canvas.onmousemove = (event) => {
      const box = canvas.getBoundingClientRect(), x = event.clientX - box.left, y = event.clientY - box.top;
      const r = Math.floor((y - TOP) / rowH);
      if (x < LEFT || x > width - RIGHT || r < 0 || r >= spec.rows) { tooltip.style.display = "none"; return; }
      const c = columnAt(spec.first, spec.last, x, X);
      tooltip.textContent = spec.tip(c, r);
      tooltip.style.display = "block";
      tooltip.style.left = Math.min(event.clientX + 14, window.innerWidth - tooltip.offsetWidth - 8) + "px";
      tooltip.style.top = event.clientY + 14 + "px";
    };
    canvas.onmouseleave = () => { tooltip.style.display = "none"; };
    canvas.onclick = (event) => {
      const box = canvas.getBoundingClientRect(), r = Math.floor((event.clientY - box.top - TOP) / rowH);
      if (spec.onRow && r >= 0 && r < spec.rows) spec.onRow(r);
    };
    canvas.dataset.rowTop = String(TOP); // the row geometry, for automation (the browser check clicks a row)
    canvas.dataset.rowHeight = String(rowH);
    canvas.dataset.rowLabels = Array.from({ length: spec.rows }, (_, r) => spec.rowLabel(r)).join(",");
  }

  const METRICS = {
    states: { label: "state", color: (v) => (v < 0 ? null : STATE_COLORS[v]), text: (v) => (v < 0 ? "no data" : STATE_NAMES[v]) },
    diversity: { label: "Neff/n", color: (v) => (Number.isNaN(v) ? null : viridis(1 - v)), text: (v) => fmt(v, 3) },
    top2: { label: "Top2", color: (v) => (Number.isNaN(v) ? null : viridis(v)), text: (v) => fmt(v, 3) },
    maxVio: { label: "MaxVio", color: null, text: (v) => fmt(v, 2) },
  };
  function maxVioColor(run, r) {
    const top = Math.log1p(Math.max(run.nExperts[r] - 1, 1));
    return (v) => (Number.isNaN(v) ? null : viridis(Math.log1p(Math.max(v, 0)) / top));
  }

  function overviewSpec(run, metric) {
    const values = run.m[metric], L = run.L, info = METRICS[metric];
    return {
      rows: L, label: "layer", first: run.columns.first, last: run.columns.last, maxHeight: 320,
      rowLabel: (r) => String(run.layers[r]),
      color: metric === "maxVio" ? (c, r) => maxVioColor(run, r)(values[c * L + r]) : (c, r) => info.color(values[c * L + r]),
      tip: (c, r) => {
        const i = c * L + r, s = run.m.states[i];
        return `${run.label} \u00B7 layer ${run.layers[r]} \u00B7 ${stepRange(run.columns.first, run.columns.last, c)}\n` +
          `state ${s < 0 ? "no data" : STATE_NAMES[s]}   Neff/n ${fmt(run.m.diversity[i], 3)} ` +
          `(Neff ${fmt(run.m.diversity[i] * run.nExperts[r], 2)}/${run.nExperts[r]})\n` +
          `Top2 ${fmt(run.m.top2[i], 3)}   MaxVio ${fmt(run.m.maxVio[i], 2)}` +
          (run.columns.width > 1 ? `\n(worst of ${run.columns.width} snapshots)` : "");
      },
      highlight: run.layerRow.has(selected) ? run.layerRow.get(selected) : -1,
      onRow: (r) => selectLayer(run.layers[r], true),
    };
  }
  function controllerSpec(run, metric) {
    const ctl = run.controller, values = metric === "pressure" ? ctl.p : ctl.b, L = run.L;
    const top = metric === "pressure" ? 1 : Math.max(ctl.biasMax, 1e-9);
    return {
      rows: L, label: "layer", first: run.columns.first, last: run.columns.last, maxHeight: 200,
      rowLabel: (r) => String(run.layers[r]),
      color: (c, r) => { const v = values[c * L + r]; return Number.isNaN(v) ? null : viridis(Math.min(v / top, 1)); },
      tip: (c, r) => `${run.label} \u00B7 layer ${run.layers[r]} \u00B7 ${stepRange(run.columns.first, run.columns.last, c)}\n` +
        `pressure ${fmt(ctl.p[c * L + r], 3)}   |bias| ${fmt(ctl.b[c * L + r], 3)}`,
      highlight: run.layerRow.has(selected) ? run.layerRow.get(selected) : -1,
      onRow: (r) => selectLayer(run.layers[r], true),
    };
  }
  function expertSpec(run, layer) {
    const row = run.layerRow.get(layer), n = run.nExperts[row], W = run.experts.wide, C = run.ecols;
    const base = row * W * C, R = run.experts.loadRange, loads = run.loads;
    let order = [...Array(n).keys()];
    if (sortExperts) {
      const totals = order.map((e) => { let s = 0; for (let c = 0; c < C; c++) { const k = loads[base + e * C + c]; s += k > 1 ? Math.pow(2, ((k - 2) / 253) * 2 * R - R) : 0; } return s; });
      order.sort((a, b) => totals[b] - totals[a] || a - b);
    }
    const load = (code) => Math.pow(2, ((code - 2) / 253) * 2 * R - R);
    return {
      rows: n, label: "expert", first: run.experts.first, last: run.experts.last, maxHeight: 300,
      rowLabel: (r) => String(order[r]),
      color: (c, r) => { const k = loads[base + order[r] * C + c]; return k === 0 ? null : k === 1 ? PAL.dead : LOADS[k - 2]; },
      tip: (c, r) => {
        const k = loads[base + order[r] * C + c], range = stepRange(run.experts.first, run.experts.last, c);
        const what = k === 0 ? "no data" : k === 1 ? "dead: no token" :
          `share \u2248 ${(100 * load(k) / n).toPrecision(3)}%   load \u2248 ${load(k).toPrecision(3)}x balanced`;
        return `${run.label} \u00B7 layer ${layer} \u00B7 expert ${order[r]} \u00B7 ${range}\n${what}`;
      },
      highlight: -1, onRow: null,
    };
  }

  // -- charts (SVG) ------------------------------------------------------------------------------
  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const key in attrs) node.setAttribute(key, attrs[key]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function text(parent, x, y, content, anchor, fill) {
    const node = el("text", { x, y, "text-anchor": anchor || "start" }, parent);
    if (fill) node.setAttribute("fill", fill);
    node.textContent = content;
    return node;
  }
  function pathOf(xs, ys, X, Y) {
    let d = "", pen = false;
    for (let i = 0; i < xs.length; i++) {
      const y = ys[i];
      if (y === null || Number.isNaN(y)) { pen = false; continue; }
      d += (pen ? "L" : "M") + X(xs[i]).toFixed(1) + " " + Y(y).toFixed(1);
      pen = true;
    }
    return d;
  }
  /* spec: {series: [{xs, ys, color, dash, width, label}], yLabel, yRange, lines: [{y, color, label}],
   *        lanesAbove: [{label, marks: [{step, color, tip}]}], lanesBelow: [{label, bars: [{first, last, value, color, tip}]}]} */
  function drawChart(svg, spec) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const width = svg.clientWidth || svg.parentElement.clientWidth, X = xScale(width);
    const laneH = 12, above = spec.lanesAbove || [], below = spec.lanesBelow || [];
    const plotTop = 8 + above.length * laneH, plotH = spec.height || 180, plotBottom = plotTop + plotH;
    const height = plotBottom + AXIS + below.length * (laneH + 4) + 4;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.style.height = height + "px";
    let [lo, hi] = spec.yRange;
    if (!(hi > lo)) { lo -= 0.5; hi += 0.5; }
    const Y = (v) => plotBottom - ((v - lo) / (hi - lo)) * plotH;
    for (const t of ticks(lo, hi, 4)) {
      el("line", { x1: LEFT, x2: width - RIGHT, y1: Y(t), y2: Y(t), class: "grid" }, svg);
      text(svg, LEFT - 6, Y(t) + 4, String(t), "end");
    }
    const label = text(svg, 0, 0, spec.yLabel, "middle");
    label.setAttribute("transform", `translate(12 ${(plotTop + plotBottom) / 2}) rotate(-90)`);
    for (const line of spec.lines || []) {
      el("line", { x1: LEFT, x2: width - RIGHT, y1: Y(line.y), y2: Y(line.y), stroke: line.color, "stroke-dasharray": "5 4", "stroke-width": 1 }, svg);
      text(svg, width - RIGHT - 4, Y(line.y) - 4, line.label, "end");
    }
    for (const series of spec.series) {
      const d = pathOf(series.xs, series.ys, X, Y);
      if (!d) continue;
      const path = el("path", { d, fill: "none", stroke: series.color, "stroke-width": series.width || 1.6, "stroke-linejoin": "round" }, svg);
      if (series.dash) path.setAttribute("stroke-dasharray", series.dash);
      el("title", {}, path).textContent = series.label;
    }
    above.forEach((lane, i) => {
      const y = 4 + i * laneH;
      text(svg, LEFT - 6, y + 9, lane.label, "end");
      for (const mark of lane.marks) {
        const x = X(mark.step);
        const tick = el("rect", { x: x - 1.5, y, width: 3, height: laneH - 2, fill: mark.color }, svg);
        el("title", {}, tick).textContent = mark.tip;
      }
    });
    el("line", { x1: LEFT, x2: width - RIGHT, y1: plotBottom, y2: plotBottom, class: "axis" }, svg);
    el("line", { x1: LEFT, x2: LEFT, y1: plotTop, y2: plotBottom, class: "axis" }, svg);
    for (const t of ticks(domain[0], domain[1], Math.max(2, Math.floor((width - LEFT - RIGHT) / 90)))) {
      el("line", { x1: X(t), x2: X(t), y1: plotBottom, y2: plotBottom + 4, class: "axis" }, svg);
      text(svg, X(t), plotBottom + 16, String(t), "middle");
    }
    below.forEach((lane, i) => {
      const y = plotBottom + AXIS + i * (laneH + 4), most = Math.max(1, ...lane.bars.map((b) => b.value));
      text(svg, LEFT - 6, y + 9, lane.label, "end");
      el("line", { x1: LEFT, x2: width - RIGHT, y1: y + laneH, y2: y + laneH, class: "grid" }, svg);
      for (const bar of lane.bars) {
        const x0 = X(bar.first - 1), x1 = X(bar.last), h = Math.max(2, (bar.value / most) * laneH);
        const rect = el("rect", { x: x0, y: y + laneH - h, width: Math.max(x1 - x0, 1.5), height: h, fill: bar.color }, svg);
        el("title", {}, rect).textContent = bar.tip;
      }
    });
  }
  function finiteRange(arrays, floor) {
    let lo = Infinity, hi = -Infinity;
    for (const values of arrays) for (const v of values) if (v !== null && !Number.isNaN(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (floor !== undefined) lo = Math.min(lo, floor);
    return lo === Infinity ? [0, 1] : [lo, hi];
  }

  function transitionLanes() {
    return DATA.runs.map((run) => ({
      label: DATA.runs.length > 1 ? run.label : "alerts",
      marks: run.transitions.map(([step, layer, source, dest]) => ({
        step, color: PAL.transitions[dest], tip: `${run.label}: step ${step}, layer ${layer}: ${STATE_NAMES[source]} \u2192 ${STATE_NAMES[dest]}`,
      })),
    }));
  }
  function decisionLanes() {
    return DATA.runs.filter((run) => run.controller && Object.keys(run.controller.actions).length).map((run) => {
      const actions = run.controller.actions, bars = [];
      for (let c = 0; c < run.cols; c++) {
        let total = 0; const parts = [];
        for (const name in actions) if (actions[name][c]) { total += actions[name][c]; parts.push(`${name} ${actions[name][c]}`); }
        if (!total) continue;
        const color = actions.abstain && actions.abstain[c] ? PAL.actions.abstain : PAL.actions[Object.keys(actions).find((a) => actions[a][c])] || PAL.muted;
        bars.push({ first: run.columns.first[c], last: run.columns.last[c], value: total, color,
          tip: `${run.label}: ${stepRange(run.columns.first, run.columns.last, c)}: ${parts.join(", ")} (decisions over all layers)` });
      }
      return { label: DATA.runs.length > 1 ? `${run.label}` : "controller", bars };
    });
  }

  // -- panels ------------------------------------------------------------------------------------
  function drawAll() {
    for (const canvas of document.querySelectorAll("canvas[data-kind=overview]")) {
      drawHeatmap(canvas, overviewSpec(DATA.runs[+canvas.dataset.run], canvas.dataset.metric));
    }
    for (const canvas of document.querySelectorAll("canvas[data-kind=controller]")) {
      drawHeatmap(canvas, controllerSpec(DATA.runs[+canvas.dataset.run], canvas.dataset.metric));
    }
    const loss = document.querySelector("svg[data-kind=loss]");
    if (loss) {
      const series = [];
      for (const run of DATA.runs) {
        series.push({ xs: run.steps, ys: run.trainLoss, color: run.color, label: `${run.label} train loss` });
        if (run.valLoss.some((v) => v !== null)) series.push({ xs: run.steps, ys: run.valLoss, color: run.color, dash: "6 3", label: `${run.label} val loss` });
      }
      drawChart(loss, { series, yLabel: "loss", yRange: finiteRange(series.map((s) => s.ys)), lanesAbove: transitionLanes(), lanesBelow: decisionLanes(), height: 220 });
    }
    drawLayer();
  }
  function drawLayer() {
    document.querySelectorAll(".selected-layer").forEach((node) => { node.textContent = String(selected); });
    for (const canvas of document.querySelectorAll("canvas[data-kind=experts]")) {
      const run = DATA.runs[+canvas.dataset.run];
      if (run.layerRow.has(selected)) { drawHeatmap(canvas, expertSpec(run, selected)); canvas.dataset.layer = String(selected); }
    }
    const layerRuns = DATA.runs.filter((run) => run.layerRow.has(selected));
    const perColumn = (run, name) => {
      const r = run.layerRow.get(selected), values = run.m[name], out = [];
      for (let c = 0; c < run.cols; c++) out.push(values[c * run.L + r]);
      return out;
    };
    const neff = document.querySelector("svg[data-kind=layer-diversity]");
    if (neff) {
      drawChart(neff, {
        series: layerRuns.map((run) => ({ xs: run.columns.last, ys: perColumn(run, "diversity"), color: run.color, label: run.label })),
        yLabel: "Neff/n", yRange: [0, 1], lines: [{ y: DATA.rules.neff_ratio, color: PAL.muted, label: `PRE_COLLAPSE below ${DATA.rules.neff_ratio}` }],
        height: 110,
      });
    }
    const top2 = document.querySelector("svg[data-kind=layer-top2]");
    if (top2) {
      drawChart(top2, {
        series: layerRuns.map((run) => ({ xs: run.columns.last, ys: perColumn(run, "top2"), color: run.color, label: run.label })),
        yLabel: "Top2", yRange: [0, 1],
        lines: [{ y: DATA.rules.pre_top2, color: STATE_COLORS[1], label: `pre ${DATA.rules.pre_top2}` },
          { y: DATA.rules.confirm_top2, color: STATE_COLORS[2], label: `confirm ${DATA.rules.confirm_top2}` }],
        height: 110,
      });
    }
    const bias = document.querySelector("svg[data-kind=layer-bias]");
    if (bias) {
      const runs = layerRuns.filter((run) => run.controller);
      const column = (run, values) => { const r = run.layerRow.get(selected), out = []; for (let c = 0; c < run.cols; c++) out.push(values[c * run.L + r]); return out; };
      const series = runs.map((run) => ({ xs: run.columns.last, ys: column(run, run.controller.b), color: run.color, label: `${run.label} |bias|` }))
        .concat(runs.map((run) => ({ xs: run.columns.last, ys: column(run, run.controller.p), color: run.color, dash: "2 3", width: 1.2, label: `${run.label} pressure` })));
      drawChart(bias, { series, yLabel: "|bias|, pressure", yRange: finiteRange(series.map((s) => s.ys), 0), height: 110 });
    }
  }
  function selectLayer(layer, scroll) {
    selected = layer;
    const box = document.getElementById("layer-select");
    if (box) box.value = String(layer);
    for (const canvas of document.querySelectorAll("canvas[data-kind=overview], canvas[data-kind=controller]")) {
      const run = DATA.runs[+canvas.dataset.run];
      drawHeatmap(canvas, canvas.dataset.kind === "overview" ? overviewSpec(run, canvas.dataset.metric) : controllerSpec(run, canvas.dataset.metric));
    }
    drawLayer();
    const target = document.getElementById("layer");
    if (scroll && target && target.getBoundingClientRect().top > window.innerHeight * 0.6) target.scrollIntoView({ behavior: "smooth" });
  }

  const box = document.getElementById("layer-select");
  if (box) {
    for (const id of allLayers) { const option = document.createElement("option"); option.value = String(id); option.textContent = `layer ${id}`; box.appendChild(option); }
    box.value = String(selected);
    box.onchange = () => selectLayer(+box.value, false);
    const move = (delta) => { const i = allLayers.indexOf(selected); selectLayer(allLayers[Math.max(0, Math.min(allLayers.length - 1, i + delta))], false); };
    document.getElementById("layer-prev").onclick = () => move(-1);
    document.getElementById("layer-next").onclick = () => move(1);
  }
  const sorter = document.getElementById("sort-experts");
  if (sorter) sorter.onchange = () => { sortExperts = sorter.checked; drawLayer(); };
  let resizeTimer = 0;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(drawAll, 150); });
  drawAll();
  document.body.dataset.ready = "1";
})();
