"""The page at `/`: a search box, the mode, k, and the results (title, doc id, score, chunk offsets) with the
version that answered. No external assets (the service may run where nothing else can be reached); the script
builds results with textContent only, so a title can never inject markup."""

from __future__ import annotations

import html
from string import Template

from pipeline.serving.query import Limits

_PAGE = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$index · embedpipe</title>
<style>
  body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2330;
         background: #f6f7f9; }
  header { background: #1d2330; color: #fff; padding: 12px 24px; display: flex; gap: 16px; align-items: baseline; }
  header h1 { font-size: 18px; margin: 0; }
  header .serving { margin-left: auto; font-size: 13px; color: #c8d0e0; }
  header code { color: #fff; }
  main { max-width: 980px; margin: 0 auto; padding: 20px 24px; }
  form { display: flex; gap: 8px; flex-wrap: wrap; }
  input, select, button { font: inherit; padding: 7px 10px; border: 1px solid #b8c0cc; border-radius: 6px; }
  #q { flex: 1 1 420px; }
  #k { width: 70px; }
  button { background: #2f6fdf; color: #fff; border-color: #2f6fdf; cursor: pointer; }
  #status { color: #4a5466; font-size: 14px; min-height: 1.4em; }
  #status.error { color: #b3261e; }
  ol { padding-left: 28px; }
  li { background: #fff; border: 1px solid #e1e5eb; border-radius: 8px; padding: 10px 14px; margin-bottom: 10px; }
  li .title { font-weight: 600; }
  li .meta { font-size: 13px; color: #4a5466; display: flex; gap: 18px; flex-wrap: wrap; margin-top: 3px; }
  li .meta code { color: #1d2330; }
</style>
</head>
<body data-state="idle">
<header>
  <h1>embedpipe</h1><span>$index / $alias</span>
  <span class="serving">serving version <code id="version">$version</code></span>
</header>
<main>
  <form id="search">
    <input id="q" type="search" placeholder="Search $index" maxlength="$max_chars" autofocus>
    <select id="mode" title="search mode">$options</select>
    <input id="k" type="number" min="1" max="$max_k" value="$default_k" title="results">
    $token_input
    <button type="submit">Search</button>
  </form>
  <p id="status"></p>
  <ol id="results"></ol>
</main>
<script nonce="$nonce">
const $$ = (id) => document.getElementById(id);
function cell(label, value) {
  const span = document.createElement("span");
  span.append(label + " ");
  const code = document.createElement("code");
  code.textContent = value;
  span.append(code);
  return span;
}
$$("search").addEventListener("submit", async (event) => {
  event.preventDefault();
  document.body.dataset.state = "searching";
  const status = $$("status"), results = $$("results");
  status.className = ""; status.textContent = "Searching...";
  const headers = {"Content-Type": "application/json"};
  const token = $$("token");
  if (token && token.value) headers["Authorization"] = "Bearer " + token.value;
  let response, body;
  try {
    response = await fetch("search", {method: "POST", headers,
      body: JSON.stringify({query: $$("q").value, k: Number($$("k").value), mode: $$("mode").value || undefined})});
    body = await response.json();
  } catch (err) {
    body = {error: {message: "no answer from the service (" + err + ")"}};
    response = {ok: false};
  }
  results.replaceChildren();
  if (!response.ok) {
    status.className = "error";
    status.textContent = (body.error && body.error.message) || ("HTTP " + response.status);
    document.body.dataset.state = "error";
    return;
  }
  $$("version").textContent = body.version;
  status.textContent = body.hits.length + " results in " + body.took_ms.toFixed(1) + " ms, mode " + body.mode +
    ", answered by version " + body.version + (body.note ? " (" + body.note + ")" : "");
  for (const hit of body.hits) {
    const li = document.createElement("li");
    li.className = "hit";
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = hit.title || "(untitled)";
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.append(cell("doc", hit.doc_id), cell("score", hit.score.toFixed(4)),
                cell("chunk", hit.chunk_id), cell("chars", hit.start + "-" + hit.end));
    li.append(title, meta);
    results.append(li);
  }
  document.body.dataset.state = "done";
});
</script>
</body>
</html>
""")


def render_page(index: str, alias: str, version: str | None, modes: list[str], default_mode: str | None,
                limits: Limits, token_required: bool, nonce: str) -> str:
    e = html.escape
    options = "".join(f'<option value="{e(m)}"{" selected" if m == default_mode else ""}>{e(m)}</option>'
                      for m in modes)
    token_input = ('<input id="token" type="password" placeholder="bearer token" autocomplete="off">'
                   if token_required else "")
    return _PAGE.substitute(index=e(index), alias=e(alias), version=e(version or "none yet"), options=options,
                            max_k=limits.max_k, default_k=limits.default_k, max_chars=limits.max_query_chars,
                            token_input=token_input, nonce=e(nonce))
