// The page of tips-serve: plain JS, no build step, no CDN. It calls the same endpoints as any client.
"use strict";

const $ = (id) => document.getElementById(id);
let health = null;

async function post(path, body) {
  const response = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                      body: JSON.stringify(body)});
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function note(id, text, error) {
  $(id).textContent = text;
  $(id).className = error ? "note error" : "note";
}

// a (h, w) grid of cosines → a canvas coloured from transparent blue (low) to opaque red (high)
function heatCanvas(heat) {
  const [h, w] = heat.shape;
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h; canvas.className = "heat";
  const lo = Math.min(...heat.data), hi = Math.max(...heat.data);
  const pixels = canvas.getContext("2d").createImageData(w, h);
  heat.data.forEach((v, i) => {
    const t = hi > lo ? (v - lo) / (hi - lo) : 0;
    pixels.data.set([Math.round(255 * t), 40, Math.round(255 * (1 - t)), Math.round(200 * t)], 4 * i);
  });
  canvas.getContext("2d").putImageData(pixels, 0, 0);
  return canvas;
}

async function search(event) {
  event.preventDefault();
  const text = $("search-text").value.trim();
  if (!text) return;
  note("search-note", "searching…");
  $("search-results").replaceChildren();
  try {
    const result = await (await post("/v1/search", {text: text, k: 8, heatmaps: true})).json();
    for (const hit of result.hits) {
      const figure = document.createElement("figure");
      figure.className = "hit";
      const stack = document.createElement("div");
      stack.className = "stack";
      const img = document.createElement("img");
      img.src = "/v1/images/" + hit.row;
      img.alt = hit.id;
      stack.append(img);
      if (hit.heatmap) stack.append(heatCanvas(hit.heatmap));
      const caption = document.createElement("figcaption");
      caption.textContent = hit.score.toFixed(3) + "  " + hit.id + (hit.cell !== undefined ? "  cell " + hit.cell : "");
      figure.append(stack, caption);
      $("search-results").append(figure);
    }
    note("search-note", result.hits.length + " hits (" + result.kind + " index); red = where the text is");
  } catch (e) {
    note("search-note", e.message, true);
  }
}

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function legendList(rows) {
  // every colour the class picture uses, largest share first (the server sends them with the PNG)
  const list = document.createElement("ul");
  list.className = "legend";
  for (const row of rows) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = row.colour;
    const share = row.share < 0.001 ? "< 0.1" : (100 * row.share).toFixed(1);
    item.append(swatch, document.createTextNode(row.name + " " + share + " %"));
    list.append(item);
  }
  return list;
}

async function showImage(file) {
  const image = await readDataUrl(file);
  $("dense-results").replaceChildren();
  const tasks = (health ? health.heads : []).map((t) => [t, "/v1/" + t, {image: image, format: "png"}]);
  tasks.push(["open-vocab", "/v1/open-vocab", {image: image, format: "png", classes: $("classes").value}]);
  note("image-note", "predicting " + tasks.map((t) => t[0]).join(", ") + "…");
  const input = document.createElement("figure");
  input.innerHTML = "<img class='result' data-task='input'><figcaption>input</figcaption>";
  input.querySelector("img").src = image;
  $("dense-results").append(input);
  const failures = [];
  await Promise.all(tasks.map(async ([task, path, body]) => {
    try {
      const response = await post(path, body);
      const blob = await response.blob();
      const figure = document.createElement("figure");
      figure.className = "dense";
      figure.innerHTML = "<img class='result'><figcaption></figcaption>";
      figure.querySelector("img").dataset.task = task;
      figure.querySelector("img").src = URL.createObjectURL(blob);
      figure.querySelector("figcaption").textContent = task;
      const legend = response.headers.get("X-Tips-Legend");
      if (legend) figure.append(legendList(JSON.parse(legend)));
      $("dense-results").append(figure);
    } catch (e) {
      failures.push(task + ": " + e.message);
    }
  }));
  note("image-note", failures.length ? failures.join("; ") : "done: " + tasks.map((t) => t[0]).join(", "),
       failures.length > 0);
}

async function start() {
  try {
    health = await (await fetch("/health")).json();
    $("status").textContent = health.model + (health.random_weights ? " (random weights)" : "") +
      " · heads: " + (health.heads.join(", ") || "none") +
      " · index: " + (health.index ? health.index.count + " " + health.index.kind + " vectors" : "none") +
      " · " + health.precision;
    if (!health.index) {
      $("search-button").disabled = true;
      note("search-note", "no index loaded: start tips-serve with --index DIR");
    }
  } catch (e) {
    $("status").textContent = "the server does not answer /health";
  }
  $("search-form").addEventListener("submit", search);
  $("image-file").addEventListener("change", () => { if ($("image-file").files[0]) showImage($("image-file").files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) showImage(e.dataTransfer.files[0]);
  });
}

start();
