// prodsearch web front end: helpers shared by the search page (search.js) and the catalog page (catalog.js).
// A classic script: each HTML page loads it (deferred) before its own page script, which uses these globals.
"use strict";

/** The element with this id. */
const $ = (id) => document.getElementById(id);

/** fetch() that resolves to parsed JSON, or throws an Error carrying the server's `error` message. */
async function fetchJSON(url, options = {}) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Error("Could not reach the server. Check your connection and try again.");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && typeof body.error === "string" && body.error.trim() ? body.error
      : `${response.status} ${response.statusText}`.trim() || "The server answered with an error.";
    throw Object.assign(new Error(message), {status: response.status});
  }
  if (body === null) throw new Error("The server sent an unreadable answer.");
  return body;
}

/** Element helper: el("span", {className: "sku"}, "text", child, ...); null/undefined children are skipped. */
function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

/** 12345 -> "12,345". */
const fmtInt = (n) => Number(n).toLocaleString("en");

/** `word` with an "s" unless n is 1: plural(2, "photo") -> "photos". */
const plural = (n, word) => word + (n === 1 ? "" : "s");

/** The product's name where it says more than its SKU, else "". */
const productName = (product) => (product.name && product.name !== product.sku ? product.name : "");

/** The category path to show, "Uncategorised" for none. */
const categoryLabel = (category) => category || "Uncategorised";

/** A catalog thumbnail <img class="thumb"> (160 px) of an image URL; it gets class "broken" if it fails to load. */
function thumbnail(imageUrl, props = {}) {
  const img = el("img", {className: "thumb", src: `${imageUrl}?size=160`, ...props});
  img.addEventListener("error", () => img.classList.add("broken"), {once: true});
  return img;
}

/** Show the message in the page's #error box; an empty message hides it. */
function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

/** Fill the header's #index-summary from GET /v1/index; resolves to the index info, or null if unavailable. */
async function loadIndexSummary() {
  const target = $("index-summary");
  try {
    const info = await fetchJSON("/v1/index");
    target.textContent =
      `${fmtInt(info.products)} products · ${fmtInt(info.images)} images · generation ${info.generation}`;
    target.title = [info.model, info.runtime, info.precision, info.index_type, info.dim && `${info.dim}-d`]
      .filter(Boolean).join(" · ");
    return info;
  } catch (err) {
    target.textContent = "Index unavailable";
    target.title = err.message;
    return null;
  }
}

/** Fill a <select> with every category of the tree (GET /v1/categories), as "Fruit/Apple (3)". */
async function loadCategories(select) {
  const data = await fetchJSON("/v1/categories");
  const walk = (nodes) => {
    for (const node of nodes || []) {
      select.append(el("option", {value: node.path, textContent: `${node.path} (${fmtInt(node.products)})`}));
      walk(node.children);
    }
  };
  walk(data.categories);
}
