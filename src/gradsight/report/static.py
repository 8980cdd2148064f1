"""The report's inline stylesheet and script (kept as strings so they ship inside the package).

The script is plain ES2017 with no dependencies. It reads the JSON payload from
``<script id="gs-data" type="application/json">`` and draws every chart: SVG line
charts and canvas heatmaps with hover tooltips. Data only ever reaches the page
through ``textContent`` and attribute setters, never ``innerHTML``.
"""

CSS = r"""
:root { --fg:#1d232a; --muted:#66707a; --line:#e2e5e9; --bg:#ffffff; --panel:#f7f8fa; --accent:#0072B2;
        --bad:#e8453c; --warn:#e69f00; --ok:#009e73; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--fg); background:var(--bg); }
header.top { padding:18px 28px 10px; border-bottom:1px solid var(--line); background:var(--panel); }
header.top h1 { margin:0 0 4px; font-size:22px; }
header.top p { margin:0; color:var(--muted); }
nav.toc { padding:8px 28px; border-bottom:1px solid var(--line); font-size:13px; }
nav.toc a { margin-right:14px; color:var(--accent); text-decoration:none; }
main { padding:8px 28px 40px; max-width:1400px; }
section { margin:22px 0 34px; }
section.run { border-top:3px solid var(--line); padding-top:6px; }
section.run[data-pending] { min-height:800px; }  /* about a run's height: read when near the view */
h2 { font-size:19px; margin:14px 0 8px; }
h3 { font-size:15px; margin:18px 0 6px; }
p.note { color:var(--muted); margin:4px 0 10px; font-size:13px; }
table.kv { border-collapse:collapse; font-size:13px; }
table.kv th { text-align:left; color:var(--muted); font-weight:500; padding:2px 16px 2px 0; vertical-align:top; }
table.kv td { padding:2px 0; }
table.grid { border-collapse:collapse; font-size:13px; margin:6px 0; }
table.grid th, table.grid td { border:1px solid var(--line); padding:4px 9px; text-align:right; }
table.grid th { background:var(--panel); }
table.grid td.text, table.grid th.text { text-align:left; }
.cols { display:flex; flex-wrap:wrap; gap:24px; align-items:flex-start; }
.chart { position:relative; width:100%; min-height:120px; margin:4px 0 14px; }
.chart .title { font-weight:600; font-size:13px; margin:0 0 2px; }
.chart .legend { font-size:12px; color:var(--fg); display:flex; flex-wrap:wrap; gap:4px 14px; margin:2px 0 0 60px; }
.chart .legend span.sw { display:inline-block; width:14px; height:3px; margin-right:5px; vertical-align:middle; }
.chart svg text { font-size:11px; fill:#3b434b; }
.chart svg .grid line { stroke:#eceff2; }
.chart svg .axis line, .chart svg .axis path { stroke:#9aa3ab; }
.chart canvas { display:block; }
.controls { margin:8px 0; font-size:13px; }
.controls select { font-size:13px; padding:2px 4px; }
.diag { list-style:none; padding:0; margin:6px 0; }
.diag li { padding:5px 10px; margin:4px 0; border-left:4px solid var(--line); background:var(--panel); }
.diag li.sev-error, .diag li.sev-critical { border-color:var(--bad); }
.diag li.sev-warning { border-color:var(--warn); }
.diag li.sev-info, .diag li.sev-ok { border-color:var(--ok); }
.diag .sev { font-weight:600; text-transform:uppercase; font-size:11px; margin-right:8px; }
.graph { overflow:auto; max-height:900px; border:1px solid var(--line); padding:6px; background:#fff; }
.graph svg { max-width:100%; height:auto; }
.img img { max-width:min(100%, 720px); }
.img-full { overflow-x:auto; }
.img-full img { max-width:none; }
pre.dot { max-height:300px; overflow:auto; background:var(--panel); padding:8px; font-size:11px; }
#gs-tip { position:fixed; pointer-events:none; background:rgba(25,30,36,0.94); color:#fff; padding:5px 8px;
          border-radius:4px; font-size:12px; line-height:1.35; z-index:10; display:none; max-width:480px;
          white-space:pre-wrap; word-break:break-all; }
.live-status { font-size:13px; margin:4px 0 8px; padding:3px 8px; background:var(--panel); border-left:4px solid var(--accent); }
.live-status.status-failed, .live-status.status-unreadable { border-color:var(--bad); }
.live-status.status-finished { border-color:var(--ok); }
footer { color:var(--muted); font-size:12px; padding:12px 28px; border-top:1px solid var(--line); }
"""

