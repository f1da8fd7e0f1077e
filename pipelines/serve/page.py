"""The search page served at GET /: plain HTML and JavaScript, no build step, no outside assets.

Results are put in with textContent (never innerHTML), so stored texts cannot inject markup.
When the service wants an API key, the page asks for it once and keeps it in sessionStorage.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>l2v search</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  form { display: flex; gap: .5rem; flex-wrap: wrap; }
  #query { flex: 1 1 20rem; font-size: 1.1rem; padding: .4rem; }
  #k { width: 4rem; }
  #status { color: #666; margin: .8rem 0; min-height: 1.2rem; }
  #status.error { color: #b00020; }
  ol { padding-left: 0; list-style: none; }
  li.hit { border-bottom: 1px solid #ddd; padding: .6rem 0; }
  .meta { font-family: monospace; color: #555; }
  .text { margin-top: .3rem; white-space: pre-wrap; }
  #keybox { display: none; margin-top: .5rem; }
  footer { color: #888; font-size: .85rem; margin-top: 2rem; }
</style>
</head>
<body>
<h1>Search</h1>
<form id="form">
  <input id="query" name="query" type="search" placeholder="type a query" autofocus required>
  <label>k <input id="k" name="k" type="number" min="1" value="10"></label>
  <button id="go" type="submit">Search</button>
</form>
<div id="keybox"><label>API key <input id="key" type="password" autocomplete="off"></label></div>
<div id="status"></div>
<ol id="results"></ol>
<footer>version <span id="version">?</span> &middot; <span id="vectors">?</span> vectors &middot;
  <a href="/health">health</a></footer>
<script>
"use strict";
const $ = (id) => document.getElementById(id);

function headers() {
  const h = {"Content-Type": "application/json"};
  const key = sessionStorage.getItem("l2v-key");
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function call(method, path, body) {
  const response = await fetch(path, {method, headers: headers(), body: body && JSON.stringify(body)});
  let data = null;
  try { data = await response.json(); } catch (e) { /* not JSON: reported below */ }
  if (response.status === 401) $("keybox").style.display = "block";
  if (!response.ok) {
    const message = data && data.error ? data.error.message : response.status + " " + response.statusText;
    throw new Error(message);
  }
  return data;
}

async function loadHealth() {
  try {
    const health = await call("GET", "/health");
    $("version").textContent = health.version || "none";
    $("vectors").textContent = health.vectors ?? "?";
  } catch (e) { status(e.message, true); }
}

function show(data) {
  const list = $("results");
  list.replaceChildren();
  const hits = data.results[0].hits;
  for (const hit of hits) {
    const item = document.createElement("li");
    item.className = "hit";
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = hit.rank + ". " + hit.id + "  score " + hit.score.toFixed(4);
    if (hit.chunk !== null && hit.chunk !== undefined) {  // a chunked index: the document's best passage
      meta.textContent += "  passage " + hit.chunk + ", chars " + hit.char_start + "-" + hit.char_end;
    }
    item.appendChild(meta);
    if (hit.text !== null && hit.text !== undefined) {
      const text = document.createElement("div");
      text.className = "text";
      text.textContent = hit.text;
      item.appendChild(text);
    }
    list.appendChild(item);
  }
  $("version").textContent = data.version;
  status(hits.length + " results from version " + data.version, false);
}

$("key").addEventListener("change", () => { sessionStorage.setItem("l2v-key", $("key").value); loadHealth(); });

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const query = $("query").value;
  if (!query.trim()) { status("type a query first", true); return; }
  status("searching...", false);
  try {
    show(await call("POST", "/search", {query: query, k: parseInt($("k").value, 10) || 10}));
  } catch (e) {
    $("results").replaceChildren();
    status(e.message, true);
  }
});

loadHealth();
</script>
</body>
</html>
"""
