"""The search page served at ``GET /``: one self-contained HTML file (no build step).

Upload an image or pick a random database item, see the top-k thumbnails
(grey or colour, as the dataset's images are) with their distances and the
dataset's own class names, and switch between QaDWH, DWH and plain
Hamming ranking to see the order change. Everything it shows comes from the
public JSON API; with a token configured it asks for it once and keeps it in
``sessionStorage``. Data from the API is only ever inserted as text.
"""

PAGE_HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>qadwh image search</title>
<style>
  :root { --fg:#1d2330; --muted:#667; --accent:#2f6fdf; --bg:#f6f7fb; --card:#fff; }
  * { box-sizing: border-box; }
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: var(--fg); background: var(--bg); }
  header { padding: 14px 22px; background: #fff; border-bottom: 1px solid #dde; display: flex; gap: 18px; align-items: baseline; flex-wrap: wrap; }
  header h1 { font-size: 19px; margin: 0; }
  header .meta { color: var(--muted); font-size: 13px; }
  main { padding: 18px 22px; max-width: 1200px; }
  .controls { display: flex; gap: 14px; align-items: center; flex-wrap: wrap; margin-bottom: 14px; }
  .modes button { border: 1px solid #bbc; background: #fff; padding: 6px 12px; cursor: pointer; font-size: 14px; }
  .modes button:first-child { border-radius: 6px 0 0 6px; }
  .modes button:last-child { border-radius: 0 6px 6px 0; }
  .modes button.active { background: var(--accent); color: #fff; border-color: var(--accent); }
  button.primary, label.primary { background: var(--accent); color: #fff; border: 0; border-radius: 6px; padding: 7px 14px; cursor: pointer; font-size: 14px; }
  input[type=number] { width: 64px; padding: 5px; }
  #query { display: flex; gap: 14px; align-items: center; margin: 10px 0 16px; min-height: 40px; }
  #query img { width: 96px; height: 96px; image-rendering: pixelated; border: 2px solid var(--accent); border-radius: 6px; background: #000; object-fit: contain; }
  #status { color: var(--muted); font-size: 14px; }
  #status.error { color: #b00020; }
  #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(120px, 1fr)); gap: 12px; }
  .result { background: var(--card); border-radius: 8px; padding: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.12); font-size: 12px; cursor: pointer; }
  .result img { width: 100%; aspect-ratio: 1; image-rendering: pixelated; background: #000; border-radius: 4px; object-fit: contain; display: block; }
  .result .rank { font-weight: 600; }
  .result .dist { font-family: ui-monospace, monospace; color: #334; }
  .result .label { color: var(--muted); }
  #tokenbox { display: none; gap: 8px; align-items: center; margin-bottom: 12px; }
  #tokenbox input { width: 260px; padding: 5px; }
  footer { padding: 16px 22px; color: var(--muted); font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1>QaDWH image search</h1>
  <span class="meta">index <b id="version">…</b> · <span id="items">?</span> items · <span id="bits">?</span> bits · <span id="shards">?</span> shards · <span id="classes" title="">?</span> classes</span>
</header>
<main>
  <div id="tokenbox">
    <label for="token">Bearer token</label><input id="token" type="password" autocomplete="off">
    <button id="token-save" class="primary" type="button">Use token</button>
  </div>
  <div class="controls">
    <label class="primary" for="file">Upload image…</label>
    <input id="file" type="file" accept="image/*" style="position:absolute;left:-9999px;width:1px;height:1px">
    <button id="random" class="primary" type="button">Random database item</button>
    <span class="modes" role="group" aria-label="ranking">
      <button type="button" data-mode="qadwh" class="active" title="query-adaptive weighted Hamming (paper eq. 15)">QaDWH</button><button type="button" data-mode="dwh" title="one learned weight vector for every query">DWH</button><button type="button" data-mode="hamming" title="plain Hamming distance">Hamming</button>
    </span>
    <label>k <input id="k" type="number" min="1" max="1000" value="12"></label>
  </div>
  <div id="query"></div>
  <div id="status">Upload an image or pick a random item.</div>
  <div id="results" aria-live="polite"></div>
</main>
<footer>Results are ordered by (distance, id). <a href="docs">API documentation</a></footer>
<script>
(function () {
  "use strict";
  var state = { mode: "qadwh", query: null, seq: 0, info: null };
  var $ = function (id) { return document.getElementById(id); };
  // API paths relative to the page, so the app also works under a route prefix.
  var BASE = location.pathname.replace(/[^\/]*$/, "");

  function token() { try { return sessionStorage.getItem("qadwh-token") || ""; } catch (e) { return ""; } }
  function headers(extra) {
    var h = extra || {};
    var t = token();
    if (t) { h["Authorization"] = "Bearer " + t; }
    return h;
  }
  function setStatus(text, isError) {
    var s = $("status");
    s.textContent = text;
    s.className = isError ? "error" : "";
  }
  function api(path, opts) {
    opts = opts || {};
    opts.headers = headers(opts.headers);
    return fetch(path, opts).then(function (r) {
      if (r.status === 401) { $("tokenbox").style.display = "flex"; }
      var ct = r.headers.get("content-type") || "";
      if (ct.indexOf("application/json") >= 0) {
        return r.json().then(function (body) {
          if (!r.ok) { throw new Error((body && body.detail) || ("HTTP " + r.status)); }
          return body;
        });
      }
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r;
    });
  }
  function imageInto(img, id) {
    fetch(BASE + "v1/items/" + encodeURIComponent(id) + "/image", { headers: headers() })
      .then(function (r) { if (!r.ok) { throw new Error(); } return r.blob(); })
      .then(function (b) { img.src = URL.createObjectURL(b); })
      .catch(function () { img.alt = "no image"; });
  }
  function loadInfo() {
    return api(BASE + "v1/index").then(function (info) {
      state.info = info;
      $("version").textContent = info.version;
      $("items").textContent = info.items;
      $("bits").textContent = info.bits;
      $("shards").textContent = info.num_shards;
      var names = info.class_names || [];
      $("classes").textContent = names.length ? names.length : "?";
      $("classes").title = names.join(", ");
      $("k").max = info.max_k;
    }).catch(function (e) { setStatus("Index unavailable: " + e.message, true); });
  }
  function showQuery() {
    var q = $("query");
    while (q.firstChild) { q.removeChild(q.firstChild); }
    if (!state.query) { return; }
    var img = document.createElement("img");
    img.id = "query-image";
    img.alt = "query";
    var cap = document.createElement("span");
    if (state.query.kind === "image") {
      img.src = URL.createObjectURL(state.query.file);
      cap.textContent = "Query: uploaded " + state.query.file.name;
    } else {
      imageInto(img, state.query.id);
      cap.textContent = "Query: database item #" + state.query.id;
    }
    q.appendChild(img);
    q.appendChild(cap);
  }
  function render(res) {
    var box = $("results");
    while (box.firstChild) { box.removeChild(box.firstChild); }
    res.results.forEach(function (r, i) {
      var card = document.createElement("div");
      card.className = "result";
      card.setAttribute("data-id", String(r.id));
      card.setAttribute("data-distance", String(r.distance));
      card.title = "search with item " + r.id;
      var img = document.createElement("img");
      img.alt = "item " + r.id;
      imageInto(img, r.id);
      var l1 = document.createElement("div");
      var rank = document.createElement("span"); rank.className = "rank"; rank.textContent = "#" + (i + 1) + " ";
      var idt = document.createElement("span"); idt.textContent = "id " + r.id;
      l1.appendChild(rank); l1.appendChild(idt);
      var l2 = document.createElement("div"); l2.className = "dist";
      l2.textContent = "d = " + (Number.isInteger(r.distance) ? r.distance : r.distance.toFixed(4));
      var l3 = document.createElement("div"); l3.className = "label";
      l3.textContent = r.label_names ? r.label_names.join(", ") : (r.labels ? "class " + r.labels.join(", ") : "");
      card.appendChild(img); card.appendChild(l1); card.appendChild(l2); card.appendChild(l3);
      card.addEventListener("click", function () { state.query = { kind: "id", id: r.id }; showQuery(); search(); });
      box.appendChild(card);
    });
    var pred = res.query && res.query.predicted_label ? " · predicted: " + res.query.predicted_label : "";
    var ms = res.debug && res.debug.total_ms ? " in " + res.debug.total_ms.toFixed(1) + " ms" : "";
    box.setAttribute("data-mode", res.mode);
    box.setAttribute("data-version", res.version);
    setStatus(res.results.length + " results · mode " + res.mode + " · index " + res.version + ms + pred, false);
    $("version").textContent = res.version;
  }
  function search() {
    if (!state.query) { return; }
    var k = parseInt($("k").value, 10) || 12;
    var seq = ++state.seq;
    setStatus("Searching…", false);
    var req;
    if (state.query.kind === "image") {
      var fd = new FormData();
      fd.append("image", state.query.file, state.query.file.name);
      fd.append("k", String(k));
      fd.append("mode", state.mode);
      fd.append("debug", "true");
      req = api(BASE + "v1/search", { method: "POST", body: fd });
    } else {
      req = api(BASE + "v1/search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ id: state.query.id, k: k, mode: state.mode, debug: true })
      });
    }
    req.then(function (res) { if (seq === state.seq) { render(res); } })
       .catch(function (e) { if (seq === state.seq) { setStatus("Search failed: " + e.message, true); } });
  }
  $("file").addEventListener("change", function (ev) {
    var f = ev.target.files && ev.target.files[0];
    if (!f) { return; }
    state.query = { kind: "image", file: f };
    showQuery();
    search();
  });
  $("random").addEventListener("click", function () {
    api(BASE + "v1/random?n=1").then(function (r) {
      if (!r.ids.length) { setStatus("The index is empty.", true); return; }
      state.query = { kind: "id", id: r.ids[0] };
      showQuery();
      search();
    }).catch(function (e) { setStatus("Cannot pick an item: " + e.message, true); });
  });
  Array.prototype.forEach.call(document.querySelectorAll(".modes button"), function (b) {
    b.addEventListener("click", function () {
      state.mode = b.getAttribute("data-mode");
      Array.prototype.forEach.call(document.querySelectorAll(".modes button"), function (o) {
        o.classList.toggle("active", o === b);
      });
      search();
    });
  });
  $("k").addEventListener("change", search);
  $("token-save").addEventListener("click", function () {
    try { sessionStorage.setItem("qadwh-token", $("token").value.trim()); } catch (e) {}
    $("tokenbox").style.display = "none";
    loadInfo().then(search);
  });
  loadInfo();
})();
</script>
</body>
</html>
"""