JS = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("gs-data").textContent);
  var LUT = DATA.lut;
  var SVGNS = (function () { var d = document.createElement("div"); d.innerHTML = "<svg></svg>"; return d.firstChild.namespaceURI; })();
  var NONFINITE = DATA.colors.nonfinite, MISSING = DATA.colors.missing, PALETTE = DATA.colors.palette;
  function shownName(name) { return name === "" ? DATA.root_name : name; }  // the root module's display name

  // ---------------------------------------------------------------- helpers
  function decode(b64) {
    var bin = atob(b64), n = bin.length, bytes = new Uint8Array(n);
    for (var i = 0; i < n; i++) bytes[i] = bin.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  }
  function fmt(v) {
    if (v === null || v === undefined) return "-";
    if (Number.isNaN(v)) return "nan";
    if (!Number.isFinite(v)) return v > 0 ? "inf" : "-inf";
    if (v === 0) return "0";
    var a = Math.abs(v);
    if (a >= 1e-3 && a < 1e4) return String(Number(v.toPrecision(3)));
    return v.toExponential(2);
  }
  function tickLabel(v, digits) {
    if (v === 0) return "0";
    var p = digits || 3, e = Math.floor(Math.log10(Math.abs(v)) + 1e-9), m = v / Math.pow(10, e);
    if (e >= -3 && e <= 4) return String(Number(v.toPrecision(p)));
    return (Math.abs(m - Math.round(m)) < 1e-6 ? String(Math.round(m)) : String(Number(m.toPrecision(p - 1)))) + "e" + e;
  }
  function tickLabels(vals) {  // with as many digits as it takes to tell the ticks apart
    var out = vals.map(function (v) { return tickLabel(v); });
    for (var p = 4; p <= 8 && new Set(out).size < out.length; p++) out = vals.map(function (v) { return tickLabel(v, p); });
    return out;
  }
  function svg(tag, attrs, parent) {
    var e = document.createElementNS(SVGNS, tag);
    if (attrs) for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function div(cls, parent, text) {
    var e = document.createElement("div");
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function good(v, log) { return Number.isFinite(v) && (!log || v > 0); }
  function quantile(sorted, q) {
    if (!sorted.length) return NaN;
    var pos = (sorted.length - 1) * q, lo = Math.floor(pos), hi = Math.ceil(pos);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
  }
  function lutColor(frac) {
    var i = Math.max(0, Math.min(LUT.length - 1, Math.round(frac * (LUT.length - 1))));
    return LUT[i];
  }
  function niceLinearTicks(lo, hi, n) {
    if (!(hi > lo)) return [lo];
    var raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw))), r = raw / mag;
    var step = (r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10) * mag, out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }
  function logTicks(lo, hi) {
    var a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi)), span = Math.log10(hi / lo);
    function within(mults) {
      var out = [];
      for (var e = a; e <= b; e++) mults.forEach(function (m) { var v = m * Math.pow(10, e); if (v >= lo * 0.9999 && v <= hi * 1.0001) out.push(v); });
      return out.sort(function (x, y) { return x - y; });
    }
    var out = within(span >= 2.5 ? [1] : span >= 1.2 ? [1, 3] : [1, 2, 5]);
    if (out.length < 3 && span < 2.5) out = within([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    if (out.length > 8) { var every = Math.ceil(out.length / 7); out = out.filter(function (_, i) { return i % every === 0; }); }
    if (out.length < 2) out = niceLinearTicks(lo, hi, 4).filter(function (v) { return v > 0 && v >= lo && v <= hi; });
    if (out.length < 2) out = [lo, hi];
    return out;
  }

  // ---------------------------------------------------------------- tooltip
  var tip = document.createElement("div");
  tip.id = "gs-tip";
  document.body.appendChild(tip);
  function showTip(text, ev) {
    tip.textContent = text;
    tip.style.display = "block";
    var x = ev.clientX + 14, y = ev.clientY + 14, w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth - 4) x = ev.clientX - w - 14;
    if (y + h > window.innerHeight - 4) y = ev.clientY - h - 14;
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  function hideTip() { tip.style.display = "none"; }

  // ---------------------------------------------------------------- line chart
  // spec: {title, xlabel, ylabel, logY, xNames (category names for x = 0..n-1, shown in full on hover),
  //        xLabels (their axis labels: display.short_labels), series: [{name, xs, ys, color,
  //        width, dash, opacity}], bands: [{xs, lo, hi, color, opacity, name}], refs: [{y, label}],
  //        markers: [{x, label}], legend: bool, note}
  function lineChart(container, spec) {
    container.textContent = "";
    container.classList.add("chart-line");
    if (spec.title) div("title", container, spec.title);
    var W = Math.max(360, container.clientWidth || 860), H = spec.height || 300;
    var cat = !!spec.xLabels;
    var maxLen = 0;
    if (cat) spec.xLabels.forEach(function (l) { maxLen = Math.max(maxLen, Math.min(27, l.length || 7)); });
    var firstLen = cat && spec.xLabels.length ? Math.min(27, spec.xLabels[0].length || 7) : 0;
    var M = { l: Math.max(66, Math.min(130, firstLen * 4.6)), r: 18, t: 12, b: cat ? 34 + Math.round(maxLen * 5.2) : 42 };
    var log = spec.logY !== false;
    var ys = [], xs = [];
    (spec.series || []).forEach(function (s) {
      for (var i = 0; i < s.ys.length; i++) if (good(s.ys[i], log)) { ys.push(s.ys[i]); xs.push(s.xs[i]); }
    });
    (spec.bands || []).forEach(function (b) {
      for (var i = 0; i < b.xs.length; i++) { if (good(b.lo[i], log)) ys.push(b.lo[i]); if (good(b.hi[i], log)) ys.push(b.hi[i]); xs.push(b.xs[i]); }
    });
    (spec.refs || []).forEach(function (r) { ys.push(r.y); });
    var root = svg("svg", { width: W, height: H, "class": "gs-svg", role: "img" }, container);
    if (!ys.length) {
      svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, root).textContent = spec.empty || "no data";
      root.setAttribute("data-series", "0");
      return root;
    }
    var ylo = Infinity, yhi = -Infinity, xlo = Infinity, xhi = -Infinity;
    for (var k = 0; k < ys.length; k++) { if (ys[k] < ylo) ylo = ys[k]; if (ys[k] > yhi) yhi = ys[k]; }
    for (k = 0; k < xs.length; k++) { if (xs[k] < xlo) xlo = xs[k]; if (xs[k] > xhi) xhi = xs[k]; }
    root.setAttribute("data-x-max", String(xhi));  // the last step drawn, on a chart over steps
    if (log) { if (yhi <= ylo * 1.0001) { ylo /= 3; yhi *= 3; } var pad = Math.pow(yhi / ylo, 0.04); ylo /= pad; yhi *= pad; }
    else { if (yhi <= ylo) { ylo -= 1; yhi += 1; } var p2 = (yhi - ylo) * 0.05; ylo -= p2; yhi += p2; }
    if (cat) { xlo = -0.5; xhi = spec.xLabels.length - 0.5; }
    if (xhi <= xlo) { xlo -= 1; xhi += 1; }
    var pw = W - M.l - M.r, ph = H - M.t - M.b;
    function X(v) { return M.l + (v - xlo) / (xhi - xlo) * pw; }
    function Y(v) { return log ? M.t + (1 - (Math.log10(v) - Math.log10(ylo)) / (Math.log10(yhi) - Math.log10(ylo))) * ph
                               : M.t + (1 - (v - ylo) / (yhi - ylo)) * ph; }
    // grid and axes
    var grid = svg("g", { "class": "grid" }, root), axis = svg("g", { "class": "axis" }, root);
    var yt = log ? logTicks(ylo, yhi) : niceLinearTicks(ylo, yhi, 5);
    var ytl = tickLabels(yt);
    yt.forEach(function (v, i) {
      var y = Y(v);
      svg("line", { x1: M.l, x2: W - M.r, y1: y, y2: y }, grid);
      svg("text", { x: M.l - 6, y: y + 4, "text-anchor": "end", "class": "ytick" }, axis).textContent = ytl[i];
    });
    svg("line", { x1: M.l, x2: M.l, y1: M.t, y2: M.t + ph }, axis);
    svg("line", { x1: M.l, x2: W - M.r, y1: M.t + ph, y2: M.t + ph }, axis);
    if (cat) {
      var n = spec.xLabels.length, every = Math.max(1, Math.ceil(n / Math.max(4, Math.floor(pw / 15))));
      for (var i = 0; i < n; i += every) {
        var x = X(i);
        svg("line", { x1: x, x2: x, y1: M.t + ph, y2: M.t + ph + 4 }, axis);
        var t = svg("text", { x: x, y: M.t + ph + 10, "text-anchor": "end", "class": "xtick",
                              transform: "rotate(-50 " + x + " " + (M.t + ph + 10) + ")" }, axis);
        t.textContent = spec.xLabels[i];
        svg("title", null, t).textContent = shownName(spec.xNames ? spec.xNames[i] : spec.xLabels[i]);
      }
    } else {
      niceLinearTicks(xlo, xhi, Math.max(3, Math.floor(pw / 90))).forEach(function (v) {
        if (v < xlo || v > xhi || (spec.xname === "step" && v !== Math.round(v))) return;
        svg("line", { x1: X(v), x2: X(v), y1: M.t + ph, y2: M.t + ph + 4 }, axis);
        svg("text", { x: X(v), y: M.t + ph + 16, "text-anchor": "middle" }, axis).textContent = fmt(v);
      });
    }
    if (spec.xlabel) svg("text", { x: M.l + pw / 2, y: H - 4, "text-anchor": "middle" }, axis).textContent = spec.xlabel;
    if (spec.ylabel) {
      svg("text", { x: 12, y: M.t + ph / 2, "text-anchor": "middle", transform: "rotate(-90 12 " + (M.t + ph / 2) + ")" }, axis)
        .textContent = spec.ylabel + (log ? " (log)" : "");
    }
    var clipId = "clip" + Math.random().toString(36).slice(2);
    var defs = svg("defs", null, root), cp = svg("clipPath", { id: clipId }, defs);
    svg("rect", { x: M.l, y: M.t, width: pw, height: ph }, cp);
    var plot = svg("g", { "clip-path": "url(#" + clipId + ")" }, root);
    (spec.bands || []).forEach(function (b) {
      var top = [], bot = [];
      for (var i = 0; i < b.xs.length; i++) {
        if (good(b.lo[i], log) && good(b.hi[i], log)) { top.push(X(b.xs[i]).toFixed(1) + "," + Y(b.hi[i]).toFixed(1)); bot.push(X(b.xs[i]).toFixed(1) + "," + Y(b.lo[i]).toFixed(1)); }
      }
      if (top.length) svg("polygon", { points: top.concat(bot.reverse()).join(" "), fill: b.color, "fill-opacity": b.opacity || 0.25, "class": "band" }, plot);
    });
    (spec.refs || []).forEach(function (r) {
      svg("line", { x1: M.l, x2: W - M.r, y1: Y(r.y), y2: Y(r.y), stroke: "#222", "stroke-dasharray": "6 4", "stroke-width": 1.2, "class": "ref" }, plot);
      svg("text", { x: W - M.r - 4, y: Y(r.y) - 4, "text-anchor": "end" }, plot).textContent = r.label;
    });
    var paths = [];
    (spec.series || []).forEach(function (s) {
      var d = "", pen = false;
      for (var i = 0; i < s.ys.length; i++) {
        if (good(s.ys[i], log)) { d += (pen ? "L" : "M") + X(s.xs[i]).toFixed(1) + " " + Y(s.ys[i]).toFixed(1); pen = true; }
        else pen = false;
      }
      var p = svg("path", { d: d || "M0 0", fill: "none", stroke: s.color, "stroke-width": s.width || 1.4, "class": "series",
                            "stroke-opacity": s.opacity || 1, "stroke-linejoin": "round" }, plot);
      if (s.dash) p.setAttribute("stroke-dasharray", s.dash);
      p.setAttribute("data-name", s.name);
      paths.push(p);
      if (s.dots && s.ys.length <= 80) {
        for (var j = 0; j < s.ys.length; j++) if (good(s.ys[j], log)) svg("circle", { cx: X(s.xs[j]), cy: Y(s.ys[j]), r: 2.2, fill: s.color }, plot);
      }
    });
    (spec.markers || []).forEach(function (m) {
      var x = X(m.x);
      var tri = svg("path", { d: "M" + (x - 5) + " " + (M.t - 1) + "L" + (x + 5) + " " + (M.t - 1) + "L" + x + " " + (M.t + 8) + "Z", fill: NONFINITE, "class": "marker" }, root);
      tri.setAttribute("data-label", m.label);
    });
    root.setAttribute("data-series", String(paths.length));
    // hover
    var dot = svg("circle", { r: 4, fill: "none", stroke: "#111", "stroke-width": 1.5, visibility: "hidden" }, root);
    var overlay = svg("rect", { x: M.l, y: M.t - 10, width: pw, height: ph + 10, fill: "transparent", "class": "overlay" }, root);
    overlay.addEventListener("mousemove", function (ev) {
      var box = root.getBoundingClientRect(), mx = ev.clientX - box.left, my = ev.clientY - box.top;
      var xv = xlo + (mx - M.l) / pw * (xhi - xlo);
      if (my < M.t && spec.markers && spec.markers.length) {
        var bm = null, bd = 8;
        spec.markers.forEach(function (m) { var dd = Math.abs(X(m.x) - mx); if (dd < bd) { bd = dd; bm = m; } });
        if (bm) { dot.setAttribute("visibility", "hidden"); showTip(bm.label, ev); return; }
      }
      var best = null, bestD = Infinity;
      (spec.series || []).forEach(function (s) {
        if (s.hover === false) return;
        var lo = 0, hi = s.xs.length - 1;
        while (hi - lo > 1) { var mid = (lo + hi) >> 1; if (s.xs[mid] < xv) lo = mid; else hi = mid; }
        [lo, hi].forEach(function (i) {
          if (i < 0 || i >= s.ys.length) return;
          var v = s.ys[i];
          var py = good(v, log) ? Y(v) : (Number.isFinite(v) ? null : M.t);
          if (py === null) return;
          var d = Math.abs(X(s.xs[i]) - mx) * 2 + Math.abs(py - my);
          if (d < bestD) { bestD = d; best = { s: s, i: i, py: py }; }
        });
      });
      if (!best) { hideTip(); dot.setAttribute("visibility", "hidden"); return; }
      var s = best.s, i = best.i;
      dot.setAttribute("cx", X(s.xs[i])); dot.setAttribute("cy", best.py); dot.setAttribute("visibility", "visible");
      var where = cat ? shownName((spec.xNames || spec.xLabels)[s.xs[i]]) : (spec.xname || "x") + " " + fmt(s.xs[i]);
      showTip((s.hoverName || s.name) + "\n" + where + "\n" + (spec.ylabel || "value") + ": " + fmt(s.ys[i]), ev);
    });
    overlay.addEventListener("mouseleave", function () { hideTip(); dot.setAttribute("visibility", "hidden"); });
    if (spec.legend !== false) {
      var items = (spec.series || []).filter(function (s) { return s.legend !== false; }).slice(0, 14);
      (spec.bands || []).forEach(function (b) { if (b.name) items.push({ name: b.name, color: b.color, band: true, opacity: b.opacity }); });
      if (spec.markers && spec.markers.length) items.push({ name: spec.markerName || "non-finite gradients", color: NONFINITE });
      if (items.length) {
        var lg = div("legend", container);
        items.forEach(function (s) {
          var it = document.createElement("span"), sw = document.createElement("span");
          sw.className = "sw"; sw.style.background = s.color;
          if (s.band) { sw.style.height = "9px"; sw.style.opacity = Math.min(1, (s.opacity || 0.25) * 2); }
          it.appendChild(sw); it.appendChild(document.createTextNode(s.name));
          lg.appendChild(it);
        });
      }
    }
    if (spec.note) div("note", container, spec.note).className = "note";
    return root;
  }

  // ---------------------------------------------------------------- heatmap
  // spec: {title, rows (names, shown in full on hover), rowLabels (their axis labels), cols (steps),
  //        data (Float32Array rows*cols), markers: [[row, col]], stat, share (a share of a whole:
  //        a linear scale from 0 to 1, 0 a value, not a missing cell)}
  function heatmapChart(container, spec) {
    container.textContent = "";
    if (spec.title) div("title", container, spec.title);
    var rows = spec.rows.length, cols = spec.cols.length, data = spec.data;
    var lo = Infinity, hi = -Infinity;
    for (var k = 0; k < data.length; k++) { var v = data[k]; if (v > 0 && Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; } }
    if (spec.share) { lo = 0; hi = 1; }
    var W = Math.max(360, container.clientWidth || 860);
    var M = { l: 170, r: 86, t: 8, b: 40 };
    var ph = Math.min(900, Math.max(140, rows * 12)), H = ph + M.t + M.b, pw = W - M.l - M.r;
    var dpr = window.devicePixelRatio || 1;
    var cv = document.createElement("canvas");
    cv.width = Math.round(W * dpr); cv.height = Math.round(H * dpr);
    cv.style.width = W + "px"; cv.style.height = H + "px";
    cv.setAttribute("data-rows", String(rows)); cv.setAttribute("data-cols", String(cols));
    cv.className = "gs-heatmap";
    container.appendChild(cv);
    var ctx = cv.getContext("2d");
    ctx.scale(dpr, dpr);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    if (!rows || !cols || !(hi >= lo)) {
      ctx.fillStyle = "#666"; ctx.font = "12px sans-serif"; ctx.fillText(spec.empty || "no data", W / 2 - 30, H / 2);
      return cv;
    }
    if (!spec.share && hi <= lo * 1.0001) { lo /= 3; hi *= 3; }
    var llo = Math.log10(lo), lhi = Math.log10(hi);
    function frac(v) { return spec.share ? v : (Math.log10(v) - llo) / (lhi - llo); }
    var img = ctx.createImageData(cols, rows), px = img.data;
    function hex(c) { return [parseInt(c.slice(1, 3), 16), parseInt(c.slice(3, 5), 16), parseInt(c.slice(5, 7), 16)]; }
    var lutRGB = LUT.map(hex), bad = hex(NONFINITE), miss = hex(MISSING);
    for (var r = 0; r < rows; r++) for (var c = 0; c < cols; c++) {
      var val = data[r * cols + c], rgb;
      if (Number.isNaN(val) || (val === 0 && !spec.share)) rgb = miss;
      else if (!Number.isFinite(val)) rgb = bad;
      else rgb = lutRGB[Math.max(0, Math.min(255, Math.round(frac(val) * 255)))];
      var o = (r * cols + c) * 4;
      px[o] = rgb[0]; px[o + 1] = rgb[1]; px[o + 2] = rgb[2]; px[o + 3] = 255;
    }
    var off = document.createElement("canvas");
    off.width = cols; off.height = rows;
    off.getContext("2d").putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, M.l, M.t, pw, ph);
    // markers (non-finite gradients)
    (spec.markers || []).forEach(function (m) {
      var x = M.l + (m[1] + 0.5) / cols * pw, y = M.t + (m[0] + 0.5) / rows * ph;
      ctx.strokeStyle = "#fff"; ctx.lineWidth = 3; ctx.beginPath(); ctx.moveTo(x - 4, y - 4); ctx.lineTo(x + 4, y + 4); ctx.moveTo(x + 4, y - 4); ctx.lineTo(x - 4, y + 4); ctx.stroke();
      ctx.strokeStyle = NONFINITE; ctx.lineWidth = 1.6; ctx.stroke();
    });
    // labels
    ctx.fillStyle = "#3b434b"; ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "right"; ctx.textBaseline = "middle";
    var every = Math.max(1, Math.ceil(rows / Math.floor(ph / 13)));
    for (var i = 0; i < rows; i += every) {
      ctx.fillText(spec.rowLabels[i], M.l - 5, M.t + (i + 0.5) / rows * ph);
    }
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    var nx = Math.min(cols, Math.max(2, Math.floor(pw / 90)));
    for (var j = 0; j < nx; j++) {
      var ci = Math.round(j * (cols - 1) / Math.max(1, nx - 1));
      ctx.fillText(String(spec.cols[ci]), M.l + (ci + 0.5) / cols * pw, M.t + ph + 5);
    }
    ctx.fillText("step", M.l + pw / 2, M.t + ph + 22);
    // colour bar
    var bx = W - M.r + 12, bw = 12;
    for (var y2 = 0; y2 < ph; y2++) { ctx.fillStyle = lutColor(1 - y2 / ph); ctx.fillRect(bx, M.t + y2, bw, 1.5); }
    ctx.textAlign = "left"; ctx.textBaseline = "middle"; ctx.fillStyle = "#3b434b";
    var bt = spec.share ? [0, 0.25, 0.5, 0.75, 1] : logTicks(lo, hi), btl = tickLabels(bt);
    cv.setAttribute("data-colorbar-ticks", btl.join(" "));
    bt.forEach(function (t, i) { var yy = M.t + (1 - frac(t)) * ph; ctx.fillRect(bx + bw, yy, 3, 1); ctx.fillText(btl[i], bx + bw + 5, yy); });
    cv.addEventListener("mousemove", function (ev) {
      var box = cv.getBoundingClientRect(), mx = ev.clientX - box.left - M.l, my = ev.clientY - box.top - M.t;
      if (mx < 0 && mx >= -M.l && my >= 0 && my < ph) { showTip(shownName(spec.rows[Math.floor(my / ph * rows)]), ev); return; }  // a row label
      if (mx < 0 || my < 0 || mx >= pw || my >= ph) { hideTip(); return; }
      var c2 = Math.floor(mx / pw * cols), r2 = Math.floor(my / ph * rows);
      var name = shownName(spec.rows[r2]);
      showTip(name + "\nstep " + spec.cols[c2] + "\n" + spec.stat + ": " + fmt(data[r2 * cols + c2]), ev);
    });
    cv.addEventListener("mouseleave", hideTip);
    return cv;
  }

  // ---------------------------------------------------------------- per-run charts
  // the role filter: "default" (the weighted layers and the head, or every name of a level without them),
  // "all", or one role; rows of other roles are left out of every layer chart
  function rolesFor(run, level, choice) {
    if (choice === "all") return null;
    if (!choice || choice === "default") return (run.default_roles || {})[level] || null;
    return [choice];
  }
  function roleLabel(run, level, choice) {
    var keep = rolesFor(run, level, choice);
    if (!keep) return "all";
    return choice === "default" || !choice ? "weighted + head" : choice;
  }
  function matrixOf(run, key, choice) {
    var m = run.matrices[key];
    if (!m) return null;
    if (!m._data) m._data = decode(m.data);
    var steps = m.steps || run.steps;  // a matrix of its own steps (update ratios), or the run's
    var names = run.names[m.level], labels = run.labels[m.level], data = m._data, k = steps.length;
    var keep = rolesFor(run, m.level, choice), roles = (run.roles || {})[m.level];
    if (keep && roles) {
      var rows = [];
      for (var r = 0; r < names.length; r++) if (keep.indexOf(roles[r]) >= 0) rows.push(r);
      if (rows.length < names.length) {
        var out = new Float32Array(rows.length * k);
        rows.forEach(function (r0, i) { out.set(data.subarray(r0 * k, (r0 + 1) * k), i * k); });
        names = rows.map(function (r0) { return names[r0]; });
        labels = rows.map(function (r0) { return labels[r0]; });
        data = out;
      }
    }
    return { names: names, labels: labels, steps: steps, data: data, stat: m.stat, level: m.level, share: !!m.share, shown: roleLabel(run, m.level, choice) };
  }
  function column(m, c) { var n = m.names.length, k = m.steps.length, out = new Array(n); for (var r = 0; r < n; r++) out[r] = m.data[r * k + c]; return out; }
  function row(m, r) { var k = m.steps.length; return Array.prototype.slice.call(m.data.subarray(r * k, (r + 1) * k)); }
  function rowQuantiles(m, qs, withZeros) {  // per layer, over steps (positive values; a share's zeros too)
    var n = m.names.length, k = m.steps.length, out = qs.map(function () { return new Array(n); });
    var buf = new Float64Array(k);
    for (var r = 0; r < n; r++) {
      var cnt = 0;
      for (var c = 0; c < k; c++) { var v = m.data[r * k + c]; if ((v > 0 || (withZeros && v === 0)) && Number.isFinite(v)) buf[cnt++] = v; }
      var vals = buf.subarray(0, cnt).sort();  // a typed array sorts by value, natively
      qs.forEach(function (q, i) { out[i][r] = quantile(vals, q); });
    }
    return out;
  }
  function colQuantiles(m, qs) {  // per step, over layers
    var n = m.names.length, k = m.steps.length, out = qs.map(function () { return new Array(k); });
    var buf = new Float64Array(n);
    for (var c = 0; c < k; c++) {
      var cnt = 0;
      for (var r = 0; r < n; r++) { var v = m.data[r * k + c]; if (v > 0 && Number.isFinite(v)) buf[cnt++] = v; }
      var vals = buf.subarray(0, cnt).sort();
      qs.forEach(function (q, i) { out[i][c] = quantile(vals, q); });
    }
    return out;
  }
  function range(n) { var a = new Array(n); for (var i = 0; i < n; i++) a[i] = i; return a; }
  var STEP_COLORS = ["#0d0887", "#6a00a8", "#b12a90", "#e16462", "#fca636", "#f0f921"];

  function drawFlow(el, run, key, choice) {
    var m = matrixOf(run, key, choice);
    if (!m) { el.textContent = "no data"; return; }
    var xs = range(m.names.length), q = rowQuantiles(m, [0.05, 0.5, 0.95], m.share);
    var cols = run.flow_columns;  // the overlaid steps, chosen by the same sampler as every step sample
    var series = [{ name: "median over steps", xs: xs, ys: q[1], color: "#333", width: 2.4 }];
    cols.forEach(function (c, i) {
      series.push({ name: "step " + m.steps[c], xs: xs, ys: column(m, c), color: STEP_COLORS[Math.round(i * 4 / Math.max(1, cols.length - 1))], width: 1.3, dots: true });
    });
    var markers = [];
    (run.nonfinite || []).forEach(function (e) {
      var r = m.names.indexOf(e[1]);
      if (r >= 0 && m.level === "layer") markers.push({ x: r, label: shownName(e[1]) + ": " + e[2] + " NaN/Inf elements at step " + e[0] });
    });
    var by = m.level === "layer" ? "layer" : m.level === "param" ? "parameter" : m.level;
    lineChart(el, { title: m.stat + " by " + by + " (" + m.shown + ", forward order)", xNames: m.names, xLabels: m.labels, series: series, ylabel: m.stat, logY: !m.share,
      bands: [{ xs: xs, lo: q[0], hi: q[2], color: "#9e9e9e", opacity: 0.3, name: "5\u201395% over " + m.steps.length + " steps" }],
      markers: markers, xlabel: by + ", input \u2192 output", height: 340, empty: "no " + m.shown + " " + by + "s" });
  }
  function drawHeatmap(el, run, key, choice) {
    var m = matrixOf(run, key, choice);
    if (!m) { el.textContent = "no data"; return; }
    var marks = [];
    if (m.level === "layer") (run.nonfinite || []).forEach(function (e) {
      var r = m.names.indexOf(e[1]); if (r < 0) return;
      var best = 0, bd = Infinity;
      m.steps.forEach(function (s, c) { var d = Math.abs(s - e[0]); if (d < bd) { bd = d; best = c; } });
      marks.push([r, best]);
    });
    heatmapChart(el, { title: m.stat + ": " + (m.level === "layer" ? "layer" : m.level) + " (" + m.shown + ") \u00d7 step (" + (m.share ? "share, 0 to 1" : "log colour") + ")", rows: m.names, rowLabels: m.labels, cols: m.steps, data: m.data, markers: marks, stat: m.stat, share: m.share });
  }
  function drawBands(el, run, key, choice) {
    var m = matrixOf(run, key, choice);
    if (!m) { el.textContent = "no data"; return; }
    var q = colQuantiles(m, [0.05, 0.25, 0.5, 0.75, 0.95]), xs = m.steps;
    var series = [{ name: "median of layers", xs: xs, ys: q[2], color: PALETTE[0], width: 2 }];
    if (m.names.length > 1) {
      series.push({ name: "first: " + shownName(m.names[0]), xs: xs, ys: row(m, 0), color: PALETTE[1], dash: "5 3", width: 1.2 });
      series.push({ name: "last: " + shownName(m.names[m.names.length - 1]), xs: xs, ys: row(m, m.names.length - 1), color: PALETTE[2], dash: "5 3", width: 1.2 });
    }
    var steps = {};
    (run.nonfinite || []).forEach(function (e) { steps[e[0]] = (steps[e[0]] || 0) + 1; });
    var markers = Object.keys(steps).map(function (s) { return { x: Number(s), label: "step " + s + ": non-finite gradients in " + steps[s] + " layer(s)" }; });
    lineChart(el, { title: m.stat + " across " + (m.level === "layer" ? "layers" : m.level + "s") + " (" + m.shown + ") over training (quantile bands)", series: series, ylabel: m.stat, xlabel: "step", xname: "step",
      bands: [{ xs: xs, lo: q[0], hi: q[4], color: PALETTE[0], opacity: 0.15, name: "5\u201395% of layers" },
              { xs: xs, lo: q[1], hi: q[3], color: PALETTE[0], opacity: 0.3, name: "25\u201375% of layers" }],
      markers: markers });
  }
  function drawUpdate(el, run, choice) {
    var key = run.update_key, m = key ? matrixOf(run, key, choice) : null;
    if (!m) { el.textContent = ""; el.style.display = "none"; return; }
    var n = m.names.length, series = [];
    for (var r = 0; r < n; r++) {
      // a layer measured at some of the steps only (rotating snapshots): its line joins its own values
      var ys = row(m, r), xs = [], own = [];
      for (var i = 0; i < ys.length; i++) { if (!Number.isNaN(ys[i])) { xs.push(m.steps[i]); own.push(ys[i]); } }
      series.push({ name: shownName(m.names[r]), hoverName: shownName(m.names[r]) + " (depth " + r + ")", xs: xs, ys: own,
        color: lutColor(n > 1 ? r / (n - 1) : 0), width: n > 100 ? 0.6 : 1.1, opacity: n > 100 ? 0.6 : 0.9, legend: false });
    }
    lineChart(el, { title: "update ratio \u2016\u0394w\u2016/\u2016w\u2016 per layer (" + m.shown + "; dark = first layer, bright = last)", series: series,
      refs: [{ y: DATA.update_reference, label: "reference " + DATA.update_reference }], ylabel: "update_ratio", xlabel: "step", xname: "step", legend: false });
  }
  function lineValues(line) { if (!line._values) line._values = decode(line.values); return line._values; }
  function drawModel(el, run) {
    var mod = run.model;
    if (!mod || !mod.steps.length) { el.style.display = "none"; return; }
    var steps = {};
    (run.nonfinite || []).forEach(function (e) { steps[e[0]] = (steps[e[0]] || 0) + 1; });
    var markers = Object.keys(steps).map(function (s) { return { x: Number(s), label: "step " + s + ": NaN/Inf gradients in " + steps[s] + " layer(s)" }; });
    lineChart(el, { title: "whole-model " + mod.stat + " (every recorded step" + (mod.sampled ? ", evenly spaced" : "") + ")", xname: "step",
      series: [{ name: "model " + mod.stat, xs: mod.steps, ys: lineValues(mod), color: PALETTE[0], width: 1.2 }], ylabel: mod.stat, xlabel: "step",
      markers: markers, markerName: "NaN/Inf gradients (" + Object.keys(steps).length + (Object.keys(steps).length === 1 ? " step)" : " steps)"), height: 240 });
  }
  function drawMetrics(el, run) {
    var names = Object.keys(run.metrics || {});
    if (!names.length) { el.style.display = "none"; return; }
    el.textContent = "";
    var wrap = div("cols", el);
    names.slice(0, 8).forEach(function (name, i) {
      var mt = run.metrics[name], box = div("chart", wrap), vals = lineValues(mt);
      box.style.width = names.length > 1 ? "48%" : "100%";
      var pos = Array.prototype.every.call(vals, function (v) { return !Number.isFinite(v) || v > 0; });
      lineChart(box, { title: name, series: [{ name: name, xs: mt.steps, ys: vals, color: PALETTE[i % PALETTE.length], width: 1.3, dots: mt.steps.length <= 40 }],
        logY: name === "loss" && pos, ylabel: name, xlabel: "step", xname: "step", legend: false, height: 220 });
    });
  }
  function drawGraphHover(section) {
    section.querySelectorAll(".graph svg g.node").forEach(function (g) {
      var a = g.querySelector("a"), t = g.querySelector("title");
      var text = a && (a.getAttribute("xlink:title") || a.getAttribute("title")) || (t && t.textContent) || "";
      if (t) t.remove();
      g.addEventListener("mousemove", function (ev) { showTip(text, ev); });
      g.addEventListener("mouseleave", hideTip);
    });
  }

  // A page of many runs draws a chart when it comes near the view (and again, when its data
  // changed, the next time it does): opening it costs the charts in view, not all of them.
  var LAZY = DATA.runs.length > 6 && "IntersectionObserver" in window, near = new WeakSet(), pending = new Map();
  var watcher = LAZY ? new IntersectionObserver(function (entries) {
    entries.forEach(function (e) {
      if (!e.isIntersecting) { near.delete(e.target); return; }
      near.add(e.target);
      var draw = pending.get(e.target);
      if (draw) { pending.delete(e.target); draw(); }
    });
    document.body.setAttribute("data-rendered", "true");  // the charts in view are drawn
  }, { rootMargin: "800px 0px" }) : null;
  function drawRun(section, run) {
    var sel = section.querySelector("select.stat"), rsel = section.querySelector("select.role");
    if (LAZY) section.querySelectorAll("[data-chart]").forEach(function (el) { watcher.observe(el); });
    function redraw() {
      var key = sel ? sel.value : run.default_key, choice = rsel ? rsel.value : "default";
      section.querySelectorAll("[data-chart]").forEach(function (el) {
        if (LAZY && !near.has(el)) { pending.set(el, redraw); return; }  // drawn when it comes near the view
        var kind = el.getAttribute("data-chart");
        try {
          if (kind === "flow") drawFlow(el, run, key, choice);
          else if (kind === "heatmap") drawHeatmap(el, run, key, choice);
          else if (kind === "bands") drawBands(el, run, key, choice);
          else if (kind === "update") drawUpdate(el, run, choice);
          else if (kind === "model") drawModel(el, run);
          else if (kind === "metrics") drawMetrics(el, run);
        } catch (err) { el.textContent = "could not draw this chart: " + err; throw err; }
      });
    }
    if (sel) sel.addEventListener("change", redraw);
    if (rsel) rsel.addEventListener("change", redraw);
    redraw();
    drawGraphHover(section);
    return redraw;
  }

  // A live page of many runs lists them (section "pending": a heading) and asks the server for
  // a run's section and payload (the report's own) when it comes near the view.
  var pollAbort = null;
  var fetcher = LAZY ? new IntersectionObserver(function (entries) {
    entries.forEach(function (e) {
      if (!e.isIntersecting) return;
      fetcher.unobserve(e.target);
      loadRun(e.target, Number(e.target.id.slice(4)));
    });
  }, { rootMargin: "800px 0px" }) : null;
  function fetchWhenNear(section, i) { if (fetcher) fetcher.observe(section); else loadRun(section, i); }
  function loadRun(section, i, failures) {
    fetch("api/section?run=" + encodeURIComponent(DATA.runs[i].live.key), { cache: "no-store" }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(function (ans) {
      var t = document.createElement("template");
      t.innerHTML = ans.html;  // the server's section: every name in it escaped as in the report
      var fresh = t.content.querySelector("section.run");
      if (!fresh || fresh.id !== section.id) throw new Error("not this run's section");
      section.replaceChildren.apply(section, Array.from(fresh.childNodes));  // the same element, filled
      section.removeAttribute("data-pending");
      DATA.runs[i] = ans.data;
      redraws.push(runRedraws[i] = drawRun(section, ans.data));
      section.setAttribute("data-loaded", "true");
      compareRun(ans.data);
      loadFigures(section, ans.data.live, 0);
      if (pollAbort) pollAbort.abort();  // the poll asks for it from now on
    }).catch(function (err) {
      var el = section.querySelector("[data-live=status]");
      if (el) el.textContent = "could not load this run: " + err;
      var n = (failures || 0) + 1;
      if (n < 5) setTimeout(function () { loadRun(section, i, n); }, 1000 * n);
    });
  }

  function drawCompare(el, key, choice) {
    var series = [], shown = {};
    DATA.runs.forEach(function (run) {
      if (run.pending) return;
      // each run's medians kept while its table stays the same: a page of many runs redraws the
      // comparison as each run loads and as steps arrive, and the other runs' did not change
      var cache = run._cmp || (run._cmp = {}), at = key + "|" + choice, src = run.matrices[key], kept = cache[at];
      var m, q;
      if (kept && src && kept.data === src._data) { m = kept.m; q = kept.q; }
      else {
        m = matrixOf(run, key, choice);
        if (!m) return;
        q = rowQuantiles(m, [0.5])[0];
        cache[at] = { data: run.matrices[key]._data, m: m, q: q };
      }
      var n = m.names.length;
      shown[m.shown] = true;
      var xs = range(n).map(function (i) { return n > 1 ? i / (n - 1) : 0; });
      series.push({ name: run.name + " (" + n + " layers)", xs: xs, ys: q, color: run.color, width: 1.8, dash: run.dash || null, dots: n <= 60 });
    });
    var stat = key.split(":").slice(1).join(":");
    lineChart(el, { title: stat + " by relative depth (" + Object.keys(shown).join(" / ") + "), median over steps (0 = first layer, 1 = last)", series: series, ylabel: stat,
      xlabel: "relative depth", xname: "relative depth", height: 360, empty: "no run has " + stat });
  }

  var redraws = [], runRedraws = [];
  DATA.runs.forEach(function (run, i) {
    var section = document.getElementById("run-" + i);
    if (section && run.pending) fetchWhenNear(section, i);
    else if (section) redraws.push(runRedraws[i] = drawRun(section, run));
  });
  var cmp = document.getElementById("compare-chart"), cdraw = null;
  // a run loaded into a page of many: its statistics join the comparison's choices, and it is drawn there
  function compareRun(run) {
    var csel = document.getElementById("compare-stat");
    if (csel) Object.keys(run.matrices || {}).forEach(function (key) {
      var m = run.matrices[key];
      if (!m.level || key !== m.level + ":" + m.stat) return;  // a table of its own steps: the same statistic
      if (Array.prototype.some.call(csel.options, function (o) { return o.value === key; })) return;
      var o = document.createElement("option");
      o.value = key; o.textContent = m.level === "layer" ? m.stat : m.stat + " (" + m.level + ")";
      csel.appendChild(o);
    });
    if (cdraw) cdraw();
  }
  if (cmp) {
    var csel = document.getElementById("compare-stat"), crole = document.getElementById("compare-role");
    cdraw = function () { drawCompare(cmp, csel ? csel.value : DATA.compare_key, crole ? crole.value : "default"); };
    if (csel) csel.addEventListener("change", cdraw);
    if (crole) crole.addEventListener("change", cdraw);
    cdraw();
    redraws.push(cdraw);
  }
  if (DATA.live) live(DATA.live);
  var timer = null, lastW = window.innerWidth;
  window.addEventListener("resize", function () {
    if (Math.abs(window.innerWidth - lastW) < 40) return;
    lastW = window.innerWidth;
    clearTimeout(timer);
    timer = setTimeout(function () { redraws.forEach(function (f) { f(); }); }, 200);
  });
  if (!LAZY) document.body.setAttribute("data-rendered", "true");

  // ---------------------------------------------------------------- live (gradsight serve)
  // The same page, fed by the server: it asks for the steps after the last one it holds,
  // appends them to every table and line, and redraws; the status and the findings come along.
  function evenly(n, m) {  // positions 0..n-1, at most m evenly spaced, first and last included
    if (n <= m) return range(n);
    var out = [], prev = -1;
    for (var i = 0; i < m; i++) { var k = Math.round(i * (n - 1) / (m - 1)); if (k !== prev) out.push(k); prev = k; }
    return out;
  }
  function concat(a, b) { var out = new Float32Array(a.length + b.length); out.set(a); out.set(b, a.length); return out; }
  function pick(arr, idx) { return idx.map(function (i) { return arr[i]; }); }
  function pickRows(data, rows, k, idx) {
    var out = new Float32Array(rows * idx.length);
    for (var r = 0; r < rows; r++) for (var j = 0; j < idx.length; j++) out[r * idx.length + j] = data[r * k + idx[j]];
    return out;
  }
  function appendLine(line, add) {
    line._values = concat(lineValues(line), decode(add.values));
    line.steps = line.steps.concat(add.steps);
    if (line.steps.length > 2 * DATA.live.max_line_points) {
      var idx = evenly(line.steps.length, DATA.live.max_line_points);
      line.steps = pick(line.steps, idx); line._values = Float32Array.from(pick(Array.from(line._values), idx));
      line.sampled = true;
    }
  }
  function append(run, u) {  // false: the page must be made again (its layers or statistics changed)
    if (u.layout !== undefined && u.layout !== run.live.layout) return false;
    var n = u.steps.length, k = run.steps.length, keys = Object.keys(run.matrices);
    if (Object.keys(u.matrices).some(function (key) {  // a statistic without values when the page was made
      return !run.matrices[key] && decode(u.matrices[key]).some(function (v) { return !isNaN(v); });
    })) return false;
    var added = {};
    for (var i = 0; i < keys.length; i++) {
      var m = run.matrices[keys[i]], key = m.steps ? m.level + ":" + m.stat : keys[i];
      var rows = run.names[m.level].length, add = u.matrices[key] ? decode(u.matrices[key]) : null;
      if (add && add.length !== rows * n) return false;
      added[keys[i]] = add;
    }
    keys.forEach(function (key) {
      var m = run.matrices[key], rows = run.names[m.level].length, old = m._data || decode(m.data), add = added[key];
      // a table of its own steps (update ratios measured every k-th step) takes the new steps it was written at
      var cols = m.steps ? ((u.written || {})[m.level + ":" + m.stat] || range(n)) : range(n);
      var kk = m.steps ? m.steps.length : k, c = cols.length, out = new Float32Array(rows * (kk + c)).fill(NaN);
      for (var r = 0; r < rows; r++) {
        out.set(old.subarray(r * kk, (r + 1) * kk), r * (kk + c));
        if (add) for (var j = 0; j < c; j++) out[r * (kk + c) + kk + j] = add[r * n + cols[j]];
      }
      m._data = out;
      if (m.steps) {
        m.steps = m.steps.concat(pick(u.steps, cols));
        if (m.steps.length > 2 * DATA.live.max_steps) {
          var own = evenly(m.steps.length, DATA.live.max_steps);
          m._data = pickRows(m._data, rows, m.steps.length, own);
          m.steps = pick(m.steps, own);
        }
      }
    });
    run.steps = run.steps.concat(u.steps);
    if (run.steps.length > 2 * DATA.live.max_steps) {  // keep the charts as light as the report's
      var idx = evenly(run.steps.length, DATA.live.max_steps), kk = run.steps.length;
      keys.forEach(function (key) { var m = run.matrices[key]; if (!m.steps) m._data = pickRows(m._data, run.names[m.level].length, kk, idx); });
      run.steps = pick(run.steps, idx);
    }
    run.flow_columns = evenly(run.steps.length, DATA.live.overlaid);
    run.total_steps = u.total_steps;
    if (u.nonfinite) run.nonfinite = (run.nonfinite || []).concat(u.nonfinite).slice(0, DATA.live.max_events);
    Object.keys(u.lines || {}).forEach(function (key) {
      var level = key.split(":")[0], stat = key.slice(level.length + 1), add = u.lines[key];
      if (level === "model" && run.model && run.model.stat === stat) appendLine(run.model, add);
      else if (level === "metric") {
        if (!run.metrics[stat]) run.metrics[stat] = { steps: [], values: "", _values: new Float32Array(0) };
        appendLine(run.metrics[stat], add);
      }
    });
    return true;
  }
  function showStatus(section, u) {
    var el = section.querySelector("[data-live=status]");
    if (!el) return;
    var parts = ["status: " + u.status];
    if (u.last !== undefined && u.last !== null) parts.push("last step " + u.last);
    if (u.writer === "gone") parts.push("the recording process has ended without closing the run");
    if (u.steps_dropped) parts.push(u.steps_dropped + " steps dropped");
    if (u.store_error) parts.push("store error: " + u.store_error);
    if (u.error) parts.push("error: " + u.error);
    el.textContent = parts.join(" \u00b7 ");
    el.className = "live-status status-" + String(u.status).replace(/[^a-z]/g, "");
    section.setAttribute("data-status", u.status);
  }
  function showSummary(section, run, u) {  // the summary's rows that change while a run records
    function row(label) {
      var cells = section.querySelectorAll("table.kv td[data-row]");
      for (var i = 0; i < cells.length; i++) if (cells[i].getAttribute("data-row") === label) return cells[i];
      return null;
    }
    var status = row("status"), steps = row("steps recorded"), layers = row("layers");
    if (layers && u.depth_source) layers.textContent = layers.textContent.replace(/\(depth order from [^)]*\)/, "(depth order from " + u.depth_source + ")");
    if (status) status.textContent = u.status + (u.error ? " (" + u.error + ")" : "");
    if (steps && typeof run.total_steps === "number" && run.steps.length) {
      steps.textContent = run.total_steps.toLocaleString("en-US") + " (steps " + run.steps[0] + "\u2026" +
        run.steps[run.steps.length - 1] + ")";
    }
    Object.keys(run.metrics || {}).forEach(function (name) {
      var line = run.metrics[name], cell = row(name + " (last)"), n = line.steps.length;
      var values = lineValues(line);
      if (!cell || !n || values.length !== n) return;
      var v = values[n - 1];
      cell.textContent = (Number.isFinite(v) && v !== 0 ? String(Number(v.toPrecision(4))) : fmt(v)) + " at step " + line.steps[n - 1];
    });
  }
  function showFindings(section, findings) {
    var ul = section.querySelector("[data-live=findings]");
    if (!ul) return;
    ul.textContent = "";
    if (!findings.length) { var none = document.createElement("li"); none.className = "none"; none.textContent = "No findings."; ul.appendChild(none); }
    findings.forEach(function (f) {
      var li = document.createElement("li"), sev = document.createElement("span");
      li.className = "sev-" + String(f.severity).replace(/[^a-z0-9_-]/g, "");
      li.setAttribute("data-code", f.code);
      sev.className = "sev"; sev.textContent = f.severity;
      li.appendChild(sev);
      li.appendChild(document.createTextNode(f.message + (f.step !== null && f.step !== undefined ? " (since step " + f.step + ")" : "")));
      ul.appendChild(li);
    });
  }
  // The figures the server draws (gradient distributions, noise scale, in its low-priority
  // thread, when asked): asked for every figures_s seconds while the run records, and put in
  // when they show a later step than the page's.
  function putFigures(box, lv, ans) {
    lv.figStep = ans.step; lv.figAt = Date.now();
    var t = document.createElement("template");
    t.innerHTML = ans.html;  // the server's figures, every name in them escaped as in the report
    box.replaceChildren.apply(box, Array.from(t.content.childNodes));
    box.removeAttribute("data-pending");
    box.setAttribute("data-step", String(ans.step));
  }
  // a section sent without its figures (a page of many runs): asked for until the server has drawn them
  function loadFigures(section, lv, tries) {
    var box = section.querySelector("[data-live=figures][data-pending=true]");
    if (!box || tries > 300) return;
    lv.figBusy = true;
    fetch("api/figures?run=" + encodeURIComponent(lv.key), { cache: "no-store" }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(function (ans) {
      if (ans.step === null) { setTimeout(function () { loadFigures(section, lv, tries + 1); }, 2000); return; }
      lv.figBusy = false;
      putFigures(box, lv, ans);
    }).catch(function () { setTimeout(function () { loadFigures(section, lv, tries + 1); }, 5000); });
  }
  function refreshFigures(section, run, cfg) {
    var box = section.querySelector("[data-live=figures]"), lv = run.live, now = Date.now();
    if (!box || lv.figBusy || lv.last === null || box.hasAttribute("data-pending")) return;
    if (lv.figStep === undefined) { lv.figStep = lv.last; lv.figAt = 0; }  // drawn with the section
    if (lv.last === lv.figStep || now - lv.figAt < 1000 * (cfg.figures_s || 15)) return;
    lv.figBusy = true; lv.figAt = now;
    fetch("api/figures?run=" + encodeURIComponent(lv.key), { cache: "no-store" }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    }).then(function (ans) {
      lv.figBusy = false;
      if (ans.step !== null && ans.step > lv.figStep) putFigures(box, lv, ans);
    }).catch(function () { lv.figBusy = false; });
  }
  function live(cfg) {
    var failures = 0;
    function tick() {
      var q = DATA.runs.map(function (run) {  // a run not loaded yet: its status only (no step is after that one)
        var since = run.pending ? "4611686018427387904" : run.live.last === null ? "" : run.live.last;
        return "run=" + encodeURIComponent(run.live.key) + "&since=" + since + "&f=" + run.live.f;
      }).join("&");
      pollAbort = "AbortController" in window ? new AbortController() : null;
      // a long poll: the server answers when something is new (or after wait_s with nothing)
      fetch("api/poll?" + q + "&k=" + cfg.runs_key + "&wait=" + (cfg.wait_s || 0),
            { cache: "no-store", signal: pollAbort ? pollAbort.signal : undefined }).then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      }).then(function (ans) {
        failures = 0;
        if (ans.runs_key !== cfg.runs_key) { location.reload(); return; }  // a run appeared
        var redrawn = false, remade = false;
        DATA.runs.forEach(function (run, i) {
          var u = ans.runs[run.live.key], section = document.getElementById("run-" + i);
          if (!u || !section || remade) return;
          if (run.pending) { showStatus(section, u); if (u.findings) run.live.f = u.findings_version; return; }
          if (u.steps && u.steps.length) {
            var t0 = performance.now();
            if (!append(run, u)) { remade = true; location.reload(); return; }  // its layers or statistics changed
            run.live.last = u.steps[u.steps.length - 1];
            showSummary(section, run, u);
            runRedraws[i]();
            redrawn = true;
            section.setAttribute("data-draw-ms", String(Math.round(performance.now() - t0)));  // what the page spent on it
          }
          section.setAttribute("data-last-step", run.live.last === null ? "" : String(run.live.last));
          showStatus(section, u);
          refreshFigures(section, run, cfg);
          if (u.findings) { run.live.f = u.findings_version; showFindings(section, u.findings); }
        });
        if (remade) return;
        if (redrawn && cdraw) cdraw();
        setTimeout(tick, cfg.interval_ms);
      }).catch(function (err) {
        if (err && err.name === "AbortError") { tick(); return; }  // a run was loaded: asked again with it
        failures += 1;
        document.querySelectorAll("[data-live=status]").forEach(function (el) { el.textContent = "status: the server does not answer"; });
        setTimeout(tick, Math.min(10000, cfg.interval_ms * (1 + failures)));
      });
    }
    tick();
  }
})();
"""
