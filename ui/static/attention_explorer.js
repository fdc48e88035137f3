/* Attention explorer: every layer's and head's attention, decoded once in the browser.
 *
 * Plain JS, no build step, no library, no network. The payload comes from ui/explorer.py
 * (pack_attention; format version 1): per-row maxima (float32) and uint8 codes, each
 * zlib-compressed and base64-encoded. A weight is  a = s_row * (c / levels) ** gamma.
 *
 * Views (switching layer, head or view never asks the server):
 *   head view   tokens in two columns (queries left, keys right) joined by lines; hover a
 *               token to see where it attends (left) or what attends to it (right); click pins.
 *   heatmap     the selected head as [query x key] with zoom (ctrl + wheel, buttons, +/-), pan
 *               (wheel, drag),
 *               axis labels thinned to stay legible, and a hover tooltip with the weight.
 *   model view  every layer x head as a thumbnail; a click opens that head.
 * Keys: left/right = head, up/down = layer, 1/2/3 = view, +/-/0 = zoom, Esc = unpin.
 *
 * API: AttentionExplorer.mount(element, {selection: [layer, head], onSelect(layer, head)})
 * returns an explorer with setPayload(payloadOrJson) -> Promise, select(layer, head),
 * setView("head" | "heatmap" | "model"), timings. Layers count from 1, heads from 0.
 * AttentionExplorer.gradio(element, props, trigger, watch) is the gr.HTML js_on_load glue.
 */
