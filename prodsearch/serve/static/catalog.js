// prodsearch catalog page: browse GET /v1/products 24 at a time; the filters live in the URL.
// Uses the shared helpers of common.js ($, el, fetchJSON, ...), loaded before this script.
"use strict";

const PAGE_SIZE = 24;

// ---- state, mirrored in the URL: ?q=&category=&page=&sku= ----
function readState() {
  const params = new URLSearchParams(location.search);
  const page = parseInt(params.get("page") || "1", 10);
  return {
    q: params.get("q") || "",
    category: params.get("category") || "",
    page: Number.isFinite(page) && page > 0 ? page : 1,
    sku: params.get("sku") || "",
  };
}

let state = readState();

function writeState(push) {
  const params = new URLSearchParams();
  if (state.q) params.set("q", state.q);
  if (state.category) params.set("category", state.category);
  if (state.page > 1) params.set("page", String(state.page));
  if (state.sku) params.set("sku", state.sku);
  const query = params.toString();
  const url = location.pathname + (query ? `?${query}` : "");
  if (url !== location.pathname + location.search) history[push ? "pushState" : "replaceState"](null, "", url);
}

// ---- the grid ----
let requestSeq = 0;

function productCard(product) {
  const thumb = thumbnail(product.image_url, {loading: "lazy", width: 160, height: 160, alt: ""});
  const images = Number(product.images);
  const button = el("button", {type: "button", className: "product-card"}, thumb,
    el("span", {className: "sku", textContent: product.sku}),
    productName(product) ? el("span", {className: "name", textContent: productName(product)}) : null,
    el("span", {className: "category", textContent: categoryLabel(product.category)}),
    el("span", {className: "images", textContent: `${fmtInt(images)} ${plural(images, "image")}`}));
  button.dataset.sku = product.sku;
  button.addEventListener("click", () => openDetails(product.sku, true));
  return el("li", {}, button);
}

async function loadPage() {
  const seq = ++requestSeq;
  const params = new URLSearchParams({limit: String(PAGE_SIZE), offset: String((state.page - 1) * PAGE_SIZE)});
  if (state.category) params.set("category", state.category);
  if (state.q) params.set("q", state.q);
  $("grid").setAttribute("aria-busy", "true");
  $("grid").classList.add("stale");
  try {
    const data = await fetchJSON(`/v1/products?${params}`);
    if (seq !== requestSeq) return;  // a newer request is on its way
    const total = Number(data.total) || 0;
    const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
    if (state.page > pages) {  // the catalog shrank, or a stale link: go to the last page
      state.page = pages;
      writeState(false);
      loadPage();
      return;
    }
    showError("");
    const products = data.products || [];
    $("grid").replaceChildren(...products.map(productCard));
    $("empty").hidden = products.length > 0;
    const first = total ? data.offset + 1 : 0;
    const last = data.offset + products.length;
    $("range").textContent = total ? `items ${fmtInt(first)}–${fmtInt(last)} of ${fmtInt(total)}` : "items 0 of 0";
    $("page-info").textContent = `Page ${state.page} of ${pages}`;
    $("prev").disabled = state.page <= 1;
    $("next").disabled = state.page >= pages;
  } catch (err) {
    if (seq !== requestSeq) return;
    showError(`Could not load the products: ${err.message}`);
    $("range").textContent = "";
  } finally {
    if (seq === requestSeq) {
      $("grid").setAttribute("aria-busy", "false");
      $("grid").classList.remove("stale");
    }
  }
}

// ---- the details dialog ----
let detailsOpener = null;

async function openDetails(sku, push) {
  const dialog = $("details");
  const body = $("details-body");
  if (push) {
    detailsOpener = document.activeElement;
    state.sku = sku;
    writeState(true);
  }
  $("details-title").textContent = sku;
  body.replaceChildren(el("p", {className: "loading", textContent: "Loading…"}));
  if (!dialog.open) dialog.showModal();
  try {
    const product = await fetchJSON(`/v1/products/${encodeURIComponent(sku)}`);
    if (state.sku !== sku) return;
    $("details-title").textContent = productName(product) || product.sku;
    const facts = el("dl", {className: "facts"},
      el("dt", {textContent: "SKU"}), el("dd", {className: "sku", textContent: product.sku}),
      el("dt", {textContent: "Category"}), el("dd", {textContent: categoryLabel(product.category)}),
      el("dt", {textContent: "Images"}), el("dd", {textContent: fmtInt((product.images || []).length)}));
    const gallery = el("ul", {className: "gallery"}, ...(product.images || []).map((image, i) =>
      el("li", {}, el("a", {href: image.image_url, target: "_blank", rel: "noopener"},
        el("img", {className: "thumb", src: `${image.image_url}?size=160`, width: 160, height: 160,
          alt: `Photo ${i + 1} of ${product.sku}`}),
        el("span", {className: "dims", textContent: `${image.width}×${image.height}`})))));
    body.replaceChildren(facts, gallery);
  } catch (err) {
    if (state.sku !== sku) return;
    body.replaceChildren(el("p", {className: "error", textContent: err.message}));
  }
}

function onDetailsClosed() {
  if (state.sku) {
    state.sku = "";
    writeState(false);
  }
  if (detailsOpener && document.contains(detailsOpener)) detailsOpener.focus();
  detailsOpener = null;
}

// ---- wiring ----
function applyStateToForm() {
  $("q").value = state.q;
  $("category").value = state.category;
  if ($("category").value !== state.category) {  // a category this index does not know
    $("category").append(el("option", {value: state.category, textContent: state.category}));
    $("category").value = state.category;
  }
}

function setup() {
  let debounce = null;
  $("q").addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      state.q = $("q").value.trim();
      state.page = 1;
      writeState(false);
      loadPage();
    }, 250);
  });
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("category").addEventListener("change", () => {
    state.category = $("category").value;
    state.page = 1;
    writeState(false);
    loadPage();
  });
  for (const [id, step] of [["prev", -1], ["next", 1]]) {
    $(id).addEventListener("click", () => {
      state.page = Math.max(1, state.page + step);
      writeState(true);
      loadPage();
      $("range").scrollIntoView({block: "nearest"});
    });
  }
  const dialog = $("details");
  $("details-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", onDetailsClosed);
  dialog.addEventListener("click", (event) => { if (event.target === dialog) dialog.close(); });  // the backdrop
  window.addEventListener("popstate", () => {
    state = readState();
    applyStateToForm();
    loadPage();
    if (state.sku) openDetails(state.sku, false);
    else if (dialog.open) dialog.close();
  });

  loadIndexSummary();
  $("q").value = state.q;
  loadCategories($("category"))
    .catch((err) => showError(`Could not load the categories: ${err.message}`))
    .finally(applyStateToForm);
  loadPage();
  if (state.sku) openDetails(state.sku, false);
}

setup();
