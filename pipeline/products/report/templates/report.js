(function () {
  "use strict";
  // The report's map, on Leaflet (inlined before this script). Each zone is drawn in its own
  // grid with L.CRS.Simple: map units are grid metres from the zone's north-west corner
  // (lat = N - y1, lng = E - x0), so every layer is one image on cfg.bounds and the layers
  // and the hillshade line up pixel for pixel. report.html#zone=<zone>&layer=<key> opens a
  // zone and a layer (through the layer control, as a click would).

  // Grid metres to lon/lat: cubic interpolation (a 4 x 4-node Lagrange stencil) between the
  // lon/lat nodes computed with PROJ (cfg.nodes, row 0 north); the same formula as
  // pipeline/products/report/lonlat.py, which checks it against PROJ when choosing the nodes.
  function lagrange(t) {
    return [-(t - 1) * (t - 2) * (t - 3) / 6, t * (t - 2) * (t - 3) / 2,
      -t * (t - 1) * (t - 3) / 2, t * (t - 1) * (t - 2) / 6];
  }
  function toLonLat(cfg, E, N) {
    var n = cfg.nodes, m = n.length - 1, k = n[0].length - 1;
    var u = (E - cfg.x0) / cfg.width_m * k, v = (cfg.y1 - N) / cfg.height_m * m;
    var i = Math.min(Math.max(Math.floor(v) - 1, 0), m - 3), j = Math.min(Math.max(Math.floor(u) - 1, 0), k - 3);
    var wv = lagrange(v - i), wu = lagrange(u - j), out = [0, 0];
    for (var a = 0; a < 4; a++) {
      for (var b = 0; b < 4; b++) {
        out[0] += wv[a] * wu[b] * n[i + a][j + b][0];
        out[1] += wv[a] * wu[b] * n[i + a][j + b][1];
      }
    }
    return out;
  }
  function fmtLL(ll) {
    var lon = ll[0], lat = ll[1];
    return Math.abs(lat).toFixed(5) + "\u00b0 " + (lat >= 0 ? "N" : "S") + ", "
      + Math.abs(lon).toFixed(5) + "\u00b0 " + (lon >= 0 ? "E" : "W");
  }
  function hashParams() {
    var out = {};
    window.location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var p = kv.split("=");
      if (p[0]) out[decodeURIComponent(p[0])] = decodeURIComponent(p[1] || "");
    });
    return out;
  }
  function each(selector, fn) { Array.prototype.forEach.call(document.querySelectorAll(selector), fn); }

  function start() {
    var el = document.getElementById("sw-map"), root = document.documentElement;
    if (!el) return;
    if (typeof L === "undefined") { root.setAttribute("data-sw-ready", "error"); return; }
    var cfgs = {}, order = [];
    each("script[data-sw-zone]", function (s) {
      var c = JSON.parse(s.textContent); cfgs[c.zid] = c; order.push(c.zid);
    });
    var map = L.map(el, { crs: L.CRS.Simple, zoomSnap: 0, zoomDelta: 0.5, wheelPxPerZoomLevel: 120,
      minZoom: -14, maxZoom: 8, attributionControl: false });
    map.createPane("sw-hillshade").style.zIndex = 250;
    map.createPane("sw-data").style.zIndex = 450;
    L.control.scale({ metric: true, imperial: false, maxWidth: 160 }).addTo(map);
    var opacityInput = document.getElementById("sw-opacity");
    var st = { cfg: null, key: null, byKey: {}, hill: null, control: null, probe: null, started: false };

    function opacity() { return opacityInput ? opacityInput.value / 100 : 0.7; }
    function loaded(layer) {  // record the image's decoded size once it is in the page
      var img = layer.getElement();
      function mark() { img.setAttribute("data-natural", img.naturalWidth + "x" + img.naturalHeight); ready(); }
      if (img.complete && img.naturalWidth) mark(); else img.addEventListener("load", mark);
    }
    function ready() {
      if (!st.started) return;
      var imgs = [st.byKey[st.key]].concat(st.hill ? [st.hill] : []);
      var ok = imgs.every(function (l) { var i = l.getElement(); return i && i.getAttribute("data-natural"); });
      if (ok) root.setAttribute("data-sw-ready", "1");
    }
    function setLayer(key) {
      st.key = key;
      el.setAttribute("data-layer", key);
      each('.sw-legend[data-zone="' + st.cfg.zid + '"] .ramp', function (r) { r.hidden = r.getAttribute("data-layer") !== key; });
      ready();
    }
    function buildProbe(cfg) {  // the class image's pixels, for the readout
      var img = new Image();
      img.onload = function () {
        try {
          var c = document.createElement("canvas");
          c.width = cfg.iw; c.height = cfg.ih;
          var ctx = c.getContext("2d");
          ctx.drawImage(img, 0, 0);
          if (st.cfg !== cfg) return;
          st.probe = ctx.getImageData(0, 0, cfg.iw, cfg.ih).data;
          el.setAttribute("data-probe", "1");
          if (st.centre) show(map.getCenter(), "view centre: ");
        } catch (err) { el.setAttribute("data-probe", "0"); }
      };
      img.setAttribute("src", cfg.layers[0].uri);
    }
    function classAt(cfg, ix, iy) {
      if (!st.probe) return "";
      var o = (iy * cfg.iw + ix) * 4, best = 3, bd = 1e9;
      for (var c = 0; c < 4; c++) {
        var h = cfg.colours[c], d = 0;
        for (var b = 0; b < 3; b++) d += Math.abs(parseInt(h.substr(1 + 2 * b, 2), 16) - st.probe[o + b]);
        if (d < bd) { bd = d; best = c; }
      }
      return " | " + cfg.names[best];
    }
    function show(latlng, prefix) {
      var cfg = st.cfg, out = document.getElementById("sw-readout");
      var E = cfg.x0 + latlng.lng, N = cfg.y1 + latlng.lat;
      var ix = Math.floor(latlng.lng / cfg.px_x), iy = Math.floor(-latlng.lat / cfg.px_y);
      if (latlng.lng < 0 || latlng.lat > 0 || latlng.lng > cfg.width_m || -latlng.lat > cfg.height_m) {
        out.textContent = "outside the grid";
        return;
      }
      out.textContent = (prefix || "") + fmtLL(toLonLat(cfg, E, N)) + " | E " + E.toFixed(0) + " N " + N.toFixed(0)
        + classAt(cfg, Math.min(ix, cfg.iw - 1), Math.min(iy, cfg.ih - 1));
    }
    function showZone(zid, key) {
      var cfg = cfgs[zid] || cfgs[order[0]];
      if (st.control) map.removeControl(st.control);
      Object.keys(st.byKey).forEach(function (k) { map.removeLayer(st.byKey[k]); });
      if (st.hill) map.removeLayer(st.hill);
      st.cfg = cfg; st.byKey = {}; st.hill = null; st.probe = null;
      var base = {}, over = {};
      cfg.layers.forEach(function (spec) {
        var layer = L.imageOverlay(spec.uri, cfg.bounds, { pane: "sw-data", opacity: opacity(), interactive: false,
          className: "sw-overlay sw-layer-" + spec.key });
        layer.swKey = spec.key;
        layer.on("add", function () { loaded(layer); });
        base[spec.label] = layer; st.byKey[spec.key] = layer;
      });
      if (cfg.hillshade) {
        st.hill = L.imageOverlay(cfg.hillshade, cfg.bounds, { pane: "sw-hillshade", interactive: false,
          className: "sw-overlay sw-layer-hillshade" });
        st.hill.on("add", function () { loaded(st.hill); });
        over.hillshade = st.hill;
        st.hill.addTo(map);
      }
      st.control = L.control.layers(base, over, { collapsed: false, sortLayers: false }).addTo(map);
      var first = st.byKey[key] ? key : cfg["default"];
      st.key = first;
      st.byKey[first].addTo(map);
      el.setAttribute("data-zone", cfg.zid);
      el.setAttribute("data-hillshade", cfg.hillshade ? "1" : "0");
      each(".sw-legend, .sw-zone-note", function (n) { n.hidden = n.getAttribute("data-zone") !== cfg.zid; });
      var crs = document.getElementById("sw-crs"), sel = document.getElementById("sw-zone");
      if (crs) crs.textContent = cfg.crs;
      if (sel) sel.value = cfg.zid;
      map.fitBounds(cfg.grid_bounds, { animate: false });
      setLayer(first);
      buildProbe(cfg);
      var x1 = cfg.x0 + cfg.width_m, y0 = cfg.y1 - cfg.height_m;
      var corners = [[cfg.x0, cfg.y1], [x1, cfg.y1], [x1, y0], [cfg.x0, y0]].map(function (p) {
        return toLonLat(cfg, p[0], p[1]);
      });
      el.setAttribute("data-corners-js", JSON.stringify(corners));
      each('.sw-zone-note[data-zone="' + cfg.zid + '"] .corners-js', function (n) {
        n.textContent = "Script check, NW corner: " + fmtLL(corners[0]) + ".";
      });
      st.centre = true;
      show(map.getCenter(), "view centre: ");
    }
    function pick(key) {  // switch layers through the control, as a click on its radio button would
      var want = (st.cfg.layers.filter(function (s) { return s.key === key; })[0] || {}).label;
      var labels = st.control.getContainer().querySelectorAll(".leaflet-control-layers-base label");
      Array.prototype.forEach.call(labels, function (lab) {
        if (lab.textContent.trim() === want) lab.querySelector("input").click();
      });
    }

    map.on("baselayerchange", function (e) { setLayer(e.layer.swKey); });
    map.on("mousemove", function (e) { st.centre = false; show(e.latlng); });
    if (opacityInput) {
      opacityInput.addEventListener("input", function () {
        Object.keys(st.byKey).forEach(function (k) { st.byKey[k].setOpacity(opacity()); });
      });
    }
    var sel = document.getElementById("sw-zone");
    if (sel) sel.addEventListener("change", function () { showZone(sel.value, st.key); });
    each("button[data-show-zone]", function (b) {
      b.addEventListener("click", function () {
        showZone(b.getAttribute("data-show-zone"), st.key);
        document.getElementById("map").scrollIntoView();
      });
    });
    var want = hashParams();
    var zone = order.filter(function (z) { return z === want.zone || cfgs[z].zone === want.zone; })[0] || order[0];
    showZone(zone, null);
    if (want.layer && want.layer !== st.key) pick(want.layer);
    st.started = true;
    el.setAttribute("data-ready", "1");
    ready();
  }
  if (document.readyState === "complete") start(); else window.addEventListener("load", start);
})();
