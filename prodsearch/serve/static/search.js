// prodsearch search page: send 1-8 photos to POST /v1/search and show the matching products.
// Uses the shared helpers of common.js ($, el, fetchJSON, ...), loaded before this script.
"use strict";

const MAX_PHOTOS = 8;

/** Milliseconds as shown in the timings line: "12.3 ms", "250 ms". */
const fmtMs = (ms) => (ms >= 100 ? Math.round(ms) : Number(ms).toFixed(1)) + " ms";

// ---- state ----
let lastFiles = [];        // the photos of the last search, re-sent when a filter changes
let previewUrls = [];
let controller = null;     // aborts a search still in flight when a new one starts
let indexGeneration = null;

function setLoading(loading, count) {
  $("loading").hidden = !loading;
  if (loading) $("results-placeholder").hidden = true;
  $("loading-text").textContent = `Searching with ${count} ${plural(count, "photo")}…`;
  $("results-region").setAttribute("aria-busy", String(loading));
  $("results").classList.toggle("stale", loading);
}

function showPreview(files) {
  for (const url of previewUrls) URL.revokeObjectURL(url);
  previewUrls = files.map((f) => URL.createObjectURL(f));
  const list = $("preview");
  list.replaceChildren(...previewUrls.map((url, i) => {
    const label = `Photo ${i + 1}: ${files[i].name || "pasted image"}`;
    // A file the browser cannot show (not a photo, a format it lacks): its name, not a broken image.
    const img = el("img", {src: url, alt: label});
    img.addEventListener("error", () => img.replaceWith(el("span", {className: "preview-name", textContent: label})));
    return el("li", {}, img);
  }));
  list.hidden = files.length === 0;
  $("dropzone").classList.toggle("has-photos", files.length > 0);
}

/** Back to the page as it was before any photo was chosen. */
function forgetPhotos() {
  lastFiles = [];
  showPreview([]);
  $("search-button").disabled = true;
  $("search-button").textContent = "Search";
  $("clear-button").disabled = true;
}

function clearResults(placeholder) {
  $("results-placeholder").hidden = !placeholder;
  $("results").replaceChildren();
  $("results-heading").hidden = true;
  $("not-found").hidden = true;
  $("timings").hidden = true;
}

function renderResult(item, index, isBest) {
  const score = Number(item.score);
  const width = Math.max(0, Math.min(1, score)) * 100;
  const thumb = thumbnail(item.image_url, {width: 80, height: 80, alt: `Catalog photo of ${item.name || item.sku}`});
  const title = el("p", {className: "result-title"},
    el("span", {className: "rank", textContent: `${index + 1}.`}), " ",
    el("span", {className: "sku", textContent: item.sku}),
    isBest ? el("span", {className: "badge", textContent: "Match"}) : null);
  const name = productName(item) ? el("p", {className: "name", textContent: productName(item)}) : null;
  const category = el("p", {className: "category", textContent: categoryLabel(item.category)});
  const bar = el("span", {className: "score-bar"}, el("span", {className: "score-fill"}));
  bar.firstChild.style.width = `${width.toFixed(1)}%`;
  bar.setAttribute("aria-hidden", "true");
  const scoreRow = el("p", {className: "score"},
    el("span", {className: "visually-hidden", textContent: "Similarity score "}),
    el("span", {className: "score-value", textContent: Number.isFinite(score) ? score.toFixed(3) : "–"}), bar);
  const li = el("li", {className: isBest ? "result best" : "result"}, thumb,
    el("div", {className: "result-body"}, title, name, category, scoreRow));
  li.dataset.sku = item.sku;
  return li;
}

const notFoundText = $("not-found-detail").textContent;  // the page's own words, for answers without a rule

