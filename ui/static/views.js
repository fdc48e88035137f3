/* Small interactive views drawn in the browser from plain data (ui/views.py builds the specs).
 *
 * Plain JS, no build step, no library, no network. One gr.HTML holds one or more panels:
 *   heatmap  a matrix with row and column labels, a colour bar, values in the cells when they
 *            fit, a tooltip on hover; a [layer, head] map selects its cell on click
 *   scatter  points with a tooltip; a point that is a head selects it on click
 *   bars     one or more series over the tokens (signed: red up, blue down), a tooltip
 *   lines    series over the layers, a tooltip (rank on a log scale, 1 on top)
 * Selection: props.selection = [layer, head] (from Python) and the page's selection bus
 * (window.DashboardBus, shared with the attention explorer): a click updates every view of
 * the group at once, in the page, then tells Python through the component's select event.
 *
 * API: DashboardViews.gradio(element, props, trigger, watch) is the gr.HTML js_on_load glue;
 * DashboardViews.mount(host, spec, {selection, onSelect}) for a page of its own.
 */
(function (global) {
  "use strict";
  if (global.DashboardViews) return;

  var ACCENT = "#d9480f";
  var FONT = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  var MONO = "11px ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace";
  var MUTED = "#66727f", INK = "#1f2933", GRID = "#d5dbe1", NAN = "#e4e4e4";

  var Bus = global.DashboardBus;  // ui/static/selection_bus.js, loaded first

  // ------------------------------------------------------------------ colours

  var MAPS = {
    viridis: ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"],
    magma: ["#000004", "#180f3d", "#440f76", "#721f81", "#9e2f7f", "#cd4071", "#f1605d", "#fd9668", "#feca8d", "#fcfdbf"],
    rocket_r: ["#faebdd", "#f6c19f", "#f3956a", "#ec6446", "#d23249", "#a91a57", "#7a1d5e", "#4f1a52", "#2b1239", "#03051a"],
    mako_r: ["#def5e5", "#a0dfb9", "#60ceac", "#3db4ad", "#3497a9", "#357ba2", "#3e5f9d", "#413f80", "#2f2351", "#0b0405"],
    blues: ["#ffffff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b"],
    rdbu: ["#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d", "#b2182b"]
  };
  var RGB = {};
  function rgbOf(hex) { return [parseInt(hex.slice(1, 3), 16), parseInt(hex.slice(3, 5), 16), parseInt(hex.slice(5, 7), 16)]; }
  function colour(name, t) {   // t in [0, 1] -> [r, g, b]
    var stops = RGB[name] || (RGB[name] = (MAPS[name] || MAPS.viridis).map(rgbOf));
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    var x = t * (stops.length - 1), j = Math.min(Math.floor(x), stops.length - 2), f = x - j;
    return [0, 1, 2].map(function (c) { return Math.round(stops[j][c] + f * (stops[j + 1][c] - stops[j][c])); });
  }
  function css(rgb) { return "rgb(" + rgb[0] + "," + rgb[1] + "," + rgb[2] + ")"; }
  function dark(rgb) { return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 128; }

  // ------------------------------------------------------------------ helpers

  function el(tag, cls, parent, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function sizeCanvas(c, w, h) {
    var dpr = global.devicePixelRatio || 1;
    w = Math.max(1, Math.round(w)); h = Math.max(1, Math.round(h));
    c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
    c.style.width = w + "px"; c.style.height = h + "px";
    var ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return ctx;
  }
  function clamp(v, a, b) { return v < a ? a : v > b ? b : v; }
  function fmt(v, digits) {
    if (v == null || !isFinite(v)) return "\u2013";
    var a = Math.abs(v);
    if (digits != null) return v.toFixed(digits);
    if (a !== 0 && (a < 0.001 || a >= 10000)) return v.toExponential(2);
    return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(3);
  }
  function clip(t, n) { t = String(t); return t.length > n ? t.slice(0, Math.max(1, n - 1)) + "\u2026" : t; }
  function show(t) { t = String(t); return /^\s*$/.test(t) ? "\u2423" : t.replace(/\n/g, "\\n"); }

  // ------------------------------------------------------------------ a group of panels

  function Views(host, spec, opts) {
    this.host = host; this.opts = opts || {};
    this.sel = this.opts.selection || null;   // [layer, head]
    this.root = el("div", "dv-root");
    host.textContent = ""; host.appendChild(this.root);
    this.tip = el("div", "dv-tip", this.root);
    var self = this;
    if (typeof ResizeObserver === "function") {
      var last = -1;
      this._ro = new ResizeObserver(function () {
        var w = self.root.clientWidth;
        if (w !== last) { last = w; self.redraw(); }
      });
      this._ro.observe(this.root);
    }
    this.setSpec(spec);
    host.__dashboardViews = this;
  }

  Views.prototype.setSpec = function (spec) {
    if (typeof spec === "string") spec = spec ? JSON.parse(spec) : null;
    this.spec = spec;
    this.root.querySelectorAll(".dv-grid, .dv-empty").forEach(function (e) { e.remove(); });
    this.panels = [];
    if (!spec || !spec.panels || !spec.panels.length) {
      el("div", "dv-empty", this.root, (spec && spec.empty) || "Nothing to show yet: run an analysis first.");
      this.root.dataset.ready = "0";
      return;
    }
    var grid = el("div", "dv-grid", this.root);
    if (spec.columns) grid.style.gridTemplateColumns = "repeat(auto-fill, minmax(" + spec.columns + "px, 1fr))";
    var self = this;
    spec.panels.forEach(function (p) { self.panels.push(new Panel(self, grid, p)); });
    this.root.dataset.ready = "1";
    this.root.dataset.loads = String((parseInt(this.root.dataset.loads || "0", 10) || 0) + 1);
    this.redraw();
  };

  Views.prototype.redraw = function () {
    if (!this.root.isConnected || this.root.clientWidth === 0) return;
    this.panels.forEach(function (p) { p.draw(); });
  };

  // a selection from elsewhere (Python or another view): shown, not reported
  Views.prototype.select = function (layer, head) {
    if (layer == null) return;
    if (this.sel && this.sel[0] === layer && this.sel[1] === head) return;
    this.sel = [layer, head];
    this.root.dataset.layer = layer; this.root.dataset.head = head;
    this.redraw();
  };

  // a click here: shown at once, sent to the other views and to Python
  Views.prototype.pick = function (layer, head) {
    this.sel = [layer, head];
    this.root.dataset.layer = layer; this.root.dataset.head = head;
    this.redraw();
    if (this.opts.onChange) this.opts.onChange(layer, head);
    if (this.opts.onSelect) this.opts.onSelect(layer, head);
  };

  Views.prototype.showTip = function (text, x, y, bounds) {
    var tip = this.tip, r = this.root.getBoundingClientRect();
    tip.textContent = text; tip.style.display = "block";
    var tx = x - r.left + 14, ty = y - r.top + 14;
    if (tx + tip.offsetWidth > r.width) tx = Math.max(0, x - r.left - tip.offsetWidth - 10);
    tip.style.left = tx + "px"; tip.style.top = ty + "px";
  };
  Views.prototype.hideTip = function () { this.tip.style.display = "none"; };

  // ------------------------------------------------------------------ one panel

  function Panel(views, parent, p) {
    this.v = views; this.p = p;
    var box = this.box = el("div", "dv-panel dv-" + p.kind, parent);
    box.dataset.panel = p.id || p.kind;
    if (p.wide) box.classList.add("dv-wide");
    if (p.title) el("div", "dv-title", box, p.title);
    if (p.source) el("div", "dv-source", box, p.source);
    this.scroll = el("div", "dv-scroll", box);
    this.canvas = el("canvas", "dv-canvas", this.scroll);
    if (p.caption) el("div", "dv-caption", box, p.caption);
    var self = this;
    this.canvas.addEventListener("mousemove", function (e) { self.hover(e); });
    this.canvas.addEventListener("mouseleave", function () { self.hit = null; self.v.hideTip(); self.draw(); });
    this.canvas.addEventListener("click", function (e) { self.click(e); });
  }

  Panel.prototype.width = function () { return Math.max(240, this.scroll.clientWidth || this.box.clientWidth || 360); };
  Panel.prototype.draw = function () { DRAW[this.p.kind].call(this); };
  Panel.prototype.at = function (e) {
    var r = this.canvas.getBoundingClientRect();
    return {x: e.clientX - r.left, y: e.clientY - r.top};
  };
  Panel.prototype.hover = function (e) {
    var h = HIT[this.p.kind].call(this, this.at(e));
    var same = h && this.hit && h.key === this.hit.key;
    this.hit = h;
    if (!h) { this.v.hideTip(); if (!same) this.draw(); return; }
    this.v.showTip(h.tip, e.clientX, e.clientY);
    this.canvas.style.cursor = h.layer != null && this.p.select ? "pointer" : "default";
    if (!same) this.draw();
  };
  Panel.prototype.click = function (e) {
    var h = HIT[this.p.kind].call(this, this.at(e));
    if (h && h.layer != null && this.p.select) this.v.pick(h.layer, h.head);
  };
  Panel.prototype.selected = function (layer, head) {
    var s = this.v.sel;
    return !!(s && this.p.select && s[0] === layer && s[1] === head);
  };

  function colourBar(ctx, p, x, y, w) {
    var n = 60, cmap = p.cmap || "viridis";
    for (var i = 0; i < n; i++) { ctx.fillStyle = css(colour(cmap, i / (n - 1))); ctx.fillRect(x + i * w / n, y, w / n + 0.6, 8); }
    ctx.strokeStyle = GRID; ctx.strokeRect(x + 0.5, y + 0.5, w - 1, 7);
    ctx.fillStyle = MUTED; ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "top";
    ctx.textAlign = "left"; ctx.fillText(fmt(p.vmin, p.digits), x, y + 10);
    ctx.textAlign = "right"; ctx.fillText(fmt(p.vmax, p.digits), x + w, y + 10);
    if (p.center != null) { ctx.textAlign = "center"; ctx.fillText(fmt(p.center, p.digits), x + w / 2, y + 10); }
    if (p.label) { ctx.textAlign = "left"; ctx.fillText(p.label, x + w + 8, y - 1); }
  }

  function norm(p, v) {
    if (v == null || !isFinite(v)) return null;
    var lo = p.vmin, hi = p.vmax;
    if (p.center != null) {
      var lim = Math.max(Math.abs(lo - p.center), Math.abs(hi - p.center)) || 1;
      return 0.5 + 0.5 * (v - p.center) / lim;
    }
    return hi > lo ? (v - lo) / (hi - lo) : 0.5;
  }

  var DRAW = {}, HIT = {};

  // ---------------------------------------------------------------- heatmap

  DRAW.heatmap = function () {
    var p = this.p, R = p.rows.length, C = p.cols.length, W = this.width();
    var ctx0 = this.canvas.getContext("2d");
    ctx0.font = MONO;
    var rowW = 0;
    p.rows.forEach(function (r) { rowW = Math.max(rowW, ctx0.measureText(clip(r, 18)).width); });
    var colW = 0;
    p.cols.forEach(function (c) { colW = Math.max(colW, ctx0.measureText(clip(c, 14)).width); });
    var left = Math.ceil(rowW) + 16 + (p.row_title ? 16 : 0);
    var cw = clamp(Math.floor((W - left - 8) / C), p.min_cell || 12, p.max_cell || 56);
    var rotate = colW > cw - 2;
    // colour bar and its numbers (0..28), the column title, the column labels, then the cells
    var titleY = 32, top = titleY + (p.col_title ? 16 : 0) + (rotate ? Math.min(colW, 110) + 8 : 18);
    var ch = clamp(p.cell_height || Math.round(cw * 0.72), 12, 34);
    var g = this.g = {left: left, top: top, cw: cw, ch: ch, R: R, C: C};
    var w = Math.max(W, left + C * cw + 8), h = top + R * ch + 6;
    var ctx = sizeCanvas(this.canvas, w, h);
    ctx.clearRect(0, 0, w, h);
    colourBar(ctx, p, left, 4, Math.min(180, C * cw));
    var text = p.text, show_values = p.show_values !== false && cw >= 26 && ch >= 13;
    ctx.textAlign = "center"; ctx.textBaseline = "middle";
    for (var i = 0; i < R; i++) {
      for (var j = 0; j < C; j++) {
        var v = p.values[i][j], t = norm(p, v), x = left + j * cw, y = top + i * ch;
        var rgb = t == null ? rgbOf(NAN) : colour(p.cmap || "viridis", t);
        ctx.fillStyle = css(rgb); ctx.fillRect(x, y, cw, ch);
        var s = text ? text[i][j] : (show_values && v != null ? fmt(v, p.digits) : "");
        if (s && cw >= 20 && ch >= 12) {
          ctx.font = (cw >= 40 ? "11px" : "10px") + " ui-monospace, 'DejaVu Sans Mono', monospace";
          ctx.fillStyle = dark(rgb) ? "#fff" : INK;
          ctx.fillText(clip(text ? show(s) : s, Math.max(2, Math.floor(cw / 6.4))), x + cw / 2, y + ch / 2 + 0.5);
        }
      }
    }
    // the selected head, the hovered cell
    for (i = 0; i < R; i++) for (j = 0; j < C; j++) {
      var L = p.layers ? p.layers[i] : null, H = p.heads ? p.heads[j] : null;
      if (L != null && this.selected(L, H)) {
        ctx.strokeStyle = ACCENT; ctx.lineWidth = 2.5;
        ctx.strokeRect(left + j * cw + 1.25, top + i * ch + 1.25, cw - 2.5, ch - 2.5);
      }
    }
    if (this.hit) {
      ctx.strokeStyle = INK; ctx.lineWidth = 1;
      ctx.strokeRect(left + this.hit.j * cw + 0.5, top + this.hit.i * ch + 0.5, cw - 1, ch - 1);
    }
    // labels
    ctx.font = MONO; ctx.fillStyle = INK; ctx.textBaseline = "middle";
    var rstep = Math.max(1, Math.ceil(13 / ch)), cstep = Math.max(1, Math.ceil((rotate ? 13 : colW + 6) / cw));
    ctx.textAlign = "right";
    for (i = 0; i < R; i += rstep) {
      ctx.fillStyle = this.hit && this.hit.i === i ? ACCENT : INK;
      ctx.fillText(clip(p.rows[i], 18), left - 6, top + i * ch + ch / 2);
    }
    for (j = 0; j < C; j += cstep) {
      ctx.fillStyle = this.hit && this.hit.j === j ? ACCENT : INK;
      var cx = left + j * cw + cw / 2;
      if (rotate) {
        ctx.save(); ctx.translate(cx, top - 5); ctx.rotate(-Math.PI / 2);
        ctx.textAlign = "left"; ctx.fillText(clip(p.cols[j], 14), 0, 0); ctx.restore();
      } else { ctx.textAlign = "center"; ctx.fillText(p.cols[j], cx, top - 9); }
    }
    ctx.fillStyle = MUTED; ctx.font = "11px system-ui, sans-serif";
    if (p.col_title) { ctx.textAlign = "left"; ctx.textBaseline = "top"; ctx.fillText(p.col_title + " \u2192", left, titleY); }
    if (p.row_title) {
      ctx.save(); ctx.translate(9, top + R * ch / 2); ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "center"; ctx.textBaseline = "middle"; ctx.fillText(p.row_title, 0, 0); ctx.restore();
    }
  };

  HIT.heatmap = function (pt) {
    var g = this.g, p = this.p;
    if (!g) return null;
    var j = Math.floor((pt.x - g.left) / g.cw), i = Math.floor((pt.y - g.top) / g.ch);
    if (i < 0 || j < 0 || i >= g.R || j >= g.C) return null;
    var v = p.values[i][j], lines = [];
    var L = p.layers ? p.layers[i] : null, H = p.heads ? p.heads[j] : null;
    lines.push((p.row_title || "row") + " " + p.rows[i] + " \u00B7 " + (p.col_title || "column") + " " + p.cols[j]);
    lines.push((p.label || "value") + " " + (v == null ? "undefined" : fmt(v, p.tip_digits != null ? p.tip_digits : 4)));
    if (p.text) lines.push((p.text_label || "text") + " \u201C" + show(p.text[i][j]) + "\u201D");
    if (p.tips) Object.keys(p.tips).forEach(function (k) {
      var x = p.tips[k][i][j];
      if (x != null && x !== "") lines.push(k + " " + (typeof x === "number" ? fmt(x, 4) : x));
    });
    if (L != null && p.select) lines.push("click: select layer " + L + ", head " + H);
    return {key: i + ":" + j, i: i, j: j, layer: L, head: H, tip: lines.join("\n")};
  };

  // ---------------------------------------------------------------- scatter

  var MARKERS = {previous: "tri", first: "square", self: "circle", induction: "star", mixed: "cross"};
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  function marker(ctx, kind, x, y, r) {
    ctx.beginPath();
    if (kind === "square") ctx.rect(x - r * 0.85, y - r * 0.85, r * 1.7, r * 1.7);
    else if (kind === "tri") { ctx.moveTo(x - r, y); ctx.lineTo(x + r * 0.8, y - r); ctx.lineTo(x + r * 0.8, y + r); ctx.closePath(); }
    else if (kind === "star") {
      for (var k = 0; k < 10; k++) {
        var a = -Math.PI / 2 + k * Math.PI / 5, rr = k % 2 ? r * 0.5 : r * 1.35;
        if (k) ctx.lineTo(x + rr * Math.cos(a), y + rr * Math.sin(a)); else ctx.moveTo(x + rr * Math.cos(a), y + rr * Math.sin(a));
      }
      ctx.closePath();
    } else if (kind === "cross") {
      var s = r * 0.45;
      ctx.moveTo(x - r, y - r + s); ctx.lineTo(x - r + s, y - r); ctx.lineTo(x, y - s); ctx.lineTo(x + r - s, y - r);
      ctx.lineTo(x + r, y - r + s); ctx.lineTo(x + s, y); ctx.lineTo(x + r, y + r - s); ctx.lineTo(x + r - s, y + r);
      ctx.lineTo(x, y + s); ctx.lineTo(x - r + s, y + r); ctx.lineTo(x - r, y + r - s); ctx.lineTo(x - s, y); ctx.closePath();
    } else ctx.arc(x, y, r, 0, 2 * Math.PI);
  }

  DRAW.scatter = function () {
    var p = this.p, pts = p.points, W = this.width(), H = clamp(Math.round(W * 0.62), 240, 460);
    var pad = {l: 44, r: 120, t: 10, b: 34};
    var xs = pts.map(function (q) { return q.x; }), ys = pts.map(function (q) { return q.y; });
    var x0 = Math.min.apply(null, xs.concat([0])), x1 = Math.max.apply(null, xs.concat([0]));
    var y0 = Math.min.apply(null, ys.concat([0])), y1 = Math.max.apply(null, ys.concat([0]));
    var dx = (x1 - x0) || 1, dy = (y1 - y0) || 1;
    x0 -= 0.06 * dx; x1 += 0.06 * dx; y0 -= 0.08 * dy; y1 += 0.08 * dy;
    var pw = W - pad.l - pad.r, ph = H - pad.t - pad.b;
    var X = function (v) { return pad.l + (v - x0) / (x1 - x0) * pw; };
    var Y = function (v) { return pad.t + (1 - (v - y0) / (y1 - y0)) * ph; };
    this.g = {X: X, Y: Y};
    var ctx = sizeCanvas(this.canvas, W, H);
    ctx.clearRect(0, 0, W, H);
    ctx.strokeStyle = GRID; ctx.lineWidth = 1; ctx.strokeRect(pad.l + 0.5, pad.t + 0.5, pw, ph);
    ctx.fillStyle = MUTED; ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "top";
    ctx.fillText(p.x_title || "", pad.l + pw / 2, H - 16);
    ctx.save(); ctx.translate(12, pad.t + ph / 2); ctx.rotate(-Math.PI / 2); ctx.fillText(p.y_title || "", 0, 0); ctx.restore();
    var r = pts.length > 150 ? 3.5 : 5, self = this, sel = null;
    pts.forEach(function (q) {
      ctx.fillStyle = PALETTE[q.group % PALETTE.length]; ctx.strokeStyle = "#222"; ctx.lineWidth = 0.6;
      marker(ctx, MARKERS[q.marker] || "circle", X(q.x), Y(q.y), q.marker === "induction" ? r * 1.2 : r);
      ctx.fill(); ctx.stroke();
      if (self.selected(q.layer, q.head)) sel = q;
    });
    if (pts.length <= 64) {
      ctx.fillStyle = "#333"; ctx.font = "10px system-ui, sans-serif"; ctx.textAlign = "left"; ctx.textBaseline = "bottom";
      pts.forEach(function (q) { ctx.fillText("L" + q.layer + "H" + q.head, X(q.x) + 4, Y(q.y) - 3); });
    }
    [sel, this.hit && this.hit.q].forEach(function (q, k) {
      if (!q) return;
      ctx.strokeStyle = k ? INK : ACCENT; ctx.lineWidth = k ? 1 : 2.5;
      ctx.beginPath(); ctx.arc(X(q.x), Y(q.y), r + 5, 0, 2 * Math.PI); ctx.stroke();
    });
    // legend: clusters (colour) and roles (marker)
    var lx = W - pad.r + 12, ly = pad.t + 6;
    ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "left"; ctx.textBaseline = "middle";
    (p.groups || []).forEach(function (name, k) {
      ctx.fillStyle = PALETTE[k % PALETTE.length]; marker(ctx, "circle", lx + 5, ly, 5); ctx.fill();
      ctx.fillStyle = INK; ctx.fillText(name, lx + 14, ly); ly += 16;
    });
    ly += 6;
    (p.markers || []).forEach(function (name) {
      ctx.fillStyle = "#999"; ctx.strokeStyle = "#222"; marker(ctx, MARKERS[name] || "circle", lx + 5, ly, 5); ctx.fill(); ctx.stroke();
      ctx.fillStyle = INK; ctx.fillText(name, lx + 14, ly); ly += 16;
    });
  };

  HIT.scatter = function (pt) {
    if (!this.g) return null;
    var best = null, bd = 81, X = this.g.X, Y = this.g.Y;
    this.p.points.forEach(function (q) {
      var d = Math.pow(X(q.x) - pt.x, 2) + Math.pow(Y(q.y) - pt.y, 2);
      if (d < bd) { bd = d; best = q; }
    });
    if (!best) return null;
    var tip = "layer " + best.layer + ", head " + best.head + "\n" + (best.label || "");
    if (this.p.select) tip += "\nclick: select this head";
    return {key: best.layer + ":" + best.head, q: best, layer: best.layer, head: best.head, tip: tip.replace(/\n$/, "")};
  };

  // ---------------------------------------------------------------- bars

  DRAW.bars = function () {
    var p = this.p, n = p.labels.length, W = this.width(), S = p.series.length;
    var bw = clamp(Math.floor((W - 60) / n), 6, 44), w = Math.max(W, 60 + n * bw);
    var labelled = bw >= 14, labH = labelled ? 70 : 18, band = 110;
    var H = 8 + S * (band + 18) + labH;
    var ctx = sizeCanvas(this.canvas, w, H);
    ctx.clearRect(0, 0, w, H);
    this.g = {x0: 52, bw: bw, n: n, w: w};
    var self = this;
    p.series.forEach(function (s, k) {
      var top = 8 + k * (band + 18) + 14, vals = s.values;
      var lim = 0;
      vals.forEach(function (v) { if (v != null && isFinite(v)) lim = Math.max(lim, Math.abs(v)); });
      lim = lim || 1;
      var zero = s.signed ? top + band / 2 : top + band;
      var scale = s.signed ? band / 2 / lim : band / lim;
      ctx.fillStyle = MUTED; ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "left"; ctx.textBaseline = "bottom";
      ctx.fillText(s.name, 52, top - 2);
      ctx.textAlign = "right"; ctx.textBaseline = "middle";
      ctx.fillText(fmt(lim), 48, s.signed ? top + 4 : top + 4);
      if (s.signed) ctx.fillText(fmt(-lim), 48, top + band - 4);
      ctx.fillText("0", 48, zero);
      ctx.strokeStyle = GRID; ctx.beginPath(); ctx.moveTo(52, zero + 0.5); ctx.lineTo(52 + n * bw, zero + 0.5); ctx.stroke();
      for (var i = 0; i < n; i++) {
        var v = vals[i];
        if (v == null || !isFinite(v)) continue;
        var hgt = v * scale;
        ctx.fillStyle = i === p.highlight ? "#f39c12" : s.signed ? (v > 0 ? "#c0392b" : "#2c7fb8") : (s.colour || "#6a51a3");
        ctx.fillRect(52 + i * bw + 1, hgt >= 0 ? zero - hgt : zero, Math.max(1, bw - 2), Math.abs(hgt));
      }
      s._geo = {top: top, band: band};
    });
    if (this.hit) {
      ctx.strokeStyle = INK; ctx.lineWidth = 1;
      ctx.strokeRect(52 + this.hit.i * bw + 0.5, 8, bw - 1, S * (band + 18));
    }
    ctx.font = MONO; ctx.fillStyle = INK;
    var base = 8 + S * (band + 18) + 4;
    var step = labelled ? 1 : Math.ceil(40 / bw);
    for (var i = 0; i < n; i += step) {
      var cx = 52 + i * bw + bw / 2;
      ctx.fillStyle = i === p.highlight ? "#b35900" : INK;
      if (labelled) {
        ctx.save(); ctx.translate(cx, base); ctx.rotate(-Math.PI / 3);
        ctx.textAlign = "right"; ctx.textBaseline = "middle"; ctx.fillText(clip(show(p.labels[i]), 10), 0, 0); ctx.restore();
      } else { ctx.textAlign = "center"; ctx.textBaseline = "top"; ctx.fillText(String(i), cx, base); }
    }
    void self;
  };

  HIT.bars = function (pt) {
    var g = this.g, p = this.p;
    if (!g) return null;
    var i = Math.floor((pt.x - g.x0) / g.bw);
    if (i < 0 || i >= g.n) return null;
    var lines = ["token " + i + " \u201C" + show(p.labels[i]) + "\u201D" + (i === p.highlight ? " (prediction read here)" : "")];
    p.series.forEach(function (s) { lines.push(s.name + " " + fmt(s.values[i], 4)); });
    return {key: String(i), i: i, tip: lines.join("\n")};
  };

  // ---------------------------------------------------------------- lines

  DRAW.lines = function () {
    var p = this.p, W = this.width(), H = 250, pad = {l: 58, r: 58, t: 12, b: 36};
    var n = p.x.length, pw = W - pad.l - pad.r, ph = H - pad.t - pad.b;
    var X = function (i) { return pad.l + (n > 1 ? i / (n - 1) : 0.5) * pw; };
    var ctx = sizeCanvas(this.canvas, W, H);
    ctx.clearRect(0, 0, W, H);
    this.g = {X: X, n: n, pad: pad, pw: pw};
    ctx.strokeStyle = GRID; ctx.strokeRect(pad.l + 0.5, pad.t + 0.5, pw, ph);
    ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = MUTED; ctx.textAlign = "center"; ctx.textBaseline = "top";
    var xstep = Math.max(1, Math.ceil(n / 24));
    for (var i = 0; i < n; i += xstep) ctx.fillText(String(p.x[i]), X(i), pad.t + ph + 4);
    ctx.fillText(p.x_title || "", pad.l + pw / 2, H - 14);
    var self = this;
    p.series.forEach(function (s, k) {
      var vals = s.values, lo, hi, Y;
      if (s.log) {   // rank: 1 on top, log scale
        hi = 1; lo = Math.max(2, Math.max.apply(null, vals.filter(function (v) { return v != null; })));
        var top = Math.log10(hi), bot = Math.log10(lo * 1.5);
        Y = function (v) { return pad.t + (Math.log10(v) - top) / (bot - top) * ph; };
      } else {
        lo = s.min != null ? s.min : 0; hi = s.max != null ? s.max : 1;
        Y = function (v) { return pad.t + (1 - (v - lo) / ((hi - lo) || 1)) * ph; };
      }
      s._Y = Y;
      var right = s.axis === "right", ax = right ? pad.l + pw + 6 : pad.l - 6;
      ctx.fillStyle = s.colour; ctx.textAlign = right ? "left" : "right"; ctx.textBaseline = "middle";
      var ticks = s.log ? [1, 10, 100, 1000, 10000, 100000].filter(function (t) { return t <= lo * 1.5; }) : [lo, (lo + hi) / 2, hi];
      ticks.forEach(function (t) { ctx.fillText(s.log ? "#" + t : fmt(t, 2), ax, Y(t)); });
      ctx.save(); ctx.translate(right ? W - 10 : 10, pad.t + ph / 2); ctx.rotate(right ? Math.PI / 2 : -Math.PI / 2);
      ctx.textAlign = "center"; ctx.fillText(s.name, 0, 0); ctx.restore();
      ctx.strokeStyle = s.colour; ctx.lineWidth = 2; ctx.beginPath();
      var started = false;
      vals.forEach(function (v, i) {
        if (v == null || !isFinite(v)) { started = false; return; }
        if (started) ctx.lineTo(X(i), Y(v)); else { ctx.moveTo(X(i), Y(v)); started = true; }
      });
      ctx.stroke();
      vals.forEach(function (v, i) {
        if (v == null || !isFinite(v)) return;
        ctx.fillStyle = s.colour; ctx.beginPath(); ctx.arc(X(i), Y(v), self.hit && self.hit.i === i ? 5 : 3, 0, 2 * Math.PI); ctx.fill();
      });
      void k;
    });
    if (this.hit) {
      ctx.strokeStyle = INK; ctx.setLineDash([3, 3]); ctx.beginPath();
      ctx.moveTo(X(this.hit.i) + 0.5, pad.t); ctx.lineTo(X(this.hit.i) + 0.5, pad.t + ph); ctx.stroke(); ctx.setLineDash([]);
    }
  };

  HIT.lines = function (pt) {
    var g = this.g, p = this.p;
    if (!g || g.n === 0) return null;
    var i = Math.round((pt.x - g.pad.l) / (g.pw / Math.max(1, g.n - 1)));
    if (i < 0 || i >= g.n || pt.x < g.pad.l - 10 || pt.x > g.pad.l + g.pw + 10) return null;
    var lines = [(p.x_title || "x") + " " + p.x[i]];
    p.series.forEach(function (s) { lines.push(s.name + " " + (s.log ? "#" + s.values[i] : fmt(s.values[i], 4))); });
    return {key: String(i), i: i, tip: lines.join("\n")};
  };

  // ------------------------------------------------------------------ entry points

  function mount(host, spec, opts) {
    if (host.__dashboardViews) {
      var v = host.__dashboardViews;
      if (opts) { v.opts.onSelect = opts.onSelect || v.opts.onSelect; v.opts.onChange = opts.onChange || v.opts.onChange; }
      v.setSpec(spec);
      return v;
    }
    return new Views(host, spec, opts);
  }

  // gr.HTML js_on_load: props.value = the spec JSON, props.selection = [layer, head],
  // props.group = the selection bus group ("" for none)
  function gradio(element, props, trigger, watch) {
    var host = element.querySelector(".dv-mount") || element;
    var group = props.group == null ? "layer" : props.group;
    var views = host.__dashboardViews || new Views(host, null, {selection: props.selection});
    views.opts.onSelect = function (layer, head) {
      trigger("select", {index: [layer, head], value: "layer " + layer + ", head " + head});
    };
    if (group) {
      views.opts.onChange = function (layer, head) { Bus.publish(group, layer, head, host); };
      Bus.subscribe(group, host, function (layer, head) { views.select(layer, head); });
    }
    var last = null;
    var sync = function () {
      var v = props.value || null;
      if (v !== last) { last = v; views.setSpec(v); }
      var s = props.selection;
      if (s && s.length === 2 && !(group && Bus.echo(group, host, s[0], s[1]))) views.select(s[0], s[1]);
    };
    sync();
    if (typeof watch === "function") watch(["value", "selection"], sync);
    return views;
  }

  global.DashboardViews = {mount: mount, gradio: gradio, colour: colour};
})(window);