(function (global) {
  "use strict";
  if (global.AttentionExplorer) return;

  var FORMAT = "attention-explorer";
  var VERSION = 1;
  var ROW_H = 18;              // head view row height (px)
  var TOKEN_FONT = "12px ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace";
  var AXIS_FONT = "11px ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace";
  var LABEL_PX = 13;           // heatmap axis labels are at least this far apart
  var REPORT_DELAY_MS = 200;   // keyboard/selector switches reach Python once they settle
  var ECHO_MS = 4000;          // how long a reported selection may still come back as an echo
  var TOP_K = 12;

  // ------------------------------------------------------------------ decoding

  function base64ToBytes(s) {
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(s);
    var bin = atob(s), n = bin.length, out = new Uint8Array(n);
    for (var i = 0; i < n; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function inflate(bytes, method) {
    if (method === "none") return Promise.resolve(bytes);
    if (typeof DecompressionStream !== "function")
      return Promise.reject(new Error("this browser has no DecompressionStream"));
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream(method));
    return new Response(stream).arrayBuffer().then(function (buf) { return new Uint8Array(buf); });
  }

  function AttentionData(meta, codes, scales) {
    this.L = meta.n_layers; this.H = meta.n_heads; this.N = meta.n_tokens;
    this.causal = !!meta.causal; this.tokens = meta.tokens; this.title = meta.title || "";
    this.firstLayer = meta.first_layer == null ? 1 : meta.first_layer;
    this.cells = this.causal ? this.N * (this.N + 1) / 2 : this.N * this.N;
    this.codes = codes; this.scales = scales;
    this.compressedBytes = meta.compressed_bytes; this.rawBytes = meta.raw_bytes;
    var levels = meta.levels, gamma = meta.gamma;
    this.lut = new Float32Array(levels + 1);      // code -> a / s_row
    this.disp = new Float32Array(levels + 1);     // code -> 255 * sqrt(a / s_row)
    for (var c = 0; c <= levels; c++) {
      this.lut[c] = Math.pow(c / levels, gamma);
      this.disp[c] = 255 * Math.pow(c / levels, gamma / 2);
    }
    this._headMax = new Float32Array(this.L * this.H).fill(-1);
    if (codes.length !== this.L * this.H * this.cells || scales.length !== this.L * this.H * this.N)
      throw new Error("payload sizes do not match its shape");
  }
  AttentionData.prototype.rowStart = function (q) { return this.causal ? q * (q + 1) / 2 : q * this.N; };
  AttentionData.prototype.rowLen = function (q) { return this.causal ? q + 1 : this.N; };
  AttentionData.prototype.base = function (l, h) { return (l * this.H + h) * this.cells; };
  AttentionData.prototype.scale = function (l, h, q) { return this.scales[(l * this.H + h) * this.N + q]; };
  AttentionData.prototype.value = function (l, h, q, k) {
    if (this.causal && k > q) return 0;
    return this.scale(l, h, q) * this.lut[this.codes[this.base(l, h) + this.rowStart(q) + k]];
  };
  AttentionData.prototype.headMax = function (l, h) {
    var i = l * this.H + h;
    if (this._headMax[i] < 0) {
      var m = 0, o = i * this.N;
      for (var q = 0; q < this.N; q++) if (this.scales[o + q] > m) m = this.scales[o + q];
      this._headMax[i] = m > 0 ? m : 1;
    }
    return this._headMax[i];
  };
  // weights of query q over every key (out: Float32Array N)
  AttentionData.prototype.row = function (l, h, q, out) {
    var s = this.scale(l, h, q), b = this.base(l, h) + this.rowStart(q), n = this.rowLen(q);
    for (var k = 0; k < n; k++) out[k] = s * this.lut[this.codes[b + k]];
    for (k = n; k < this.N; k++) out[k] = 0;
    return out;
  };
  // weights given to key k by every query (out: Float32Array N)
  AttentionData.prototype.column = function (l, h, k, out) {
    var b = this.base(l, h), so = (l * this.H + h) * this.N;
    for (var q = 0; q < this.N; q++) {
      out[q] = (this.causal && k > q) ? 0 : this.scales[so + q] * this.lut[this.codes[b + this.rowStart(q) + k]];
    }
    return out;
  };

  // Resolves once the layer `firstLayer` (a layer number) is inflated; the other layers follow
  // in the background, in the order first, first + 1, ... (wrapping). data.ready[l] says which
  // are in; data.onLayer(l) is called as each arrives; data.complete resolves when all are.
  // The streams come inline (base64 in the JSON) or from `payload.url`: a binary file of the
  // scales then every layer's codes, read with HTTP range requests, the scales and the shown
  // layer first (a few hundred kB at 512 tokens), the rest in one request behind them.
  function decode(payload, firstLayer, stale) {
    try {
      if (typeof payload === "string") payload = JSON.parse(payload);
      if (!payload || payload.format !== FORMAT)
        throw new Error("not an attention-explorer payload");
      if (payload.version !== VERSION)
        throw new Error("payload version " + payload.version + " (this page reads " + VERSION + ")");
    } catch (e) { return Promise.reject(e); }
    var L = payload.n_layers, offsets = [0];
    for (var l = 0; l < L; l++) offsets.push(offsets[l] + payload.layer_bytes[l]);
    var fl = payload.first_layer == null ? 1 : payload.first_layer;
    var first = clamp(((firstLayer == null ? fl : firstLayer) - fl) | 0, 0, L - 1);
    if (payload.url && !payload.codes) {
      var n = payload.scales_bytes, end = n + offsets[L];
      if (end !== payload.compressed_bytes) return Promise.reject(new Error("payload sizes do not add up"));
      var rest = null;   // the other layers: [n, n + offsets[first]) and [n + offsets[first + 1], end)
      var layerBytes = function (l) {
        if (l === first) return fetchBytes(payload.url, n + offsets[l], n + offsets[l + 1]);
        if (!rest) rest = Promise.all([fetchBytes(payload.url, n, n + offsets[first]),
                                       fetchBytes(payload.url, n + offsets[first + 1], end)]);
        return rest.then(function (parts) {
          return l < first ? parts[0].subarray(offsets[l], offsets[l + 1])
                           : parts[1].subarray(offsets[l] - offsets[first + 1], offsets[l + 1] - offsets[first + 1]);
        });
      };
      // the scales and the shown layer at once: one request when they are adjacent (layer 1)
      var head = first === 0 ? fetchBytes(payload.url, 0, n + offsets[1]).then(function (u) {
        return [u.subarray(0, n), u.subarray(n)];
      }) : Promise.all([fetchBytes(payload.url, 0, n), layerBytes(first)]);
      return head.then(function (parts) {
        var shown = parts[1];
        return decodeStreams(payload, parts[0], function (l) {
          return l === first ? Promise.resolve(shown) : layerBytes(l);
        }, first, stale);
      });
    }
    var all = base64ToBytes(payload.codes);
    if (offsets[L] !== all.length) return Promise.reject(new Error("payload layer sizes do not add up"));
    return decodeStreams(payload, base64ToBytes(payload.scales), function (l) {
      return Promise.resolve(all.subarray(offsets[l], offsets[l + 1]));
    }, first, stale);
  }

  // bytes [start, end) of a file the server gave: "/gradio_api/file=..." is relative to the
  // Gradio app's root
  function fetchBytes(url, start, end) {
    if (end <= start) return Promise.resolve(new Uint8Array(0));
    if (url.charAt(0) === "/" && global.gradio_config && global.gradio_config.root)
      url = String(global.gradio_config.root).replace(/\/+$/, "") + url;
    var init = {credentials: "same-origin", headers: {Range: "bytes=" + start + "-" + (end - 1)}};
    return fetch(url, init).then(function (r) {
      if (!r.ok) throw new Error("cannot fetch the attention (HTTP " + r.status + "): run the analysis again");
      return r.arrayBuffer();
    }).then(function (buf) {
      var u = new Uint8Array(buf);
      if (u.length === end - start) return u;
      if (u.length >= end) return u.subarray(start, end);   // a server that sent the whole file
      throw new Error("the attention file is shorter than its description: run the analysis again");
    });
  }

  // `stale()`: true once a newer payload replaced this one (its other layers are then skipped)
  function decodeStreams(payload, scalesZ, layerBytes, first, stale) {
    var L = payload.n_layers;
    return inflate(scalesZ, payload.compression).then(function (sb) {
      var scales = (sb.byteOffset % 4 === 0) ? new Float32Array(sb.buffer, sb.byteOffset, sb.byteLength / 4)
                                              : new Float32Array(sb.slice().buffer);
      var N = payload.n_tokens, cells = payload.causal ? N * (N + 1) / 2 : N * N, per = payload.n_heads * cells;
      var data = new AttentionData(payload, new Uint8Array(L * per), scales);
      data.ready = new Uint8Array(L);
      data.onLayer = null;
      var load = function (l) {
        return layerBytes(l).then(function (z) { return inflate(z, payload.compression); }).then(function (u) {
          if (u.length !== per) throw new Error("layer " + l + " has " + u.length + " codes, not " + per);
          data.codes.set(u, l * per);
          data.ready[l] = 1;
          if (data.onLayer) data.onLayer(l);
        });
      };
      return load(first).then(function () {
        var chain = Promise.resolve();
        for (var i = 1; i < L; i++) (function (l) {
          chain = chain.then(function () { if (!(stale && stale())) return load(l); });
        })((first + i) % L);
        data.complete = chain;
        chain.catch(function (err) { console.error("attention explorer:", err); });
        return data;
      });
    });
  }

  // ------------------------------------------------------------------ colours

  // white -> blue -> navy (ColorBrewer "Blues", white at 0); index = 255 * sqrt(a / head max)
  var STOPS = [[255, 255, 255], [222, 235, 247], [198, 219, 239], [158, 202, 225], [107, 174, 214],
               [66, 146, 198], [33, 113, 181], [8, 81, 156], [8, 48, 107]];
  var PAL = new Uint32Array(256), PAL_CSS = new Array(256);
  (function () {
    for (var i = 0; i < 256; i++) {
      var t = i / 255 * (STOPS.length - 1), j = Math.min(Math.floor(t), STOPS.length - 2), f = t - j;
      var r = Math.round(STOPS[j][0] + f * (STOPS[j + 1][0] - STOPS[j][0]));
      var g = Math.round(STOPS[j][1] + f * (STOPS[j + 1][1] - STOPS[j][1]));
      var b = Math.round(STOPS[j][2] + f * (STOPS[j + 1][2] - STOPS[j][2]));
      PAL[i] = (255 << 24 | b << 16 | g << 8 | r) >>> 0;   // ImageData is RGBA bytes (little-endian)
      PAL_CSS[i] = "rgb(" + r + "," + g + "," + b + ")";
    }
  })();
  var MASKED = (255 << 24 | 226 << 16 | 222 << 8 | 218) >>> 0;   // above a causal diagonal
  var ACCENT = "#d9480f";

  // ------------------------------------------------------------------ small helpers

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
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
    }
    c.style.width = w + "px"; c.style.height = h + "px";
    var ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return ctx;
  }
  function showToken(t) {
    t = String(t);
    return /^\s*$/.test(t) ? "\u2423" : t;   // a blank token shows as an open box
  }
  function clip(t, n) { t = showToken(t); return t.length > n ? t.slice(0, Math.max(1, n - 1)) + "\u2026" : t; }
  function fmt(v) { return v.toFixed(4); }
  function clamp(v, a, b) { return v < a ? a : v > b ? b : v; }
  function bytes(n) { return n >= 1048576 ? (n / 1048576).toFixed(1) + " MiB" : Math.max(1, Math.round(n / 1024)) + " KiB"; }

  // ------------------------------------------------------------------ the explorer

  function Explorer(host, opts) {
    opts = opts || {};
    this.opts = opts;
    this.host = host;
    this.data = null;
    this.li = 0; this.hi = 0;                // selected layer / head (0-based indices)
    this.want = opts.selection || [1, 0];    // selection to apply when data arrives
    this.view = opts.view || "heatmap";
    this.detailView = this.view === "model" ? "heatmap" : this.view;
    this.focus = null;                       // head view: {side: "q" | "k", i, pinned}
    this.zoom = null;                        // heatmap: {z, ox, oy} (css px per cell, top-left cell)
    this.rowNorm = false;                    // heatmap colour: sqrt(a / head max) or sqrt(a / row max)
    this._reported = [];                     // [{layer, head, t}]: recent reports to the host
    this.loads = 0;                          // payloads decoded so far
    this.timings = {};
    this._token = 0;
    this._reportTimer = 0;
    this._rowBuf = null;
    this._build();
    host.__attentionExplorer = this;
    if (opts.autofocus) this.root.focus({preventScroll: true});
  }

  Explorer.prototype._build = function () {
    var self = this;
    var root = this.root = el("div", "ae-root");
    root.tabIndex = 0;
    root.setAttribute("role", "application");
    root.setAttribute("aria-label", "Attention explorer");
    this.host.textContent = "";
    this.host.appendChild(root);

    var bar = el("div", "ae-bar", root);
    this.titleEl = el("span", "ae-title", bar, "attention");
    this.modelEl = el("span", "ae-model", bar);
    var mkCtl = function (name, label) {
      var box = el("span", "ae-ctl", bar);
      el("label", null, box, label);
      var prev = el("button", "ae-prev-" + name, box, "\u25C0");
      var sel = el("select", "ae-" + name, box);
      var next = el("button", "ae-next-" + name, box, "\u25B6");
      prev.type = next.type = "button";
      prev.title = "previous " + name; next.title = "next " + name;
      sel.setAttribute("aria-label", name);
      prev.addEventListener("click", function () { self._step(name, -1); });
      next.addEventListener("click", function () { self._step(name, +1); });
      sel.addEventListener("change", function () {
        var v = parseInt(sel.value, 10);
        if (name === "layer") self._userSelect(v, self.hi, false);
        else self._userSelect(self.layerNumber(), v, false);
      });
      return sel;
    };
    this.layerSel = mkCtl("layer", "layer");
    this.headSel = mkCtl("head", "head");
    var tabs = el("span", "ae-tabs", bar);
    this.tabButtons = {};
    [["head", "Head view"], ["heatmap", "Heatmap"], ["model", "Model view"]].forEach(function (v) {
      var b = el("button", "ae-tab", tabs, v[1]);
      b.type = "button"; b.dataset.view = v[0];
      b.addEventListener("click", function () { self.setView(v[0]); });
      self.tabButtons[v[0]] = b;
    });

    this.statusEl = el("div", "ae-status", root, "No attention to show yet: run an analysis first.");

    // head view
    var hv = this.hvView = el("div", "ae-view ae-view-head", root);
    var hvWrap = el("div", "ae-hv", hv);
    this.hvScroll = el("div", "ae-hv-scroll", hvWrap);
    this.hvCanvas = el("canvas", "ae-hv-canvas", this.hvScroll);
    this.hvSpacer = el("div", "ae-hv-spacer", this.hvScroll);
    this.infoEl = el("div", "ae-info", hvWrap);
    this.hvScroll.addEventListener("scroll", function () { self._drawHead(); }, {passive: true});
    this.hvCanvas.addEventListener("mousemove", function (e) { self._hvHover(e, false); });
    this.hvCanvas.addEventListener("mouseleave", function () {
      if (self.focus && !self.focus.pinned) { self.focus = null; self._drawHead(); self._info(); }
    });
    this.hvCanvas.addEventListener("click", function (e) { self._hvHover(e, true); });
    this.infoEl.addEventListener("click", function (e) {
      var li = e.target.closest && e.target.closest("li");
      if (li) self._scrollToRow(parseInt(li.dataset.index, 10));
    });

    // heatmap view
    var hm = this.hmView = el("div", "ae-view ae-view-heatmap", root);
    var tools = el("div", "ae-hm-tools", hm);
    var zb = function (label, title, fn) {
      var b = el("button", null, tools, label); b.type = "button"; b.title = title;
      b.addEventListener("click", fn); return b;
    };
    zb("\u2212", "zoom out (-)", function () { self._zoomBy(1 / 1.5); });
    zb("+", "zoom in (+)", function () { self._zoomBy(1.5); });
    zb("Fit", "whole matrix (0)", function () { self._fit(); self._drawHeatmap(); });
    this.zoomEl = el("span", "ae-zoom", tools);
    var legend = el("span", "ae-legend", tools);
    el("span", null, legend, "0");
    this.legendCanvas = el("canvas", null, legend);
    this.legendMax = el("span", null, legend);
    var norm = el("label", "ae-norm", tools);
    this.normBox = el("input", null, norm);
    this.normBox.type = "checkbox";
    norm.appendChild(document.createTextNode(" colour each row by its own maximum"));
    this.normBox.addEventListener("change", function () { self.rowNorm = self.normBox.checked; self._drawHeatmap(); });
    el("span", "ae-hint", tools, "ctrl + wheel: zoom \u00B7 wheel, drag: pan \u00B7 hover: weight");
    var grid = this.hmGrid = el("div", "ae-hm-grid", hm);
    this.hmCorner = el("div", "ae-hm-corner", grid);
    this.hmTop = el("canvas", "ae-hm-top", grid);
    this.hmLeft = el("canvas", "ae-hm-left", grid);
    this.hmMain = el("canvas", "ae-hm-main", grid);
    this.tooltip = el("div", "ae-tooltip", grid);
    this.hmFull = document.createElement("canvas");   // the head at one pixel per cell
    this._hmKey = null;
    this._bindHeatmap();

    // model view
    var mv = this.mvView = el("div", "ae-view ae-view-model", root);
    this.mvScroll = el("div", "ae-mv-scroll", mv);
    this.mvGrid = el("div", "ae-mv", this.mvScroll);
    this._thumbs = null;

    var foot = el("div", "ae-foot", root);
    foot.innerHTML = "<span><kbd>\u2190</kbd><kbd>\u2192</kbd> head \u00B7 <kbd>\u2191</kbd><kbd>\u2193</kbd> layer \u00B7 " +
      "<kbd>1</kbd><kbd>2</kbd><kbd>3</kbd> view</span>";
    this.sizeEl = el("span", "ae-size", foot);

    root.addEventListener("keydown", function (e) { self._key(e); });
    root.addEventListener("mousedown", function (e) {
      if (!(e.target instanceof HTMLSelectElement)) root.focus({preventScroll: true});
    });
    if (typeof ResizeObserver === "function") {
      var last = -1;
      this._ro = new ResizeObserver(function () {
        var w = root.clientWidth;
        if (w !== last) { last = w; self.redraw(); }
      });
      this._ro.observe(root);
    }
    this._showViews();
  };

  // ---------------------------------------------------------------- data and selection

  Explorer.prototype.setPayload = function (payload, opts) {
    var self = this, token = ++this._token;
    if (opts && opts.selection) this.want = opts.selection;
    if (typeof payload === "string" && payload.indexOf('"message"') >= 0) {
      try { payload = JSON.parse(payload); } catch (e) { /* decoded (and reported) below */ }
    }
    if (payload && typeof payload === "object" && payload.message) {   // nothing to draw: say why
      this.data = null;
      this.statusEl.textContent = payload.message;
      this._showViews();
      return Promise.resolve(null);
    }
    if (!payload) {
      this.data = null;
      this.statusEl.textContent = "No attention to show yet: run an analysis first.";
      this._showViews();
      return Promise.resolve(null);
    }
    var t0 = performance.now();
    this.statusEl.textContent = "Decoding the attention\u2026";
    if (this.data) { this.data = null; this._showViews(); }   // never the old attention under the new title
    delete this.root.dataset.ready;
    var want = this.want || [null, 0];
    return decode(payload, want[0], function () { return token !== self._token; }).then(function (data) {
      if (token !== self._token) return null;   // a newer payload arrived meanwhile
      var t1 = performance.now();
      self.data = data;
      data.onLayer = function (l) { self._layerReady(data, l); };
      data.complete.then(function () {
        if (self.data !== data) return;
        self.timings.all_layers_ms = performance.now() - t0;
        self.root.dataset.decoded = "all";
      });
      self._thumbs = null; self._hmKey = null; self.focus = null; self.zoom = null;
      delete self.root.dataset.thumbs;
      delete self.root.dataset.decoded;
      self._rowBuf = new Float32Array(data.N);
      self.statusEl.textContent = "";
      self._fillSelectors();
      var w = self.want || [data.firstLayer, 0];
      self._setSel(w[0] - data.firstLayer, w[1]);
      self.modelEl.textContent = data.title;
      self.sizeEl.textContent = data.N + " tokens \u00B7 " + data.L + " layers \u00D7 " + data.H + " heads \u00B7 " +
        bytes(data.compressedBytes) + " sent, " + bytes(data.rawBytes) + " decoded" + (data.causal ? " \u00B7 causal" : "");
      self._showViews();
      var t2 = performance.now();
      self.timings = {decode_ms: t1 - t0, first_draw_ms: t2 - t1, first_render_ms: t2 - t0};
      self.loads += 1;
      self.root.dataset.ready = "1";
      self.root.dataset.loads = self.loads;
      self.root.dispatchEvent(new CustomEvent("ae-ready", {detail: self.timings}));
      return data;
    }, function (err) {
      if (token !== self._token) return null;
      self.data = null;
      self.statusEl.textContent = "Cannot show this attention: " + (err && err.message || err);
      self._showViews();
      console.error("attention explorer:", err);
      return null;
    });
  };

  Explorer.prototype._layerReady = function (data, l) {
    if (this.data !== data) return;
    if (l === this.li) this.redraw();
    if (this.view === "model") this._pumpThumbs();
  };

  // a layer still being inflated: a note where the drawing goes
  Explorer.prototype._waiting = function (canvas, w, h) {
    var ctx = sizeCanvas(canvas, w, h);
    ctx.clearRect(0, 0, w, h);
    ctx.fillStyle = "#66727f"; ctx.font = "13px system-ui, sans-serif"; ctx.textAlign = "left"; ctx.textBaseline = "top";
    ctx.fillText("decoding layer " + this.layerNumber() + "\u2026", 12, 24);
  };

  Explorer.prototype.layerNumber = function () { return this.data ? this.data.firstLayer + this.li : this.li + 1; };

  Explorer.prototype._fillSelectors = function () {
    var d = this.data, i, o;
    this.layerSel.textContent = ""; this.headSel.textContent = "";
    for (i = 0; i < d.L; i++) { o = el("option", null, this.layerSel, String(d.firstLayer + i)); o.value = d.firstLayer + i; }
    for (i = 0; i < d.H; i++) { o = el("option", null, this.headSel, String(i)); o.value = i; }
  };

  // select without reporting (host or internal); returns true when something changed
  Explorer.prototype._setSel = function (li, hi) {
    var d = this.data;
    if (!d) return false;
    li = clamp(li | 0, 0, d.L - 1); hi = clamp(hi | 0, 0, d.H - 1);
    var changed = li !== this.li || hi !== this.hi;
    this.li = li; this.hi = hi;
    this.want = [d.firstLayer + li, hi];
    this.titleEl.textContent = "layer " + (d.firstLayer + li) + " / " + (d.firstLayer + d.L - 1) +
      " \u00B7 head " + hi + " / " + (d.H - 1);
    this.root.dataset.layer = d.firstLayer + li; this.root.dataset.head = hi;
    this.layerSel.value = String(d.firstLayer + li); this.headSel.value = String(hi);
    if (this._thumbs) this._markThumb();
    this.redraw();
    return changed;
  };

  // public: select (layer number, head) as the host asks; not reported back
  Explorer.prototype.select = function (layer, head) {
    if (!this.data) { this.want = [layer, head]; return; }
    this._setSel(layer - this.data.firstLayer, head);
  };
  // a selection from the host (Python). The host echoes what this page reported; an echo of an
  // earlier report that arrives after the user moved on is stale and ignored
  Explorer.prototype.hostSelect = function (sel) {
    if (!sel) return;
    var layer = Array.isArray(sel) ? sel[0] : sel.layer, head = Array.isArray(sel) ? sel[1] : sel.head;
    if (!this.data) { this.want = [layer, head]; return; }
    var now = performance.now(), echo = false;
    this._reported = this._reported.filter(function (r) {
      if (!echo && r.layer === layer && r.head === head) { echo = true; return false; }
      return now - r.t < ECHO_MS;
    });
    if (echo || (layer === this.layerNumber() && head === this.hi)) return;
    this._setSel(layer - this.data.firstLayer, head);
  };

  Explorer.prototype._userSelect = function (layer, head, immediate) {
    if (!this.data) return;
    var before = [this.li, this.hi];
    this._setSel(layer - this.data.firstLayer, head);
    if (before[0] === this.li && before[1] === this.hi && !immediate) return;
    if (this.opts.onChange) this.opts.onChange(this.layerNumber(), this.hi);   // the page's other views, now
    var self = this, fn = this.opts.onSelect;
    if (!fn) return;
    clearTimeout(this._reportTimer);
    var fire = function () {
      var layer = self.layerNumber(), head = self.hi;
      self._reported.push({layer: layer, head: head, t: performance.now()});
      fn(layer, head);
    };
    if (immediate) fire(); else this._reportTimer = setTimeout(fire, REPORT_DELAY_MS);
  };

  Explorer.prototype._step = function (what, delta) {
    if (!this.data) return;
    if (what === "layer") this._userSelect(this.layerNumber() + delta, this.hi, false);
    else this._userSelect(this.layerNumber(), this.hi + delta, false);
  };

  Explorer.prototype._key = function (e) {
    if (!this.data || e.altKey || e.ctrlKey || e.metaKey) return;
    var t = e.target;
    if (t instanceof HTMLSelectElement || t instanceof HTMLInputElement) return;
    var handled = true;
    switch (e.key) {
      case "ArrowLeft": this._step("head", -1); break;
      case "ArrowRight": this._step("head", +1); break;
      case "ArrowUp": this._step("layer", -1); break;
      case "ArrowDown": this._step("layer", +1); break;
      case "1": this.setView("head"); break;
      case "2": this.setView("heatmap"); break;
      case "3": this.setView("model"); break;
      case "+": case "=": if (this.view === "heatmap") this._zoomBy(1.5); else handled = false; break;
      case "-": if (this.view === "heatmap") this._zoomBy(1 / 1.5); else handled = false; break;
      case "0": if (this.view === "heatmap") { this._fit(); this._drawHeatmap(); } else handled = false; break;
      case "Escape": if (this.focus) { this.focus = null; this._drawHead(); this._info(); } else handled = false; break;
      default: handled = false;
    }
    if (handled) e.preventDefault();
  };

  Explorer.prototype.setView = function (v) {
    if (["head", "heatmap", "model"].indexOf(v) < 0) return;
    this.view = v;
    if (v !== "model") this.detailView = v;
    this._showViews();
  };

  Explorer.prototype._showViews = function () {
    var has = !!this.data, v = this.view;
    this.hvView.classList.toggle("ae-on", has && v === "head");
    this.hmView.classList.toggle("ae-on", has && v === "heatmap");
    this.mvView.classList.toggle("ae-on", has && v === "model");
    for (var k in this.tabButtons) this.tabButtons[k].classList.toggle("ae-on", k === v);
    this.root.dataset.view = v;
    this.redraw();
  };

  Explorer.prototype.redraw = function () {
    if (!this.data || !this.root.isConnected || this.root.clientWidth === 0) return;
    if (this.view === "head") { this._drawHead(); this._info(); }
    else if (this.view === "heatmap") this._drawHeatmap();
    else this._drawModel();
  };

  // ---------------------------------------------------------------- head view

  Explorer.prototype._hvLayout = function () {
    // the scroller is as tall as the tokens need, up to 68 % of the window (at most 620 px)
    var w = Math.max(300, this.hvScroll.clientWidth);
    var h = Math.max(160, Math.min(620, Math.floor((global.innerHeight || 900) * 0.68)));
    var idxW = 4 + 7.3 * String(this.data.N - 1).length + 6;
    var tokW = Math.min(170, Math.max(70, (w - 2 * idxW - 90) / 2));
    return {w: w, h: h, idxW: idxW, tokW: tokW, xL: idxW + tokW, xR: w - idxW - tokW,
            chars: Math.max(4, Math.floor(tokW / 7.3)), pad: 4, head: 16};
  };

  Explorer.prototype._drawHead = function () {
    var d = this.data;
    if (!d || this.view !== "head" || this.hvScroll.clientWidth === 0) return;
    var g = this._hvLayout(), total = g.head + g.pad * 2 + d.N * ROW_H;
    if (!d.ready[this.li]) { this._waiting(this.hvCanvas, g.w, Math.min(g.h, total)); return; }
    var ctx = sizeCanvas(this.hvCanvas, g.w, Math.min(g.h, total));
    this.hvScroll.style.height = Math.min(g.h, total) + 2 + "px";
    this.hvSpacer.style.height = Math.max(0, total - Math.min(g.h, total)) + "px";
    var top = this.hvScroll.scrollTop, H = Math.min(g.h, total);
    var y0 = g.head + g.pad;   // rows start below the column headings
    var r0 = Math.max(0, Math.floor((top - g.pad) / ROW_H) - 1), r1 = Math.min(d.N - 1, Math.ceil((top + H - y0) / ROW_H));
    var y = function (i) { return y0 + i * ROW_H + ROW_H / 2 - top; };
    var l = this.li, h = this.hi, hm = d.headMax(l, h), f = this.focus, buf = this._rowBuf;
    ctx.clearRect(0, 0, g.w, H);
    var x1 = g.xL + 6, x2 = g.xR - 6, i, k, v, a;

    // weights of the focused token's partners (shown as backgrounds and lines)
    var partner = null;
    if (f) partner = f.side === "q" ? d.row(l, h, f.i, buf) : d.column(l, h, f.i, buf);

    // backgrounds
    for (i = r0; i <= r1; i++) {
      var yy = y(i) - ROW_H / 2 + 1;
      if (f && f.side === "q" && f.i === i) { ctx.fillStyle = "#ffe8cc"; ctx.fillRect(0, yy, g.xL + 2, ROW_H - 2); }
      if (f && f.side === "k" && f.i === i) { ctx.fillStyle = "#ffe8cc"; ctx.fillRect(g.xR - 2, yy, g.w - g.xR + 2, ROW_H - 2); }
      if (partner) {
        v = Math.sqrt(partner[i] / hm);
        if (v > 0.02) {
          ctx.fillStyle = PAL_CSS[clamp(Math.round(v * 255), 0, 255)];
          if (f.side === "q") ctx.fillRect(g.xR - 2, yy, g.tokW + 4, ROW_H - 2);
          else ctx.fillRect(g.idxW - 2, yy, g.tokW + 4, ROW_H - 2);
        }
      }
    }

    // lines
    ctx.lineCap = "round";
    if (f) {
      ctx.strokeStyle = ACCENT;
      for (k = 0; k < d.N; k++) {
        a = partner[k]; if (a <= 0) continue;
        v = Math.sqrt(a / hm); if (v < 0.06) continue;
        ctx.globalAlpha = Math.min(1, 0.15 + 0.85 * v); ctx.lineWidth = 0.6 + 2.6 * v;
        ctx.beginPath();
        if (f.side === "q") { ctx.moveTo(x1, y(f.i)); ctx.lineTo(x2, y(k)); }
        else { ctx.moveTo(x1, y(k)); ctx.lineTo(x2, y(f.i)); }
        ctx.stroke();
      }
    } else {
      ctx.strokeStyle = "#2b6cb0";
      for (i = r0; i <= r1; i++) {
        d.row(l, h, i, buf);
        var n = d.rowLen(i);
        for (k = 0; k < n; k++) {
          a = buf[k]; v = Math.sqrt(a / hm); if (v < 0.2) continue;
          ctx.globalAlpha = 0.08 + 0.5 * v; ctx.lineWidth = 0.5 + 1.5 * v;
          ctx.beginPath(); ctx.moveTo(x1, y(i)); ctx.lineTo(x2, y(k)); ctx.stroke();
        }
      }
    }
    ctx.globalAlpha = 1;

    // labels
    ctx.font = TOKEN_FONT; ctx.textBaseline = "middle";
    for (i = r0; i <= r1; i++) {
      var yi = y(i), t = clip(d.tokens[i], g.chars);
      ctx.fillStyle = "#8a96a3"; ctx.textAlign = "left"; ctx.fillText(String(i), 4, yi);
      ctx.textAlign = "right"; ctx.fillText(String(i), g.w - 4, yi);
      var darkL = partner && f.side === "k" && Math.sqrt(partner[i] / hm) > 0.62;
      var darkR = partner && f.side === "q" && Math.sqrt(partner[i] / hm) > 0.62;
      ctx.fillStyle = darkL ? "#fff" : "#1f2933"; ctx.textAlign = "right"; ctx.fillText(t, g.xL, yi);
      ctx.fillStyle = darkR ? "#fff" : "#1f2933"; ctx.textAlign = "left"; ctx.fillText(t, g.xR, yi);
    }
    // the column headings: a band that rows scroll under
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, g.w, g.head);
    ctx.strokeStyle = "#e4e8ec"; ctx.lineWidth = 1; ctx.beginPath(); ctx.moveTo(0, g.head - 0.5); ctx.lineTo(g.w, g.head - 0.5); ctx.stroke();
    ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = "#66727f"; ctx.textBaseline = "middle";
    ctx.textAlign = "right"; ctx.fillText("queries (attend from)", g.xL, g.head / 2);
    ctx.textAlign = "left"; ctx.fillText("keys (attended to)", g.xR, g.head / 2);
    // weight going to partners scrolled out of view: a badge at the top and the bottom
    if (f) {
      var v0 = Math.ceil((top - g.pad) / ROW_H), v1 = Math.floor((H + top - g.head - g.pad - ROW_H) / ROW_H);
      var above = 0, below = 0;
      for (k = 0; k < d.N; k++) { if (k < v0) above += partner[k]; else if (k > v1) below += partner[k]; }
      ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "middle";
      // in the free space between the columns, next to the partners' column
      var badge = function (text, yb) {
        var tw = ctx.measureText(text).width + 10, x0 = f.side === "q" ? x2 - 2 - tw : x1 + 2;
        ctx.fillStyle = "rgba(255,244,230,0.95)"; ctx.fillRect(x0, yb - 8, tw, 16);
        ctx.strokeStyle = ACCENT; ctx.lineWidth = 1; ctx.strokeRect(x0 + 0.5, yb - 7.5, tw - 1, 15);
        ctx.fillStyle = "#a13a0b"; ctx.textAlign = "left"; ctx.fillText(text, x0 + 5, yb);
      };
      this._offscreen = {above: above, below: below};
      if (above >= 0.0005) badge("\u2191 " + fmt(above) + " above", g.head + 10);
      if (below >= 0.0005) badge("\u2193 " + fmt(below) + " below", H - 10);
    }
  };

  Explorer.prototype._hvHit = function (e) {
    var d = this.data, g = this._hvLayout(), r = this.hvCanvas.getBoundingClientRect();
    var x = e.clientX - r.left, yy = e.clientY - r.top + this.hvScroll.scrollTop;
    if (e.clientY - r.top < g.head) return null;
    var i = Math.floor((yy - g.head - g.pad) / ROW_H);
    if (i < 0 || i >= d.N) return null;
    if (x <= g.xL + 4) return {side: "q", i: i};
    if (x >= g.xR - 4) return {side: "k", i: i};
    return null;
  };

  Explorer.prototype._hvHover = function (e, click) {
    if (!this.data || !this.data.ready[this.li]) return;
    var hit = this._hvHit(e), f = this.focus;
    if (click) {
      if (hit && f && f.pinned && f.side === hit.side && f.i === hit.i) this.focus = {side: hit.side, i: hit.i, pinned: false};
      else if (hit) this.focus = {side: hit.side, i: hit.i, pinned: true};
      else this.focus = null;
    } else {
      if (f && f.pinned) return;
      if (!hit && !f) return;
      if (hit && f && hit.side === f.side && hit.i === f.i) return;
      this.focus = hit ? {side: hit.side, i: hit.i, pinned: false} : null;
    }
    this._drawHead(); this._info();
  };

  // the side panel: the focused token's strongest partners, with their weights
  Explorer.prototype._info = function () {
    var d = this.data, f = this.focus, box = this.infoEl;
    box.textContent = "";
    if (!d || this.view !== "head" || !d.ready[this.li]) return;
    if (!f) {
      el("div", "ae-hint", box, "Hover a token: on the left, where it attends; on the right, what attends to it. " +
         "Click to pin it, then scroll. Colour: \u221A(weight / largest weight of the head).");
      return;
    }
    var buf = f.side === "q" ? d.row(this.li, this.hi, f.i, this._rowBuf) : d.column(this.li, this.hi, f.i, this._rowBuf);
    var idx = [], i;
    for (i = 0; i < d.N; i++) if (buf[i] > 0) idx.push(i);
    idx.sort(function (a, b) { return buf[b] - buf[a]; });
    var head = el("h4", null, box);
    head.textContent = (f.side === "q" ? "query " : "key ") + f.i + " \u201C" + showToken(d.tokens[f.i]) + "\u201D " +
      (f.side === "q" ? "attends to" : "is attended by") + (f.pinned ? " (pinned)" : "");
    var ol = el("ol", null, box);
    for (i = 0; i < Math.min(TOP_K, idx.length); i++) {
      var j = idx[i], li = el("li", null, ol);
      li.dataset.index = j; li.dataset.weight = buf[j];
      el("span", "ae-w", li, fmt(buf[j]));
      var tok = el("span", "ae-tok", li);
      el("span", "ae-i", tok, (f.side === "q" ? "k " : "q ") + j + " ");
      tok.appendChild(document.createTextNode(showToken(d.tokens[j])));
    }
    if (idx.length > TOP_K) el("div", "ae-hint", box, (idx.length - TOP_K) + " more with weight > 0");
  };

  Explorer.prototype._scrollToRow = function (i) {
    var g = this._hvLayout();
    this.hvScroll.scrollTop = Math.max(0, g.head + g.pad + i * ROW_H - this.hvScroll.clientHeight / 2);
  };

  // client coordinates of token i's label (scrolled into view): for tests and tours
  Explorer.prototype.tokenPoint = function (side, i) {
    if (this.view !== "head") this.setView("head");
    var g = this._hvLayout(), top = g.pad + i * ROW_H;   // row i's top below the headings band
    if (top < this.hvScroll.scrollTop || g.head + top + ROW_H > this.hvScroll.scrollTop + this.hvScroll.clientHeight)
      this._scrollToRow(i);
    this._drawHead();
    var r = this.hvCanvas.getBoundingClientRect();
    return {x: r.left + (side === "q" ? g.xL - 20 : g.xR + 20),
            y: r.top + g.head + g.pad + i * ROW_H + ROW_H / 2 - this.hvScroll.scrollTop};
  };

  // ---------------------------------------------------------------- heatmap view

  Explorer.prototype._hmLayout = function () {
    var avail = Math.max(320, this.hmView.clientWidth || this.root.clientWidth - 24);
    var left = 140, top = 112;
    // at most 28 px per token when the whole matrix shows: short prompts get a smaller square
    var side = clamp(Math.floor(Math.min(avail - left - 6, this.data ? this.data.N * 28 : 760)), 200, 760);
    return {left: left, top: top, side: side};
  };

  Explorer.prototype._fit = function () {
    var g = this._hmLayout();
    this.zoom = {z: g.side / this.data.N, ox: 0, oy: 0};
  };

  Explorer.prototype._clampZoom = function () {
    var g = this._hmLayout(), N = this.data.N, zf = g.side / N, zm = this.zoom;
    zm.z = clamp(zm.z, zf, Math.max(zf, 48));
    var span = g.side / zm.z;
    zm.ox = clamp(zm.ox, 0, Math.max(0, N - span)); zm.oy = clamp(zm.oy, 0, Math.max(0, N - span));
  };

  Explorer.prototype._zoomBy = function (factor, cx, cy) {
    if (!this.data) return;
    var g = this._hmLayout(), zm = this.zoom;
    if (!zm) { this._fit(); zm = this.zoom; }
    if (cx == null) { cx = g.side / 2; cy = g.side / 2; }
    var qx = zm.ox + cx / zm.z, qy = zm.oy + cy / zm.z;
    zm.z *= factor; this._clampZoom();
    zm.ox = qx - cx / zm.z; zm.oy = qy - cy / zm.z; this._clampZoom();
    this._drawHeatmap();
  };

  // the selected head at one pixel per cell, colour = sqrt(weight / head max) (or / row max)
  Explorer.prototype._renderFull = function () {
    var d = this.data, key = this.li + ":" + this.hi + ":" + this.rowNorm, norm = this.rowNorm;
    if (this._hmKey === key && this._hmData === d) return;
    var N = d.N, c = this.hmFull;
    if (c.width !== N) { c.width = N; c.height = N; }
    var ctx = c.getContext("2d");
    if (!this._hmImg || this._hmImg.width !== N) {   // one buffer, reused by every switch
      this._hmImg = ctx.createImageData(N, N); this._hmPx = new Uint32Array(this._hmImg.data.buffer);
    }
    var img = this._hmImg, px = this._hmPx;
    var l = this.li, h = this.hi, hm = d.headMax(l, h), codes = d.codes, disp = d.disp;
    var b = d.base(l, h), so = (l * d.H + h) * N;
    for (var q = 0; q < N; q++) {
      var f = norm ? 1 : Math.sqrt(d.scales[so + q] / hm), rs = b + d.rowStart(q), n = d.rowLen(q), o = q * N, k;
      for (k = 0; k < n; k++) px[o + k] = PAL[(disp[codes[rs + k]] * f + 0.5) | 0];
      for (; k < N; k++) px[o + k] = MASKED;
    }
    ctx.putImageData(img, 0, 0);
    this._hmKey = key; this._hmData = d;
  };

  Explorer.prototype._drawHeatmap = function () {
    var d = this.data;
    if (!d || this.view !== "heatmap" || this.hmView.clientWidth === 0) return;
    var g = this._hmLayout();
    if (!this.zoom) this._fit();
    this._clampZoom();
    if (!d.ready[this.li]) { this._waiting(this.hmMain, g.side, g.side); return; }
    this._renderFull();
    var zm = this.zoom, N = d.N, S = g.side, span = S / zm.z;
    this.hmGrid.style.gridTemplateColumns = g.left + "px " + S + "px";
    this.hmGrid.style.gridTemplateRows = g.top + "px " + S + "px";

    var ctx = sizeCanvas(this.hmMain, S, S);
    ctx.imageSmoothingEnabled = zm.z < 1;   // shrinking: average; enlarging: crisp cells
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, S, S);
    ctx.drawImage(this.hmFull, zm.ox, zm.oy, Math.min(span, N - zm.ox), Math.min(span, N - zm.oy),
                  0, 0, Math.min(span, N - zm.ox) * zm.z, Math.min(span, N - zm.oy) * zm.z);
    if (this._hover && zm.z >= 4) {   // outline the hovered cell
      ctx.strokeStyle = ACCENT; ctx.lineWidth = 1.5;
      ctx.strokeRect((this._hover.k - zm.ox) * zm.z, (this._hover.q - zm.oy) * zm.z, zm.z, zm.z);
    }
    this._drawAxes(g);
    this.zoomEl.textContent = (zm.z >= 1 ? zm.z.toFixed(1) : zm.z.toFixed(2)) + " px per cell";
    var lg = sizeCanvas(this.legendCanvas, 90, 10);
    for (var i = 0; i < 90; i++) { lg.fillStyle = PAL_CSS[Math.round(i / 89 * 255)]; lg.fillRect(i, 0, 1.5, 10); }
    this.legendMax.textContent = (this.rowNorm ? "row max" : fmt(d.headMax(this.li, this.hi))) + " (\u221A scale)";
  };

  Explorer.prototype._drawAxes = function (g) {
    var d = this.data, zm = this.zoom, S = g.side, step = Math.max(1, Math.ceil(LABEL_PX / zm.z));
    var i0 = Math.floor(zm.oy), i1 = Math.min(d.N - 1, Math.ceil(zm.oy + S / zm.z));
    var j0 = Math.floor(zm.ox), j1 = Math.min(d.N - 1, Math.ceil(zm.ox + S / zm.z));
    var idxW = 7 * String(d.N - 1).length + 8, chars = Math.floor((g.left - idxW - 8) / 6.7), i, p;

    var ctx = sizeCanvas(this.hmLeft, g.left, S);
    ctx.clearRect(0, 0, g.left, S);
    ctx.font = AXIS_FONT; ctx.textBaseline = "middle";
    for (i = Math.ceil(i0 / step) * step; i <= i1; i += step) {
      p = (i - zm.oy + 0.5) * zm.z;
      if (p < 4 || p > S - 4) continue;
      ctx.fillStyle = (this._hover && this._hover.q === i) ? ACCENT : "#1f2933";
      ctx.textAlign = "right"; ctx.fillText(clip(d.tokens[i], chars), g.left - idxW - 4, p);
      ctx.fillStyle = "#8a96a3"; ctx.fillText(String(i), g.left - 4, p);
    }
    ctx.save(); ctx.fillStyle = "#66727f"; ctx.font = "11px system-ui, sans-serif";
    ctx.translate(10, S / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center"; ctx.fillText("\u2190 query", 0, 0);
    ctx.restore();

    ctx = sizeCanvas(this.hmTop, S, g.top);
    ctx.clearRect(0, 0, S, g.top);
    ctx.font = AXIS_FONT; ctx.textBaseline = "middle";
    var tchars = Math.floor((g.top - idxW - 20) / 6.7);
    for (i = Math.ceil(j0 / step) * step; i <= j1; i += step) {
      p = (i - zm.ox + 0.5) * zm.z;
      if (p < 4 || p > S - 4) continue;
      ctx.save(); ctx.translate(p, g.top - 4); ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      ctx.fillStyle = "#8a96a3"; ctx.fillText(String(i), 0, 0);
      ctx.fillStyle = (this._hover && this._hover.k === i) ? ACCENT : "#1f2933";
      ctx.fillText(clip(d.tokens[i], tchars), idxW, 0);
      ctx.restore();
    }
    ctx.fillStyle = "#66727f"; ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "left"; ctx.textBaseline = "top";
    ctx.fillText("key \u2192", 2, 2);
  };

  Explorer.prototype._hmCell = function (e) {
    var r = this.hmMain.getBoundingClientRect(), zm = this.zoom, d = this.data;
    var x = e.clientX - r.left, y = e.clientY - r.top;
    var k = Math.floor(zm.ox + x / zm.z), q = Math.floor(zm.oy + y / zm.z);
    if (x < 0 || y < 0 || k < 0 || q < 0 || k >= d.N || q >= d.N) return null;
    return {q: q, k: k, x: x, y: y};
  };

  Explorer.prototype._bindHeatmap = function () {
    var self = this, drag = null;
    var main = this.hmMain;
    // ctrl (or cmd) + wheel, and trackpad pinches, zoom at the pointer; a plain wheel scrolls the
    // matrix while it can move that way and otherwise leaves the page to scroll
    main.addEventListener("wheel", function (e) {
      if (!self.data || !self.zoom) return;
      var zm = self.zoom, dy = e.deltaY * (e.deltaMode === 1 ? 16 : 1), dx = e.deltaX * (e.deltaMode === 1 ? 16 : 1);
      if (e.ctrlKey || e.metaKey) {
        e.preventDefault();
        var r = main.getBoundingClientRect();
        self._zoomBy(Math.pow(1.0025, -dy), e.clientX - r.left, e.clientY - r.top);
        return;
      }
      if (e.shiftKey && !dx) { dx = dy; dy = 0; }
      var ox = zm.ox, oy = zm.oy;
      zm.ox += dx / zm.z; zm.oy += dy / zm.z;
      self._clampZoom();
      if (zm.ox !== ox || zm.oy !== oy) { e.preventDefault(); self._drawHeatmap(); }
    }, {passive: false});
    main.addEventListener("pointerdown", function (e) {
      if (!self.data || !self.zoom || e.button !== 0) return;
      drag = {x: e.clientX, y: e.clientY, ox: self.zoom.ox, oy: self.zoom.oy, moved: false};
      main.setPointerCapture(e.pointerId);
    });
    main.addEventListener("pointerup", function (e) {
      if (drag) { main.releasePointerCapture(e.pointerId); main.classList.remove("ae-drag"); }
      drag = null;
    });
    main.addEventListener("pointermove", function (e) {
      if (!self.data || !self.zoom) return;
      if (drag) {
        var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
        if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; main.classList.add("ae-drag"); }
        if (drag.moved) {
          self.zoom.ox = drag.ox - dx / self.zoom.z; self.zoom.oy = drag.oy - dy / self.zoom.z;
          self._drawHeatmap();
          return;
        }
      }
      self._hmTooltip(e);
    });
    main.addEventListener("pointerleave", function () {
      self.tooltip.style.display = "none";
      if (self._hover) { self._hover = null; self._drawHeatmap(); }
    });
  };

  Explorer.prototype._hmTooltip = function (e) {
    var d = this.data, c = this._hmCell(e), tip = this.tooltip;
    if (!c || !d.ready[this.li]) { tip.style.display = "none"; return; }
    var masked = d.causal && c.k > c.q, w = d.value(this.li, this.hi, c.q, c.k);
    tip.textContent = "query " + c.q + "  \u201C" + showToken(d.tokens[c.q]) + "\u201D\n" +
                      "key   " + c.k + "  \u201C" + showToken(d.tokens[c.k]) + "\u201D\n" +
                      (masked ? "masked (causal)" : "weight " + fmt(w));
    tip.dataset.q = c.q; tip.dataset.k = c.k; tip.dataset.weight = w;
    tip.style.display = "block";
    var g = this._hmLayout(), tx = g.left + c.x + 14, ty = g.top + c.y + 14;
    var tw = tip.offsetWidth, th = tip.offsetHeight;
    if (tx + tw > g.left + g.side) tx = g.left + c.x - tw - 10;
    if (ty + th > g.top + g.side) ty = g.top + c.y - th - 10;
    tip.style.left = tx + "px"; tip.style.top = ty + "px";
    var prev = this._hover;
    if (!prev || prev.q !== c.q || prev.k !== c.k) { this._hover = {q: c.q, k: c.k}; this._drawHeatmap(); }
  };

  // ---------------------------------------------------------------- model view

  Explorer.prototype._thumbSize = function () {
    var d = this.data, avail = Math.max(300, this.mvScroll.clientWidth || this.root.clientWidth - 24);
    return clamp(Math.floor((avail - 44) / d.H) - 8, 40, 96);
  };

  // one head pooled (max) to R x R pixels, colour = sqrt(weight / head max)
  Explorer.prototype._thumbImage = function (th, l, h) {
    var d = this.data, N = d.N, R = th.R, map = th.map, cmax = th.cmax, acc = th.acc, j, k, c;
    var codes = d.codes, disp = d.disp, scales = d.scales;
    var hm = d.headMax(l, h), b = d.base(l, h), so = (l * d.H + h) * N;
    acc.fill(-1);
    for (var q = 0; q < N; q++) {
      var rs = b + d.rowStart(q), n = d.rowLen(q), ro = map[q] * R, last = map[n - 1];
      cmax.fill(-1);
      for (k = 0; k < n; k++) { c = codes[rs + k]; j = map[k]; if (c > cmax[j]) cmax[j] = c; }
      var f = Math.sqrt(scales[so + q] / hm);
      for (j = 0; j <= last; j++) {
        if (cmax[j] < 0) continue;
        var v = disp[cmax[j]] * f;
        if (v > acc[ro + j]) acc[ro + j] = v;
      }
    }
    var img = new ImageData(R, R), px = new Uint32Array(img.data.buffer);
    for (var i = 0; i < R * R; i++) px[i] = acc[i] < 0 ? MASKED : PAL[(acc[i] + 0.5) | 0];
    return img;
  };

  Explorer.prototype._drawModel = function () {
    var d = this.data;
    if (!d || this.view !== "model" || this.mvScroll.clientWidth === 0) return;
    var T = this._thumbSize(), self = this;
    if (!(this._thumbs && this._thumbs.data === d && this._thumbs.T === T)) {
      var R = Math.min(d.N, T), map = new Int32Array(d.N);
      for (var i = 0; i < d.N; i++) map[i] = Math.floor(i * R / d.N);
      this._thumbs = {data: d, T: T, R: R, map: map, cmax: new Int32Array(R), acc: new Float32Array(R * R),
                      images: new Array(d.L * d.H), t0: performance.now()};
      this._buildGrid();
    }
    this._markThumb();
    this._pumpThumbs();
  };

  Explorer.prototype._buildGrid = function () {
    var d = this.data, th = this._thumbs, T = th.T, grid = this.mvGrid, self = this, h;
    grid.textContent = "";
    grid.style.gridTemplateColumns = "52px repeat(" + d.H + ", " + (T + 4) + "px)";
    el("div", "ae-lab", grid, "");
    for (h = 0; h < d.H; h++) el("div", "ae-lab", grid, "head " + h);
    this._thumbEls = []; this._thumbCanvases = [];
    for (var l = 0; l < d.L; l++) {
      el("div", "ae-lab ae-row", grid, "layer " + (d.firstLayer + l));
      for (h = 0; h < d.H; h++) {
        var b = el("button", "ae-thumb", grid);
        b.type = "button"; b.dataset.layer = d.firstLayer + l; b.dataset.head = h;
        b.title = "layer " + (d.firstLayer + l) + ", head " + h + " (click to open)";
        var c = el("canvas", null, b);
        c.width = th.R; c.height = th.R; c.style.width = T + "px"; c.style.height = T + "px";
        var img = th.images[l * d.H + h];
        if (img) c.getContext("2d").putImageData(img, 0, 0);
        this._thumbEls.push(b); this._thumbCanvases.push(c);
      }
    }
    if (!this._mvBound) {
      this._mvBound = true;
      grid.addEventListener("click", function (e) {
        var b = e.target.closest && e.target.closest(".ae-thumb");
        if (!b) return;
        self._userSelect(parseInt(b.dataset.layer, 10), parseInt(b.dataset.head, 10), true);
        self.setView(self.detailView);
      });
    }
  };

  // thumbnails are computed in slices of ~25 ms so the page stays responsive (the selected
  // layer first); clicks work before they are all drawn
  Explorer.prototype._pumpThumbs = function () {
    var th = this._thumbs, d = this.data, self = this;
    if (!th || th.pending || th.done) return;
    var order = th.order;
    if (!order) {
      order = th.order = [];
      for (var l = 0; l < d.L; l++) for (var h = 0; h < d.H; h++) order.push(((l + this.li) % d.L) * d.H + h);
      th.next = 0;
    }
    var t0 = performance.now();
    while (th.next < order.length && performance.now() - t0 < 25) {
      var idx = order[th.next];
      if (!d.ready[Math.floor(idx / d.H)]) return;   // resumed by _layerReady
      th.next++;
      if (!th.images[idx]) th.images[idx] = this._thumbImage(th, Math.floor(idx / d.H), idx % d.H);
      var c = this._thumbCanvases && this._thumbCanvases[idx];
      if (c) c.getContext("2d").putImageData(th.images[idx], 0, 0);
    }
    if (th.next < order.length) {
      th.pending = setTimeout(function () { th.pending = 0; if (self._thumbs === th) self._pumpThumbs(); }, 0);
    } else {
      th.done = true;
      this.timings.model_view_ms = performance.now() - th.t0;
      this.root.dataset.thumbs = "done";
    }
  };

  Explorer.prototype._markThumb = function () {
    if (!this._thumbEls) return;
    var sel = this.li * this.data.H + this.hi;
    for (var i = 0; i < this._thumbEls.length; i++) this._thumbEls[i].classList.toggle("ae-sel", i === sel);
  };

  // ---------------------------------------------------------------- entry points

  function mount(host, opts) {
    if (host.__attentionExplorer) {
      var ex = host.__attentionExplorer;
      if (opts && opts.onSelect) ex.opts.onSelect = opts.onSelect;
      if (opts && opts.onChange) ex.opts.onChange = opts.onChange;
      return ex;
    }
    return new Explorer(host, opts);
  }

  var Bus = global.DashboardBus;  // ui/static/selection_bus.js, loaded first

  // gr.HTML js_on_load: element = the component, props.value = payload JSON, props.selection,
  // props.group = the selection bus group (default "layer")
  function gradio(element, props, trigger, watch) {
    var host = element.querySelector(".ae-mount") || element;
    var group = props.group || "layer";
    var ex = mount(host, {
      selection: props.selection,
      onSelect: function (layer, head) {
        trigger("select", {index: [layer, head], value: "layer " + layer + ", head " + head});
      },
      onChange: function (layer, head) { Bus.publish(group, layer, head, host); }
    });
    Bus.subscribe(group, host, function (layer, head) { ex.select(layer, head); });
    var last = null;
    var sync = function () {
      var v = props.value || null, s = props.selection;
      if (v !== last) { last = v; ex.setPayload(v, {selection: s}); }
      else if (s && !Bus.echo(group, host, s[0], s[1])) ex.hostSelect(s);
    };
    sync();
    if (typeof watch === "function") watch(["value", "selection"], sync);
    return ex;
  }

  // a self-contained page (ui/explorer.py standalone_html): the payload JSON sits in a
  // JSON script element (type application/json); timings include parsing it
  function standalone(hostId, dataId, opts) {
    var t0 = performance.now();
    var ex = mount(document.getElementById(hostId), opts);
    var payload = JSON.parse(document.getElementById(dataId).textContent);
    var t1 = performance.now();
    return ex.setPayload(payload).then(function () {
      ex.timings.parse_ms = t1 - t0;
      ex.timings.first_render_ms = performance.now() - t0;   // parse + decode + first draw
      ex.timings.ready_since_navigation_ms = performance.now();
      return ex;
    });
  }

  global.AttentionExplorer = {version: VERSION, mount: mount, gradio: gradio, standalone: standalone,
                              decode: decode};
})(window);
