// linearlens explorer: plain JS over the JSON API (no build step, no external assets).
"use strict";
const $ = (id) => document.getElementById(id);
const state = { info: null, image: 0, summary: null, cls: null, pending: null, busy: false };
// What the page received and drew last: read by the end-to-end tests.
window.linearlens = { lastPixel: null, paints: 0, errors: [], latencies: [] };

function showError(message) {
  $("error").hidden = false;
  $("error").textContent = message;
  window.linearlens.errors.push(message);
}
function clearError() { $("error").hidden = true; $("error").textContent = ""; }
function status(text) { $("status").textContent = text; }

async function api(path, params = {}, options = {}) {
  const url = path + "?" + new URLSearchParams(params).toString();
  const response = await fetch(url, options);
  let data;
  try { data = await response.json(); } catch (e) { throw new Error(`${path}: HTTP ${response.status}`); }
  if (!response.ok) throw new Error(data.error || `${path}: HTTP ${response.status}`);
  return data;
}

function floats(a) {
  const bytes = Uint8Array.from(atob(a.data), (c) => c.charCodeAt(0));
  return { shape: a.shape, v: new Float32Array(bytes.buffer) };
}

// Rows/columns w.r.t. the encoded input [r, g, b, 1-r, 1-g, 1-b] act on the raw image as w[c] - w[c+3].
function rawChannels(t, encoded) {
  const [c, h, w] = t.shape, n = h * w;
  if (!encoded || c !== 6) return t;
  const v = new Float32Array(3 * n);
  for (let k = 0; k < 3; k++) for (let i = 0; i < n; i++) v[k * n + i] = t.v[k * n + i] - t.v[(k + 3) * n + i];
  return { shape: [3, h, w], v };
}

// Signed picture: 3 channels as RGB around grey, one channel red (+) / blue (-); symmetric scale.
function paintSigned(canvas, t) {
  const [c, h, w] = t.shape, n = h * w;
  let m = 0;
  for (const x of t.v) m = Math.max(m, Math.abs(x));
  m = m || 1;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < n; i++) {
    if (c === 3) {
      for (let k = 0; k < 3; k++) img.data[4 * i + k] = 127.5 + 127.5 * t.v[k * n + i] / m;
    } else {
      const s = t.v[i] / m;
      img.data[4 * i] = s > 0 ? 255 : 255 * (1 + s);
      img.data[4 * i + 1] = 255 * (1 - Math.abs(s));
      img.data[4 * i + 2] = s < 0 ? 255 : 255 * (1 - s);
    }
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function channelOf(t, k) {
  const [, h, w] = t.shape, n = h * w;
  return { shape: [1, h, w], v: t.v.slice(k * n, (k + 1) * n) };
}

function drawDataUri(canvas, uri) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => {
      canvas.width = img.width; canvas.height = img.height;
      canvas.getContext("2d").drawImage(img, 0, 0);
      resolve();
    };
    img.src = uri;
  });
}

async function loadInfo() {
  state.info = await api("/api/info");
  const sel = $("image-select");
  sel.innerHTML = "";
  for (const im of state.info.images) sel.add(new Option(`${im.id}: ${im.name} (${im.size[1]}x${im.size[0]})`, im.id));
  const classifier = state.info.kind === "classifier";
  for (const id of ["classes-card", "explanation-card", "delta-card"]) $(id).hidden = !classifier;
  $("output-card").hidden = classifier;
  if (classifier) {
    for (const id of ["class-select", "delta-a", "delta-b"]) {
      $(id).innerHTML = "";
      state.info.classes.forEach((name, k) => $(id).add(new Option(`${k}: ${name}`, k)));
    }
    $("score-kind").textContent = `(${state.info.scores} scores; hover layer ${state.info.layer})`;
  }
  $("tab-atlas").disabled = !state.info.atlas;
}

async function selectImage(index) {
  clearError();
  state.image = Number(index);
  $("image-select").value = String(index);
  const s = await api("/api/summary", { image: index });
  state.summary = s;
  $("image-name").textContent = `${s.name} (${s.size[1]}x${s.size[0]})`;
  await drawDataUri($("input"), s.image);
  if (state.info.kind === "classifier") {
    const top = $("top");
    top.innerHTML = "";
    for (const k of s.top) {
      const li = document.createElement("li");
      li.dataset.cls = k;
      li.innerHTML = `${state.info.classes[k]}: ${s.scores[k].toFixed(3)}<span class="bar" style="width:${Math.max(1, 80 * Math.min(1, Math.abs(s.scores[k])))}px"></span>`;
      li.onclick = () => selectClass(k).catch((e) => showError(e.message));
      top.appendChild(li);
    }
    $("delta-a").value = s.top[0];
    $("delta-b").value = s.top[1];
    await selectClass(s.top[0]);
    await loadDelta();
  } else if (s.output) {
    await drawDataUri($("output"), s.output);
  }
  status(`image ${index} ready`);
}

