(function () {
  "use strict";
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
  function niceMetres(m) {
    var p = Math.pow(10, Math.floor(Math.log10(m))), r = m / p;
    return (r >= 5 ? 5 : r >= 2 ? 2 : 1) * p;
  }
  function initMap(el) {
    var cfg = JSON.parse(document.getElementById(el.getAttribute("data-cfg")).textContent);
    var canvas = el.querySelector("canvas"), img = el.querySelector("img.sw-src");
    var ctx = canvas.getContext("2d");
    var bar = el.querySelector(".scalebar"), readout = el.querySelector(".readout");
    var W = 1, H = 1, s = 1, tx = 0, ty = 0, fitS = 1, dpr = window.devicePixelRatio || 1;
    var probe = null;
    try {
      var pc = document.createElement("canvas");
      pc.width = cfg.iw; pc.height = cfg.ih;
      var pctx = pc.getContext("2d");
      pctx.drawImage(img, 0, 0);
      probe = pctx.getImageData(0, 0, cfg.iw, cfg.ih).data;
    } catch (err) { probe = null; }
    function resize() {
      var r = canvas.getBoundingClientRect();
      W = Math.max(1, r.width); H = Math.max(1, r.height);
      canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
    }
    function fit() {
      fitS = Math.min(W / cfg.iw, H / cfg.ih);
      s = fitS; tx = (W - cfg.iw * s) / 2; ty = (H - cfg.ih * s) / 2;
    }
    function scaleBar() {
      var mpp = cfg.px_x / s;  // metres per CSS pixel
      var metres = niceMetres(mpp * 120);
      bar.querySelector(".bar").style.width = (metres / mpp).toFixed(1) + "px";
      bar.querySelector(".label").textContent = metres >= 1000 ? (metres / 1000) + " km" : metres + " m";
      bar.setAttribute("data-metres", String(metres));
      bar.setAttribute("data-px", (metres / mpp).toFixed(2));
    }
    function draw() {
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, W, H);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(img, tx, ty, cfg.iw * s, cfg.ih * s);
      scaleBar();
      el.setAttribute("data-zoom", (s / fitS).toFixed(4));
    }
    function zoomAt(k, sx, sy) {
      var ns = Math.min(Math.max(s * k, fitS * 0.25), Math.max(fitS * 2, 16 * cfg.factor));
      k = ns / s; tx = sx - (sx - tx) * k; ty = sy - (sy - ty) * k; s = ns; draw();
    }
    function world(sx, sy) {
      var ix = (sx - tx) / s, iy = (sy - ty) / s;
      return [cfg.x0 + ix * cfg.px_x, cfg.y1 - iy * cfg.px_y, ix, iy];
    }
    function show(sx, sy, prefix) {
      var w = world(sx, sy);
      if (w[2] < 0 || w[3] < 0 || w[2] >= cfg.iw || w[3] >= cfg.ih) {
        readout.textContent = "outside the grid";
        return;
      }
      var txt = fmtLL(toLonLat(cfg, w[0], w[1])) + " | E " + w[0].toFixed(0) + " N " + w[1].toFixed(0);
      if (probe) {
        var o = (Math.floor(w[3]) * cfg.iw + Math.floor(w[2])) * 4, best = 3, bd = 1e9;
        for (var c = 0; c < 4; c++) {
          var h = cfg.colours[c], d = 0;
          for (var b = 0; b < 3; b++) d += Math.abs(parseInt(h.substr(1 + 2 * b, 2), 16) - probe[o + b]);
          if (d < bd) { bd = d; best = c; }
        }
        txt += " | " + cfg.names[best];
      }
      readout.textContent = (prefix || "") + txt;
    }
    function local(e) { var r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; }
    canvas.addEventListener("wheel", function (e) {
      e.preventDefault();
      var p = local(e); zoomAt(Math.exp(-e.deltaY * 0.0015), p[0], p[1]);
    }, { passive: false });
    var drag = null;
    canvas.addEventListener("pointerdown", function (e) {
      drag = local(e); canvas.setPointerCapture(e.pointerId); canvas.focus();
    });
    canvas.addEventListener("pointermove", function (e) {
      var p = local(e);
      if (drag) { tx += p[0] - drag[0]; ty += p[1] - drag[1]; drag = p; draw(); }
      show(p[0], p[1]);
    });
    function endDrag() { drag = null; }
    canvas.addEventListener("pointerup", endDrag);
    canvas.addEventListener("pointercancel", endDrag);
    el.querySelectorAll("button[data-act]").forEach(function (b) {
      b.addEventListener("click", function () {
        var a = b.getAttribute("data-act");
        if (a === "in") zoomAt(1.5, W / 2, H / 2);
        else if (a === "out") zoomAt(1 / 1.5, W / 2, H / 2);
        else { fit(); draw(); }
      });
    });
    el.addEventListener("keydown", function (e) {
      var k = e.key, done = true;
      if (k === "+" || k === "=") zoomAt(1.5, W / 2, H / 2);
      else if (k === "-" || k === "_") zoomAt(1 / 1.5, W / 2, H / 2);
      else if (k === "0") { fit(); draw(); }
      else if (k === "ArrowLeft") { tx += 60; draw(); }
      else if (k === "ArrowRight") { tx -= 60; draw(); }
      else if (k === "ArrowUp") { ty += 60; draw(); }
      else if (k === "ArrowDown") { ty -= 60; draw(); }
      else done = false;
      if (done) e.preventDefault();
    });
    window.addEventListener("resize", function () {  // keep the view centre and the relative zoom
      var cx = (W / 2 - tx) / s, cy = (H / 2 - ty) / s, rel = s / fitS;
      resize();
      fitS = Math.min(W / cfg.iw, H / cfg.ih);
      s = fitS * rel; tx = W / 2 - cx * s; ty = H / 2 - cy * s;
      draw();
    });
    resize(); fit(); draw();
    var hz = /(?:^#|&)zoom=([0-9.]+)/.exec(window.location.hash);  // report.html#zoom=4 opens zoomed in
    if (hz && parseFloat(hz[1]) > 0) zoomAt(parseFloat(hz[1]), W / 2, H / 2);
    var x1 = cfg.x0 + cfg.width_m, y0 = cfg.y1 - cfg.height_m;
    var corners = [[cfg.x0, cfg.y1], [x1, cfg.y1], [x1, y0], [cfg.x0, y0]].map(function (p) {
      return toLonLat(cfg, p[0], p[1]);
    });
    el.setAttribute("data-corners-js", JSON.stringify(corners));
    el.querySelector(".corners-js").textContent = "Script check, NW corner: " + fmtLL(corners[0]) + ".";
    show(W / 2, H / 2, "view centre: ");
    el.setAttribute("data-probe", probe ? "1" : "0");
    el.setAttribute("data-ready", "1");
  }
  function start() {
    var maps = document.querySelectorAll(".sw-map"), ok = 0;
    maps.forEach(function (el) {
      try { initMap(el); ok++; } catch (err) { el.setAttribute("data-error", String(err)); }
    });
    document.documentElement.setAttribute("data-sw-ready", ok === maps.length ? "1" : "partial");
  }
  if (document.readyState === "complete") start(); else window.addEventListener("load", start);
})();
