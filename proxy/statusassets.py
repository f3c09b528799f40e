"""The status page's stylesheet and refresh script, served from memory at their own paths."""

from __future__ import annotations

CSS = b"""\
:root{--bg:#fff;--fg:#1b1f24;--muted:#5b636e;--line:#d5d9de;--code:#f2f4f7;--ok:#1a7f37;\
--bad:#c9251d;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--bg:#0f1115;--fg:#e6e8eb;--muted:#9aa3ad;\
--line:#2c313a;--code:#1a1e25;--ok:#3fb950;--bad:#f85149}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);\
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:52rem;margin:0 auto;padding:1rem}
h1{font-size:1.4rem;margin:.2rem 0 .8rem}
h1 small,.muted,dt{color:var(--muted);font-weight:normal}
h2{font-size:1.05rem;margin:1.3rem 0 .4rem;border-bottom:1px solid var(--line);padding-bottom:.2rem}
h3{font-size:.85rem;margin:.5rem 0 0;color:var(--muted)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:0}
dd{margin:0;overflow-wrap:anywhere}
code,pre{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;\
background:var(--code);border-radius:4px}
code{padding:.05rem .3rem;overflow-wrap:anywhere}
pre{padding:.5rem .6rem;overflow-x:auto;margin:.2rem 0 .6rem}
.url{user-select:all}
.ok{color:var(--ok)}.bad{color:var(--bad)}
meter,progress{width:100%;height:.9rem}
table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:.2rem .4rem;border-bottom:1px solid var(--line);vertical-align:top}
td{overflow-wrap:anywhere}
details{border:1px solid var(--line);border-radius:6px;padding:.3rem .6rem;margin:.4rem 0}
summary{cursor:pointer}
@media (max-width:32rem){dl{grid-template-columns:1fr}dd{margin-bottom:.35rem}main{padding:.6rem}}
"""

JS = b"""\
"use strict";
// Refreshes the [data-live] sections every few seconds from the same page (no inline
// script, no other origin); the page works without it.
(function () {
  function refresh() {
    if (document.hidden || String(window.getSelection()).length) return;
    fetch(location.href, {headers: {Accept: "text/html"}, cache: "no-store"})
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (old) {
          var now = fresh.getElementById(old.id);
          if (now) old.replaceWith(document.importNode(now, true));
        });
      })
      .catch(function () {});
  }
  setInterval(refresh, 3000);
})();
"""