async function selectClass(k) {
  state.cls = Number(k);
  $("class-select").value = String(k);
  for (const li of $("top").children) li.classList.toggle("on", Number(li.dataset.cls) === state.cls);
  const e = await api("/api/explanation", { image: state.image, class: k });
  $("explanation-title").textContent = `${state.info.classes[k]}: y = ${e.output.toFixed(4)}, b = ${e.residual.toFixed(4)}`;
  if (e.colour) $("colour").src = e.colour;
  $("colour").hidden = !e.colour;
  $("contributions").src = e.contributions;
  window.linearlens.lastExplanation = { cls: state.cls, contributions: Array.from(floats(e.contribution_map).v) };
}

async function loadDelta() {
  const a = $("delta-a").value, b = $("delta-b").value;
  const d = await api("/api/delta", { image: state.image, a, b });
  if (d.colour) $("delta-colour").src = d.colour;
  $("delta-contributions").src = d.contributions;
  $("delta-caption").textContent = `contributions to y_a - y_b = ${d.output.toFixed(4)}`;
}

// Hover: one request in flight at a time; the newest position waits and replaces older ones.
function hover(position) {
  state.pending = position;
  if (!state.busy) nextPixel();
}

async function nextPixel() {
  if (!state.pending) return;
  const p = state.pending;
  state.pending = null;
  state.busy = true;
  const params = { image: state.image, y: p.y, x: p.x };
  if (p.oy !== undefined) { params.oy = p.oy; params.ox = p.ox; }
  if (state.cls !== null && state.info.kind === "classifier") params.class = state.cls;
  if ($("channel").value !== "") params.channel = $("channel").value;
  try {
    const r = await api("/api/pixel", params);
    paintPixel(r, p);
  } catch (e) {
    showError(e.message);
  } finally {
    state.busy = false;
    if (state.pending) nextPixel();
  }
}

function paintPixel(r, p) {
  const row = floats(r.row), column = floats(r.column);
  paintSigned($("row"), rawChannels(row, r.encoded));
  // Column per input channel (Cin, Cout, h, w): the response to a grey impulse is their (raw) sum.
  const [cin, cout, h, w] = column.shape, n = cout * h * w;
  const sum = new Float32Array(n);
  for (let c = 0; c < cin; c++) {
    const sign = r.encoded && c >= 3 ? -1 : 1;
    for (let i = 0; i < n; i++) sum[i] += sign * column.v[c * n + i];
  }
  const response = { shape: [cout, h, w], v: sum };
  paintSigned($("column"), cout === 3 ? response : channelOf(response, r.row_at[0]));
  const [ch, oy, ox] = r.row_at, [y, x] = r.column_at;
  $("pixel-title").textContent = `input (${y}, ${x}); unit (${ch}, ${oy}, ${ox})`;
  $("row-caption").textContent = `row: receptive filter of unit (${ch}, ${oy}, ${ox})`;
  $("column-caption").textContent = `column: projective filter of pixel (${y}, ${x})` + (cout === 3 ? "" : `, map ${ch}`);
  const ms = performance.now() - p.t;
  window.linearlens.latencies.push(ms);
  $("latency").textContent = `${ms.toFixed(0)} ms hover to paint`;
  window.linearlens.lastPixel = {
    image: state.image, row_at: r.row_at, column_at: r.column_at,
    row: Array.from(row.v), rowShape: row.shape, column: Array.from(column.v), columnShape: column.shape,
  };
  window.linearlens.paints += 1;
}

function pixelAt(canvas, event) {
  const rect = canvas.getBoundingClientRect();
  const x = Math.floor((event.clientX - rect.left) / rect.width * canvas.width);
  const y = Math.floor((event.clientY - rect.top) / rect.height * canvas.height);
  return { y: Math.min(Math.max(y, 0), canvas.height - 1), x: Math.min(Math.max(x, 0), canvas.width - 1) };
}

$("input").addEventListener("mousemove", (event) => {
  if (!state.summary) return;
  hover({ ...pixelAt($("input"), event), t: performance.now() });
});
$("output").addEventListener("mousemove", (event) => {
  if (!state.summary) return;
  const o = pixelAt($("output"), event), [, h, w] = state.summary.row_space, [, ho, wo] = state.summary.column_space;
  hover({ y: Math.floor(o.y * h / ho), x: Math.floor(o.x * w / wo), oy: o.y, ox: o.x, t: performance.now() });
});

async function upload(file) {
  clearError();
  status(`uploading ${file.name} ...`);
  const r = await api("/api/upload", { name: file.name }, { method: "POST", body: await file.arrayBuffer() });
  await loadInfo();
  await selectImage(r.id);
}