function renderResults(data) {
  const matches = Array.isArray(data.matches) ? data.matches : [];
  const bestSku = data.match;
  $("not-found").hidden = bestSku !== null && bestSku !== undefined;
  const d = data.decision;
  $("not-found-detail").textContent = d && !d.accepted && matches.length
    ? `The closest product, ${matches[0].name || matches[0].sku}, scores ${d.rule} ${d.value.toFixed(3)}, ` +
      `below this shop's threshold of ${d.threshold.toFixed(3)}. The closest products are listed below.`
    : notFoundText;
  const heading = $("results-heading");
  heading.hidden = false;
  if (matches.length === 0) heading.textContent = "No products found";
  else heading.textContent = bestSku ? "Results" : "Closest products";
  $("results").replaceChildren(...matches.map((m, i) => renderResult(m, i, i === 0 && !!bestSku && m.sku === bestSku)));
  const t = data.timings_ms || {};
  const parts = ["decode", "embed", "search"].filter((k) => typeof t[k] === "number").map((k) => `${k} ${fmtMs(t[k])}`);
  const timings = $("timings");
  const photos = data.photos || lastFiles.length;
  timings.textContent = `${typeof t.total === "number" ? fmtMs(t.total) : "?"}` +
    (parts.length ? ` (${parts.join(" · ")})` : "") +
    ` · ${photos} ${plural(photos, "photo")}` +
    ` · generation ${data.generation}`;
  timings.hidden = false;
  // The index was rebuilt since the page was loaded: refresh the summary in the header.
  if (indexGeneration !== null && data.generation !== indexGeneration) {
    indexGeneration = data.generation;
    loadIndexSummary();
  }
}

async function search(files) {
  if (!files.length) return;
  if (controller) controller.abort();
  controller = new AbortController();
  const mine = controller;
  const form = new FormData();
  for (const file of files) form.append("image", file, file.name || "photo.jpg");
  form.append("top_k", $("top_k").value);
  if ($("category").value) form.append("category", $("category").value);
  showError("");
  setLoading(true, files.length);
  try {
    const data = await fetchJSON("/v1/search", {method: "POST", body: form, signal: mine.signal});
    renderResults(data);
    $("search-button").textContent = "Search again";
    // On a phone the results sit below the photo: bring them into view.
    const heading = $("results-heading");
    if (heading.getBoundingClientRect().top > window.innerHeight * 0.75) heading.scrollIntoView({behavior: "smooth"});
  } catch (err) {
    if (err.name === "AbortError") return;
    clearResults(false);
    // Refused (a file that is not a photo, too large): those photos are gone, not kept as a broken
    // preview to search again. A server that could not be reached keeps them for another try.
    if (err.status >= 400 && err.status < 500) forgetPhotos();
    showError(err.message);
  } finally {
    if (controller === mine) {
      setLoading(false, files.length);
      controller = null;
    }
  }
}

function usePhotos(fileList) {
  const files = Array.from(fileList || []);
  if (!files.length) return;
  if (files.length > MAX_PHOTOS) {
    showError(`Choose at most ${MAX_PHOTOS} photos at a time (you chose ${files.length}).`);
    return;
  }
  lastFiles = files;
  showPreview(files);
  $("search-button").disabled = false;
  $("clear-button").disabled = false;
  search(files);
}

function setup() {
  const input = $("photo");
  const zone = $("dropzone");
  input.addEventListener("change", () => {
    usePhotos(input.files);
    input.value = "";  // choosing the same photo again still fires "change"
  });
  zone.addEventListener("click", (event) => {
    if (event.target.closest("label")) return;  // the label opens the picker by itself
    input.click();
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      zone.classList.add("dragging");
    });
  }
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    usePhotos(event.dataTransfer.files);
  });
  // A photo dropped next to the zone must not replace the page.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
  document.addEventListener("paste", (event) => {
    const pasted = event.clipboardData ? Array.from(event.clipboardData.files) : [];
    const files = pasted.filter((f) => f.type.startsWith("image/"));
    if (files.length) usePhotos(files);
  });
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    search(lastFiles);
  });
  $("category").addEventListener("change", () => search(lastFiles));
  $("top_k").addEventListener("change", () => search(lastFiles));
  $("clear-button").addEventListener("click", () => {
    if (controller) controller.abort();
    forgetPhotos();
    clearResults(true);
    showError("");
    zone.focus();
  });

  loadIndexSummary().then((info) => { if (info) indexGeneration = info.generation; });
  loadCategories($("category")).catch((err) => showError(`Could not load the categories: ${err.message}`));
}

setup();
