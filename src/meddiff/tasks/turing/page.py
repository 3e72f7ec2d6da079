"""The reading page: one self-contained HTML file (no external script, font or image), written into the study.

The page asks the server for the rater's order and past answers (``/api/state``), shows one image at a time and
posts each answer (``/api/answer``) before moving on; until the server confirms the answer is on disk the page
says so and retries. Keyboard: R real, S synthetic, 1-5 confidence, Enter save and next, Left/Backspace previous,
Right next answered, C comment (Esc leaves it); 3D: Up/Down or the mouse wheel scroll the stack, P switches
between the stack and the three planes.
"""

from __future__ import annotations


def page_html(title: str = "Visual Turing test") -> str:
    return _PAGE.replace("__TITLE__", title)


_PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:sans-serif;background:#111;color:#eee;margin:0;display:flex;flex-direction:column;align-items:center}
header{width:100%;padding:8px 16px;background:#222;display:flex;justify-content:space-between;box-sizing:border-box}
#viewer{margin:12px;display:flex;flex-direction:column;align-items:center}
#img{image-rendering:pixelated;width:min(70vh,90vw);height:auto;background:#000}
.choices button{font-size:18px;margin:4px;padding:6px 14px;background:#333;color:#eee;border:1px solid #666}
.choices button.on{background:#2a6;border-color:#4c8}
#status{min-height:1.4em;color:#fc6}
kbd{background:#333;border:1px solid #666;padding:0 4px;border-radius:3px}
textarea{width:min(70vh,90vw);height:3em;background:#222;color:#eee}
.hidden{display:none !important}
</style></head><body>
<header><span>__TITLE__</span><span id="progress"></span></header>
<section id="start">
  <h2>__TITLE__</h2>
  <p>Each image is either a real scan or a synthetic one; half are of each kind. Say which, and how sure you are.</p>
  <p><label>Your name: <input id="rater" maxlength="64" autocomplete="off"></label> <button id="go">Start</button></p>
  <p>Keys: <kbd>R</kbd> real, <kbd>S</kbd> synthetic, <kbd>1</kbd>-<kbd>5</kbd> confidence (5 = certain),
     <kbd>Enter</kbd> save and next, <kbd>&larr;</kbd> previous, <kbd>C</kbd> comment (<kbd>Esc</kbd> leaves it).
     3D: <kbd>&uarr;</kbd>/<kbd>&darr;</kbd> or the wheel scroll the slices, <kbd>P</kbd> three planes.</p>
</section>
<section id="viewer" class="hidden">
  <img id="img" alt="image to rate">
  <div id="stack" class="hidden"><input id="slider" type="range" min="0" max="0" value="0"> <span id="slicenum"></span></div>
  <div class="choices">
    <button id="b-real" data-label="real">R: real</button><button id="b-synthetic" data-label="synthetic">S: synthetic</button>
  </div>
  <div class="choices" id="confidence"></div>
  <textarea id="comment" placeholder="optional comment (C)"></textarea>
  <div><button id="save">Save and next (Enter)</button></div>
  <div id="status"></div>
</section>
<section id="done" class="hidden"><h2>Thank you: every image is rated.</h2>
  <p>You may close this tab. <kbd>&larr;</kbd> goes back to change an answer.</p></section>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let S = null, pos = 0, label = null, conf = null, shown = 0, slice = 0, planes = false, busy = false;
for (let c = 1; c <= 5; c++) {
  const b = document.createElement("button"); b.textContent = c; b.dataset.conf = c; b.id = "c" + c;
  b.onclick = () => { conf = c; paint(); }; $("confidence").appendChild(b);
}
$("b-real").onclick = () => { label = "real"; paint(); };
$("b-synthetic").onclick = () => { label = "synthetic"; paint(); };
$("save").onclick = () => save();
$("go").onclick = () => start();
$("rater").value = localStorage.getItem("meddiff-rater") || "";
$("rater").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); start(); } });
function status(t) { $("status").textContent = t; }
function answeredCount() { return Object.keys(S.answers).length; }
async function start() {
  const name = $("rater").value.trim();
  if (!name) { $("rater").focus(); return; }
  localStorage.setItem("meddiff-rater", name); $("rater").blur();
  let r;
  try { r = await fetch("/api/state?rater=" + encodeURIComponent(name), {cache: "no-store"}); }
  catch (e) { alert("The study server is not reachable; ask the organiser."); return; }
  const j = await r.json();
  if (!r.ok) { alert(j.error); return; }
  S = j; S.rater = name;
  $("start").classList.add("hidden");
  go(S.position);
}
function go(p) {
  pos = Math.max(0, Math.min(p, S.order.length));
  if (pos >= S.order.length) {
    $("viewer").classList.add("hidden"); $("done").classList.remove("hidden"); progress(); return;
  }
  $("done").classList.add("hidden"); $("viewer").classList.remove("hidden");
  const item = S.order[pos], a = S.answers[item.id];
  label = a ? a.label : null; conf = a ? a.confidence : null; $("comment").value = a ? (a.comment || "") : "";
  planes = false; slice = item.slices ? Math.floor(item.slices / 2) : 0; shown = performance.now();
  $("slider").max = item.slices ? item.slices - 1 : 0;
  draw(); paint(); progress(); status("");
}
function draw() {
  const item = S.order[pos];
  $("stack").classList.toggle("hidden", !item.slices || planes);
  if (item.slices && !planes) {
    $("img").src = "/image/" + item.id + "/" + slice; $("slider").value = slice;
    $("slicenum").textContent = "slice " + (slice + 1) + " / " + item.slices;
  } else { $("img").src = "/image/" + item.id; }
}
function paint() {
  $("b-real").classList.toggle("on", label === "real");
  $("b-synthetic").classList.toggle("on", label === "synthetic");
  for (let c = 1; c <= 5; c++) $("c" + c).classList.toggle("on", conf === c);
}
function progress() {
  $("progress").textContent = S.rater + " \u00b7 answered " + answeredCount() + " of " + S.order.length +
    (pos < S.order.length ? " \u00b7 image " + (pos + 1) + " of " + S.order.length : "");
  $("progress").dataset.answered = answeredCount(); $("progress").dataset.position = pos;
}
function nextUnanswered(from) {
  for (let i = from; i < S.order.length; i++) if (!S.answers[S.order[i].id]) return i;
  for (let i = 0; i < from; i++) if (!S.answers[S.order[i].id]) return i;
  return S.order.length;
}
async function save() {
  if (busy) return;
  if (!label || !conf) { status("Choose real or synthetic (R/S) and a confidence (1-5) first."); return; }
  const item = S.order[pos];
  const body = {rater: S.rater, id: item.id, label: label, confidence: conf, comment: $("comment").value,
                seconds: (performance.now() - shown) / 1000};
  busy = true;
  for (;;) {
    try {
      const r = await fetch("/api/answer", {method: "POST", headers: {"Content-Type": "application/json"},
                                            body: JSON.stringify(body)});
      const j = await r.json();
      if (!r.ok) { status("Not saved: " + j.error); busy = false; return; }
      break;
    } catch (e) {
      status("Not saved yet: the server is not reachable. Retrying; keep this tab open.");
      await new Promise((res) => setTimeout(res, 1500));
    }
  }
  busy = false;
  S.answers[item.id] = {label: label, confidence: conf, comment: body.comment};
  go(nextUnanswered(pos + 1));
}
function scroll(d) {
  const item = S.order[pos];
  if (!item || !item.slices || planes) return;
  slice = Math.max(0, Math.min(item.slices - 1, slice + d)); draw();
}
$("slider").oninput = () => { slice = parseInt($("slider").value, 10); draw(); };
$("img").addEventListener("wheel", (e) => { e.preventDefault(); scroll(e.deltaY > 0 ? 1 : -1); }, {passive: false});
document.addEventListener("keydown", (e) => {
  if (!S || busy) return;
  const t = e.target;
  if (t === $("comment")) { if (e.key === "Escape") t.blur(); return; }
  if (t.tagName === "INPUT" && t.type !== "range") return;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key.toLowerCase();
  if (pos >= S.order.length) { if (k === "arrowleft" || k === "backspace") { e.preventDefault(); go(pos - 1); } return; }
  if (k === "r") label = "real";
  else if (k === "s") label = "synthetic";
  else if (k >= "1" && k <= "5" && k.length === 1) conf = parseInt(k, 10);
  else if (k === "enter") { e.preventDefault(); save(); return; }
  else if (k === "arrowleft" || k === "backspace") { e.preventDefault(); go(pos - 1); return; }
  else if (k === "arrowright") { if (S.answers[S.order[pos].id]) go(pos + 1); return; }
  else if (k === "c") { e.preventDefault(); $("comment").focus(); return; }
  else if (k === "arrowup") { e.preventDefault(); scroll(-1); return; }
  else if (k === "arrowdown") { e.preventDefault(); scroll(1); return; }
  else if (k === "p") { planes = !planes; draw(); return; }
  else return;
  paint();
});
</script></body></html>
"""