async function residual() {
  const r = await api("/api/residual", { image: state.image, class: state.cls ?? "" });
  const rows = r.parts.map((p) => `<tr><td>${p.name}</td><td>${p.value.toExponential(4)}</td></tr>`).join("");
  const head = r.norms ? "<tr><th>part</th><th>norm</th></tr>"
    : `<tr><th>${state.info.classes[r.class]}</th><th>y = ${r.output.toFixed(4)}, r = ${r.residual.toFixed(4)}</th></tr>`;
  $("residual").innerHTML = head + rows;
  if (r.norms) { $("residual-image").hidden = false; paintSigned($("residual-image"), floats(r.residual)); }
}

async function svd() {
  const r = await api("/api/svd", { image: state.image, k: $("svd-k").value });
  const box = $("svd");
  box.innerHTML = "";
  r.values.forEach((s, i) => {
    const fig = document.createElement("figure");
    const cin = document.createElement("canvas");
    cin.className = "pixelated";
    paintSigned(cin, rawChannels(floats(r.inputs[i]), state.summary.row_space[0] === 6));
    fig.appendChild(cin);
    const out = floats(r.outputs[i]);
    if (out.shape.length === 3) {
      const cout = document.createElement("canvas");
      cout.className = "pixelated";
      paintSigned(cout, out.shape[0] === 3 ? out : channelOf(out, 0));
      fig.appendChild(cout);
    }
    const cap = document.createElement("figcaption");
    cap.textContent = `σ${i + 1} = ${s.toExponential(3)}` + (out.shape.length === 1
      ? "; u: " + Array.from(out.v).map((u) => u.toFixed(2)).join(" ") : "");
    fig.appendChild(cap);
    box.appendChild(fig);
  });
}

async function showAtlas() {
  $("explore").hidden = true; $("atlas").hidden = false;
  $("tab-atlas").classList.add("on"); $("tab-explore").classList.remove("on");
  const a = await api("/api/atlas");
  $("atlas-title").textContent = `layer ${a.layer}, ${a.units.length} units over ${a.images} images`;
  const box = $("atlas-units");
  box.innerHTML = "";
  for (const u of a.units) {
    const fig = document.createElement("figure");
    fig.innerHTML = `<img class="pixelated" src="${u.thumb}" alt=""><figcaption>unit ${u.unit}: max ${u.max.toFixed(2)}</figcaption>`;
    fig.onclick = () => showUnit(u.unit).catch((e) => showError(e.message));
    box.appendChild(fig);
  }
  if (a.units.length) await showUnit(a.units[0].unit);
}

async function showUnit(unit) {
  const u = await api("/api/atlas", { unit });
  $("unit-title").textContent = `${unit}: top activations, cropped around each maximum, with W(x) of that unit`;
  const box = $("unit-crops");
  box.innerHTML = "";
  for (const c of u.crops) {
    const fig = document.createElement("figure");
    fig.innerHTML = `<img class="pixelated" src="${c.image}" alt=""><img class="pixelated" src="${c.explanation}" alt="">`
      + `<figcaption>${c.label}: ${c.value.toFixed(2)}</figcaption>`;
    box.appendChild(fig);
  }
  const cv = $("histogram"), ctx = cv.getContext("2d"), n = u.histogram.length, m = Math.max(...u.histogram, 1);
  ctx.clearRect(0, 0, cv.width, cv.height);
  ctx.font = "10px sans-serif";
  u.histogram.forEach((count, k) => {
    const bw = cv.width / n, bh = (cv.height - 30) * count / m;
    ctx.fillStyle = "#3b6fb6";
    ctx.fillRect(k * bw + 2, cv.height - 20 - bh, bw - 4, bh);
    ctx.fillStyle = "#222";
    ctx.fillText(u.classes[k].slice(0, 6), k * bw + 2, cv.height - 6);
  });
  ctx.fillText(`classes of the top ${u.histogram_top} activations`, 4, 10);
}

function showExplore() {
  $("explore").hidden = false; $("atlas").hidden = true;
  $("tab-explore").classList.add("on"); $("tab-atlas").classList.remove("on");
}

const guard = (fn) => (...args) => fn(...args).catch((e) => showError(e.message));
$("image-select").onchange = guard((e) => selectImage(e.target.value));
$("class-select").onchange = guard((e) => selectClass(e.target.value));
$("delta-a").onchange = guard(loadDelta);
$("delta-b").onchange = guard(loadDelta);
$("upload").onchange = guard(async (e) => { if (e.target.files.length) await upload(e.target.files[0]); });
$("residual-button").onclick = guard(residual);
$("svd-button").onclick = guard(svd);
$("tab-atlas").onclick = guard(showAtlas);
$("tab-explore").onclick = showExplore;

guard(async () => {
  try {
    await loadInfo();
    if (state.info.images.length) await selectImage(0);
    else status("no images yet: upload one");
  } finally {
    window.linearlens.ready = true;
  }
})();
