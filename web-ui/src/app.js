// dataward's only script, served from the binary. Pages work without it;
// it redraws the device page's preview as the sharing grid is edited, and
// follows the hub's live events. Text goes in with textContent only, never
// as HTML: field names and values come from devices.
"use strict";
(function () {
  const form = document.getElementById("sharing");
  if (!form) {
    return;
  }
  const device = form.dataset.device;
  const csrf = form.dataset.csrf;
  const status = document.getElementById("preview-status");
  let timer = null;
  let asked = 0;

  // The grid as the API takes it, read from the form's own fields.
  function grid() {
    const data = new FormData(form);
    const fields = [];
    const dests = [];
    for (const [k, v] of data.entries()) {
      let m = /^f(\d+)$/.exec(k);
      if (m) fields.push([m[1], v]);
      m = /^d(\d+)$/.exec(k);
      if (m) dests.push([m[1], v]);
    }
    const body = { fields: [], cells: [], not_stored: [], retention: data.get("retention") || "" };
    const base = data.get("base");
    if (base) body.base = Number(base);
    for (const [i, f] of fields) {
      body.fields.push(f);
      if (data.get("n" + i)) body.not_stored.push(f);
      for (const [j, d] of dests) {
        body.cells.push({
          field: f,
          destination: d,
          action: data.get("a" + i + "_" + j) || "",
          params: data.get("p" + i + "_" + j) || "",
        });
      }
    }
    return body;
  }

  function draw(preview) {
    for (const out of preview.destinations || []) {
      for (const box of document.querySelectorAll("[data-destination]")) {
        if (box.dataset.destination !== out.destination) continue;
        box.querySelector("pre.payload").textContent =
          out.payload === null ? "(nothing is sent)" : out.payload;
        const list = box.querySelector("ul.decisions");
        list.replaceChildren();
        for (const f of out.fields || []) {
          const li = document.createElement("li");
          const name = document.createElement("span");
          name.className = "field";
          name.textContent = f.field;
          li.append(name, " " + f.action + " · " + (f.rule || "no rule: not shared"));
          list.append(li);
        }
      }
    }
  }

  function refresh(edited) {
    const mine = ++asked;
    const url = "/api/v1/devices/" + encodeURIComponent(device) + "/sharing/preview";
    fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(grid()),
      credentials: "same-origin",
    })
      .then((r) => r.json().then((b) => [r.ok, b]))
      .then(([ok, b]) => {
        if (mine !== asked) return; // a newer edit is on its way
        if (!ok) {
          status.textContent = "Not valid yet: " + (b.detail || b.title || "refused");
          status.className = "bad";
          return;
        }
        status.className = edited ? "stale" : "";
        status.textContent = edited
          ? "Preview of your edits, on the last message (not saved yet)."
          : "On its last message, as edited here.";
        draw(b);
      })
      .catch(() => {
        status.textContent = "The hub did not answer; the preview is not current.";
        status.className = "bad";
      });
  }

  let edited = false;
  function later() {
    edited = true;
    clearTimeout(timer);
    timer = setTimeout(() => refresh(true), 250);
  }
  form.addEventListener("input", later);
  form.addEventListener("change", later);

  // A new message from this device: the preview follows it.
  if (window.EventSource) {
    const events = new EventSource("/api/v1/events");
    events.addEventListener("device", (e) => {
      let d = null;
      try {
        d = JSON.parse(e.data);
      } catch (_) {
        return;
      }
      if (d && d.id === device) refresh(edited);
    });
  }
})();
