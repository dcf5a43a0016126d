// Keyboard shortcuts, drag-to-rank and answer timing for the labeling pages.
// Loaded as a file (the Content-Security-Policy allows no inline script).
"use strict";

(function () {
  const started = performance.now();

  function typing(ev) {
    const t = ev.target;
    return t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName) && t.type !== "radio");
  }

  function onceOnly(form) {
    // One submission per page: a double key press must not send two labels.
    form.addEventListener("submit", function (ev) {
      if (form.dataset.sent) { ev.preventDefault(); return; }
      form.dataset.sent = "1";
      // Strength belongs to "A/B is better" only; the server refuses it with anything else.
      const by = ev.submitter ? ev.submitter.value : "";
      if (by !== "A" && by !== "B") {
        form.querySelectorAll('input[name="strength"]').forEach(function (r) { r.disabled = true; });
      }
      const secs = form.querySelector("#seconds");
      if (secs) secs.value = ((performance.now() - started) / 1000).toFixed(2);
    });
  }

  function click(id) {
    const b = document.getElementById(id);
    if (b) b.click();
  }

  // --- pairwise -------------------------------------------------------------
  function pairwise(form) {
    const prevStrength = form.dataset.previousStrength;
    if (prevStrength) {
      const r = form.querySelector('input[name="strength"][value="' + prevStrength + '"]');
      if (r) r.checked = true;
    }
    const prev = form.dataset.previousChoice;
    if (prev) {
      const b = document.getElementById("choose-" + prev);
      if (b) b.classList.add("previous");
    }
    const keys = { "1": "choose-A", "a": "choose-A", "ArrowLeft": "choose-A",
                   "2": "choose-B", "b": "choose-B", "ArrowRight": "choose-B",
                   "t": "choose-tie", "x": "choose-both_bad", "s": "choose-skip" };
    const strength = { "q": "1", "w": "2", "e": "3" };
    document.addEventListener("keydown", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev)) return;
      const k = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
      if (strength[k]) {
        const r = form.querySelector('input[name="strength"][value="' + strength[k] + '"]');
        if (r) { r.checked = true; ev.preventDefault(); }
        return;
      }
      if (keys[k]) { ev.preventDefault(); click(keys[k]); }
    });
  }

  // --- ranking --------------------------------------------------------------
  function ranking(form) {
    const list = document.getElementById("ranking");
    const order = document.getElementById("order");
    let selected = null;
    let dragged = null;

    function cards() { return Array.from(list.querySelectorAll(".card")); }

    function sync() {
      cards().forEach(function (c, n) { c.querySelector(".place").textContent = String(n + 1); });
      order.value = cards().map(function (c) { return c.dataset.letter; }).join(",");
    }

    function select(card) {
      cards().forEach(function (c) { c.classList.toggle("selected", c === card); });
      selected = card;
      if (card) card.focus({ preventScroll: false });
    }

    function move(card, step) {
      const all = cards();
      const i = all.indexOf(card);
      const j = i + step;
      if (j < 0 || j >= all.length) return;
      if (step < 0) list.insertBefore(card, all[j]);
      else list.insertBefore(card, all[j].nextSibling);
      sync();
      select(card);
    }

    // Restore a previous ranking when an annotator revisits an item.
    const prev = (order.dataset.previous || "").split(",").filter(Boolean);
    if (prev.length === cards().length) {
      prev.forEach(function (letter) { list.appendChild(document.getElementById("card-" + letter)); });
    }
    sync();

    list.addEventListener("click", function (ev) {
      const btn = ev.target.closest("button.move");
      const card = ev.target.closest(".card");
      if (btn && card) { move(card, Number(btn.dataset.move)); return; }
      if (card) select(card);
    });

    list.addEventListener("dragstart", function (ev) {
      dragged = ev.target.closest(".card");
      if (!dragged) return;
      dragged.classList.add("dragging");
      ev.dataTransfer.effectAllowed = "move";
      ev.dataTransfer.setData("text/plain", dragged.dataset.letter);
    });
    list.addEventListener("dragover", function (ev) {
      if (!dragged) return;
      ev.preventDefault();
      const over = ev.target.closest(".card");
      if (!over || over === dragged) return;
      const box = over.getBoundingClientRect();
      const after = ev.clientY > box.top + box.height / 2;
      list.insertBefore(dragged, after ? over.nextSibling : over);
    });
    list.addEventListener("drop", function (ev) { ev.preventDefault(); });
    list.addEventListener("dragend", function () {
      if (dragged) dragged.classList.remove("dragging");
      dragged = null;
      sync();
    });

    document.addEventListener("keydown", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev)) return;
      const all = cards();
      const k = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
      if (/^[1-9]$/.test(k) && Number(k) <= all.length) { ev.preventDefault(); select(all[Number(k) - 1]); return; }
      if ((k === "ArrowUp" || k === "k") && selected) { ev.preventDefault(); move(selected, -1); return; }
      if ((k === "ArrowDown" || k === "j") && selected) { ev.preventDefault(); move(selected, 1); return; }
      if (k === "Enter" && !(ev.target && ev.target.tagName === "BUTTON")) { ev.preventDefault(); click("submit-rank"); return; }
      if (k === "s") { ev.preventDefault(); click("choose-skip"); }
    });
  }

  function nextPage() {
    document.addEventListener("keydown", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev)) return;
      if (ev.key.toLowerCase() === "n") { ev.preventDefault(); click("next"); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const form = document.getElementById("label-form");
    if (form) {
      onceOnly(form);
      if (form.dataset.mode === "ranking") ranking(form);
      else pairwise(form);
    } else if (document.getElementById("next-form")) {
      nextPage();
    }
  });
})();
