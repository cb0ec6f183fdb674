// The try-it page: images in, labels in, SigLIP's probabilities out as bars.
// Plain browser JavaScript, no build step and no external resources. Every call goes to the
// JSON API of this same server (relative URLs, so a path prefix in front of it still works).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    modelInfo: $("model-info"), randomWarning: $("random-warning"), token: $("token"),
    modelForm: $("model-form"), model: $("model"),
    tokenForm: $("token-form"),
    dropzone: $("dropzone"), fileInput: $("file-input"), imageNotes: $("image-notes"),
    previews: $("previews"), clearImages: $("clear-images"),
    classifyForm: $("classify-form"), classify: $("classify"), labels: $("labels"),
    template: $("template"), error: $("error"), status: $("status"),
    resultsSection: $("results-section"), results: $("results"),
    searchForm: $("search-form"), search: $("search"), query: $("query"), matches: $("matches"),
    searchError: $("search-error"), searchStatus: $("search-status"),
  };
  // Requests in flight at once when classifying many images (one request per image, so one
  // bad or oversized file fails only its own card).
  const PARALLEL = 4;

  let images = [];  // {id, file, url, base64: () => Promise<string>}
  let nextId = 1;

  // --- the API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(message, status, detail) {
      super(message);
      this.status = status;              // HTTP status, 0 when the server was not reached
      this.code = detail && detail.code;  // gRPC status name, e.g. INVALID_ARGUMENT
      this.param = detail && detail.param;
    }
  }

  function headers(json) {
    const h = { Accept: "application/json" };
    if (json) h["Content-Type"] = "application/json";
    const token = els.token.value.trim();
    if (token) h.Authorization = "Bearer " + token;
    return h;
  }

  async function api(path, body) {
    const init = body === undefined
      ? { headers: headers(false) }
      : { method: "POST", headers: headers(true), body: JSON.stringify(body) };
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError("cannot reach the server (" + err.message + ")", 0, null);
    }
    const text = await response.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON: handled below */ }
    if (!response.ok) {
      const detail = json && json.error;
      const message = detail && detail.message ? detail.message
        : `HTTP ${response.status} ${response.statusText}` + (text ? ": " + text.slice(0, 200) : "");
      throw new ApiError(message, response.status, detail);
    }
    if (json === null) throw new ApiError("the server's answer is not JSON", response.status, null);
    return json;
  }

  function describe(err) {
    if (!(err instanceof ApiError)) return String(err && err.message || err);
    const where = [err.code, err.status ? "HTTP " + err.status : ""].filter(Boolean).join(", ");
    return where ? `${err.message} (${where})` : err.message;
  }

  // --- messages ------------------------------------------------------------------------------

  // Each form has its own error box and status line, next to it.
  function showError(text, box = els.error) {
    box.textContent = text;
    box.hidden = false;
  }

  function clearError(box = els.error) {
    box.hidden = true;
    box.textContent = "";
  }

  function setStatus(text, line = els.status) { line.textContent = text; }

  // --- model info ----------------------------------------------------------------------------

  // The model requests name: the one chosen when the server serves several (the selector is
  // shown), else none (the server's default).
  function chosenModel() {
    return els.modelForm.hidden ? "" : els.model.value;
  }

  function withModel(body) {
    const model = chosenModel();
    return model ? { ...body, model } : body;
  }

  // The selector lists every served model, default first; shown only when there is a choice.
  function fillModels(models, selected) {
    els.modelForm.hidden = models.length < 2;
    if (models.length < 2) { els.model.replaceChildren(); return; }
    const names = models.map((m) => m.name);
    const current = [...els.model.options].map((o) => o.value);
    if (names.join("\n") !== current.join("\n")) {
      els.model.replaceChildren(...models.map((m) => {
        const option = document.createElement("option");
        option.value = m.name;
        option.textContent = m.name === m.model_id ? m.name : `${m.name} (${m.model_id})`;
        return option;
      }));
    }
    els.model.value = selected;
  }

  async function loadInfo() {
    try {
      const model = chosenModel();
      const info = await api("v1/models/info" + (model ? "?model=" + encodeURIComponent(model) : ""));
      fillModels(info.models || [], info.name || "");
      els.modelInfo.textContent = `Model ${info.model_id}: images ${info.image_size}×${info.image_size}`
        + `, texts ${info.text_length} tokens, embeddings of ${info.embedding_dim}`
        + `, preprocessing “${info.preprocess_mode}”.`;
      els.randomWarning.hidden = !info.random_weights;
      els.template.placeholder = info.default_prompt_template || "";
    } catch (err) {
      els.randomWarning.hidden = true;
      els.modelInfo.textContent = err.status === 401
        ? "This server needs a bearer token: enter it below."
        : "Model info unavailable: " + describe(err);
    }
  }

  // --- images --------------------------------------------------------------------------------

  function readBase64(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => {
        const url = reader.result;  // data:<type>;base64,<data>
        resolve(url.slice(url.indexOf(",") + 1));
      };
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  function formatBytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(0) + " KB";
    return (n / (1024 * 1024)).toFixed(1) + " MB";
  }

  function addFiles(fileList) {
    const skipped = [];
    for (const file of fileList) {
      // Some systems give no type; let the server decide about those.
      if (file.type && !file.type.startsWith("image/")) { skipped.push(file.name); continue; }
      let cached = null;
      images.push({
        id: nextId++, file, url: URL.createObjectURL(file),
        base64() { cached = cached || readBase64(file); return cached; },
      });
    }
    els.imageNotes.textContent = skipped.length ? "Not images, skipped: " + skipped.join(", ") : "";
    renderPreviews();
  }

  function removeImage(id) {
    const gone = images.find((img) => img.id === id);
    if (gone) URL.revokeObjectURL(gone.url);
    images = images.filter((img) => img.id !== id);
    renderPreviews();
  }

  function thumbnail(img) {
    const el = document.createElement("img");
    el.src = img.url;
    el.alt = "";  // the file name is always shown next to it
    el.decoding = "async";
    // A format the browser cannot show (the server may still read it): a plain box instead.
    el.addEventListener("error", () => {
      const box = document.createElement("span");
      box.className = "no-preview";
      box.textContent = "no preview";
      el.replaceWith(box);
    }, { once: true });
    return el;
  }

  function renderPreviews() {
    els.previews.replaceChildren(...images.map((img) => {
      const li = document.createElement("li");
      li.className = "preview";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = img.file.name || "pasted image";
      const size = document.createElement("span");
      size.className = "hint";
      size.textContent = formatBytes(img.file.size);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "×";
      remove.setAttribute("aria-label", "Remove " + name.textContent);
      remove.addEventListener("click", () => removeImage(img.id));
      li.append(thumbnail(img), name, size, remove);
      return li;
    }));
    els.clearImages.hidden = images.length === 0;
  }

  // --- results -------------------------------------------------------------------------------

  // Four decimals down to 0.001 (two significant digits or more); below, three significant
  // digits with an exponent, so that small probabilities still differ from one another.
  function formatProbability(p) {
    return p === 0 || p >= 0.001 ? p.toFixed(4) : p.toExponential(2);
  }

  function barRow(labelNode, probability, logit) {
    const li = document.createElement("li");
    li.className = "bar-row";
    li.title = "logit " + logit.toFixed(4);
    const label = document.createElement("span");
    label.className = "label";
    label.append(labelNode);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = (probability * 100).toFixed(2) + "%";
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "probability";
    value.textContent = formatProbability(probability);
    li.append(label, bar, value);
    return li;
  }

  function resultCard(img) {
    const li = document.createElement("li");
    li.className = "result";
    li.setAttribute("aria-busy", "true");
    const figure = document.createElement("figure");
    const caption = document.createElement("figcaption");
    caption.textContent = img.file.name || "pasted image";
    figure.append(thumbnail(img), caption);
    const body = document.createElement("div");
    body.className = "result-body";
    body.textContent = "…";
    li.append(figure, body);
    return li;
  }

  function fillCard(card, scores) {
    const sorted = [...scores].sort((a, b) => (b.probability || 0) - (a.probability || 0));
    const list = document.createElement("ol");
    list.className = "bars";
    list.setAttribute("aria-label", "Labels, most probable first");
    // proto3 JSON may leave out zero values: a missing number is 0, a missing label "".
    list.append(...sorted.map((s) => barRow(s.label || "", s.probability || 0, s.logit || 0)));
    card.querySelector(".result-body").replaceChildren(list);
    card.removeAttribute("aria-busy");
  }

  function failCard(card, text) {
    const p = document.createElement("p");
    p.className = "card-error";
    p.textContent = text;
    card.querySelector(".result-body").replaceChildren(p);
    card.removeAttribute("aria-busy");
  }

  // An error that concerns this one image (bad or oversized file) stays on its card; any other
  // (labels, template, token, server state) is the same for every image and is shown once.
  function isImageError(err) {
    return err instanceof ApiError
      && (err.status === 413 || (typeof err.param === "string" && err.param.startsWith("images")));
  }

  function imageErrorText(err, img) {
    const name = img.file.name || "pasted image";
    let text = describe(err).replace(/^images\[0\]/, name);
    if (err.status === 413) {
      const encoded = Math.ceil(img.file.size / 3) * 4;
      text += ` The file is ${formatBytes(img.file.size)}, ${formatBytes(encoded)} as base64.`;
    }
    return text;
  }

  function parseLabels(text) {
    const parts = text.includes("\n") ? text.split(/\r?\n/) : text.split(",");
    return parts.map((s) => s.trim()).filter((s) => s.length > 0);
  }

  async function eachLimited(items, limit, fn) {
    let next = 0;
    const worker = async () => {
      while (next < items.length) {
        const i = next++;
        await fn(items[i], i);
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  }

  async function classify(event) {
    event.preventDefault();
    clearError();
    if (images.length === 0) {
      showError("Choose or drop at least one image first.");
      return;
    }
    const request = { labels: parseLabels(els.labels.value) };
    if (els.template.value.trim()) request.prompt_template = els.template.value;
    const batch = images.slice();
    const cards = batch.map(resultCard);
    els.results.replaceChildren(...cards);
    els.resultsSection.hidden = false;
    els.classify.disabled = true;
    setStatus(`Classifying ${batch.length} image${batch.length === 1 ? "" : "s"}…`);
    let shared = null;  // the first error that is not about one image
    let done = 0;
    try {
      await eachLimited(batch, PARALLEL, async (img, i) => {
        if (shared) { failCard(cards[i], "Not classified: see the error above."); return; }
        try {
          const data = await img.base64();
          const response = await api("v1/classify", withModel({ ...request, images: [{ data }] }));
          fillCard(cards[i], response.results[0].scores || []);
          done++;
        } catch (err) {
          if (isImageError(err)) {
            failCard(cards[i], imageErrorText(err, img));
          } else {
            shared = shared || err;
            failCard(cards[i], "Not classified: see the error above.");
          }
        }
      });
    } finally {
      els.classify.disabled = false;
    }
    if (shared) showError(describe(shared));
    setStatus(`${done} of ${batch.length} image${batch.length === 1 ? "" : "s"} classified.`);
  }

  // --- search among the images ---------------------------------------------------------------

  async function search(event) {
    event.preventDefault();
    clearError(els.searchError);
    const text = els.query.value.trim();
    if (images.length === 0 || !text) {
      showError(images.length === 0 ? "Choose or drop at least one image first."
        : "Type a text to look for.", els.searchError);
      return;
    }
    const batch = images.slice();
    els.search.disabled = true;
    els.matches.setAttribute("aria-busy", "true");
    setStatus(`Scoring ${batch.length} image${batch.length === 1 ? "" : "s"} against the text…`,
      els.searchStatus);
    try {
      const data = await Promise.all(batch.map((img) => img.base64()));
      const response = await api("v1/score",
        withModel({ images: data.map((d) => ({ data: d })), texts: [text] }));
      const texts = response.num_texts || 1;
      const ranked = batch.map((img, i) => ({
        img,
        probability: (response.probabilities || [])[i * texts] || 0,
        logit: (response.logits || [])[i * texts] || 0,
      })).sort((a, b) => b.probability - a.probability);
      els.matches.replaceChildren(...ranked.map((r) => {
        const label = document.createDocumentFragment();
        const name = document.createElement("span");
        name.textContent = r.img.file.name || "pasted image";
        label.append(thumbnail(r.img), name);
        return barRow(label, r.probability, r.logit);
      }));
      setStatus(`Images ranked by how well they match “${text}”.`, els.searchStatus);
    } catch (err) {
      els.matches.replaceChildren();
      showError(describe(err), els.searchError);
      setStatus("", els.searchStatus);
    } finally {
      els.search.disabled = false;
      els.matches.removeAttribute("aria-busy");
    }
  }

  // --- wiring --------------------------------------------------------------------------------

  els.fileInput.addEventListener("change", () => {
    addFiles(els.fileInput.files);
    els.fileInput.value = "";  // choosing the same file again still fires "change"
  });
  els.clearImages.addEventListener("click", () => {
    for (const img of images) URL.revokeObjectURL(img.url);
    images = [];
    renderPreviews();
  });

  // Files dropped anywhere on the page are taken (rather than opened by the browser).
  let dragDepth = 0;
  const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
  window.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    dragDepth++;
    els.dropzone.classList.add("dragging");
  });
  window.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) els.dropzone.classList.remove("dragging");
  });
  window.addEventListener("dragover", (event) => {
    if (hasFiles(event)) event.preventDefault();
  });
  window.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    els.dropzone.classList.remove("dragging");
    addFiles(event.dataTransfer.files);
  });
  document.addEventListener("paste", (event) => {
    const files = event.clipboardData ? [...event.clipboardData.files] : [];
    if (files.length) addFiles(files);
  });

  els.classifyForm.addEventListener("submit", classify);
  els.searchForm.addEventListener("submit", search);
  els.token.addEventListener("change", loadInfo);
  els.model.addEventListener("change", loadInfo);
  els.modelForm.addEventListener("submit", (event) => event.preventDefault());
  els.tokenForm.addEventListener("submit", (event) => { event.preventDefault(); loadInfo(); });
  loadInfo();
})();
