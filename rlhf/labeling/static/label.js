// Keyboard shortcuts, drag-to-rank with ties, the raw/formatted view and answer timing for the labeling pages.
// Loaded as a file (the Content-Security-Policy allows no inline script).
"use strict";

(function () {
  const started = performance.now();

  function typing(ev) {
    const t = ev.target;
    return t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName) && !["radio", "checkbox"].includes(t.type));
  }

  function onceOnly(form) {
    // One submission per page: a double key press must not send two labels.
    form.addEventListener("submit", function (ev) {
      if (ev.defaultPrevented) return;  // held back (an untouched ranking): not sent
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
  // The order field stays empty until the annotator has ranked (moved a card, tied two, or confirmed
  // the order shown): an untouched page cannot store the shown order by accident.
  function ranking(form) {
    const list = document.getElementById("ranking");
    const order = document.getElementById("order");
    const untouched = document.getElementById("untouched");
    let selected = null;
    let dragged = null;
    let touched = false;

    function cards() { return Array.from(list.querySelectorAll(".card")); }

    function sync() {
      const all = cards();
      let place = 0;
      const groups = [];
      all.forEach(function (c, n) {
        const tied = n > 0 && c.dataset.tied === "1";
        if (!tied) { place += 1; groups.push([]); }
        groups[groups.length - 1].push(c.dataset.letter);
        c.classList.toggle("tied", tied);
        c.querySelector(".place").textContent = String(place);
        const b = c.querySelector("button.tie");
        b.setAttribute("aria-pressed", tied ? "true" : "false");
        b.disabled = n === 0;
      });
      order.value = touched ? groups.map(function (g) { return g.join("="); }).join(",") : "";
      if (untouched) untouched.hidden = touched;
    }

    function touch() { touched = true; sync(); }

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
      touch();
      select(card);
    }

    function toggleTie(card) {
      if (cards().indexOf(card) === 0) return;
      card.dataset.tied = card.dataset.tied === "1" ? "" : "1";
      touch();
    }

    // Restore a previous ranking when an annotator revisits an item: "C,A=D,B".
    const prev = (order.dataset.previous || "").split(",").filter(Boolean);
    if (prev.length) {
      prev.forEach(function (group) {
        group.split("=").forEach(function (letter, n) {
          const c = document.getElementById("card-" + letter);
          if (!c) return;
          c.dataset.tied = n > 0 ? "1" : "";
          list.appendChild(c);
        });
      });
      touched = true;
    }
    sync();

    document.getElementById("keep-order").addEventListener("click", touch);
    list.addEventListener("click", function (ev) {
      const btn = ev.target.closest("button.move");
      const tie = ev.target.closest("button.tie");
      const card = ev.target.closest(".card");
      if (btn && card) { move(card, Number(btn.dataset.move)); return; }
      if (tie && card) { toggleTie(card); return; }
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
      touch();
    });

    form.addEventListener("submit", function (ev) {
      const by = ev.submitter ? ev.submitter.value : "";
      if (by === "rank" && !touched) {
        ev.preventDefault();
        if (untouched) { untouched.classList.add("error"); untouched.focus(); }
      }
    }, true);

    document.addEventListener("keydown", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev)) return;
      const all = cards();
      const k = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
      if (/^[1-9]$/.test(k) && Number(k) <= all.length) { ev.preventDefault(); select(all[Number(k) - 1]); return; }
      if ((k === "ArrowUp" || k === "k") && selected) { ev.preventDefault(); move(selected, -1); return; }
      if ((k === "ArrowDown" || k === "j") && selected) { ev.preventDefault(); move(selected, 1); return; }
      if (k === "=" && selected) { ev.preventDefault(); toggleTie(selected); return; }
      if (k === "Enter" && !(ev.target && ev.target.tagName === "BUTTON")) { ev.preventDefault(); click("submit-rank"); return; }
      if (k === "x") { ev.preventDefault(); click("choose-all_bad"); return; }
      if (k === "s") { ev.preventDefault(); click("choose-skip"); }
    });
  }

  // --- thumbs: one response, good or bad -------------------------------------
  function thumbs(form) {
    const prev = form.dataset.previousChoice;
    if (prev) {
      const b = document.getElementById("choose-" + prev);
      if (b) b.classList.add("previous");
    }
    const keys = { "1": "choose-up", "+": "choose-up", "2": "choose-down", "-": "choose-down", "s": "choose-skip" };
    document.addEventListener("keydown", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev)) return;
      const k = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
      if (keys[k]) { ev.preventDefault(); click(keys[k]); }
    });
  }

  // --- demonstration: the annotator writes (or edits the draft of) the response ----------
  function demonstration(form) {
    const text = document.getElementById("text");
    const restore = document.getElementById("restore-draft");
    if (restore) restore.addEventListener("click", function () { text.value = text.dataset.draft; text.focus(); });
    text.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); click("submit-text"); }
    });
    form.addEventListener("submit", function (ev) {
      const by = ev.submitter ? ev.submitter.value : "";
      if (by === "write" && !text.value.trim()) { ev.preventDefault(); text.focus(); }
    }, true);
    document.addEventListener("keydown", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev)) return;
      if (ev.key.toLowerCase() === "s") { ev.preventDefault(); click("choose-skip"); }
    });
  }

  // --- every task page ------------------------------------------------------
  function common() {
    const toggle = document.getElementById("toggle-raw");
    function flip() {
      const raw = toggle.getAttribute("aria-pressed") !== "true";
      toggle.setAttribute("aria-pressed", raw ? "true" : "false");
      toggle.firstChild.textContent = raw ? "Show formatted " : "Show raw text ";
      document.querySelectorAll(".rendered").forEach(function (e) { e.hidden = raw; });
      document.querySelectorAll("pre.raw").forEach(function (e) { e.hidden = !raw; });
    }
    if (toggle) toggle.addEventListener("click", flip);
    document.addEventListener("keydown", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev)) return;
      const k = ev.key.toLowerCase();
      if (k === "v" && toggle) { ev.preventDefault(); flip(); }
      if (k === "u") { ev.preventDefault(); click("undo"); }
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
      if (form.dataset.mode === "ranking") ranking(form);
      else if (form.dataset.mode === "thumbs") thumbs(form);
      else if (form.dataset.mode === "demonstration") demonstration(form);
      else pairwise(form);
      onceOnly(form);
      common();
    } else if (document.getElementById("next-form")) {
      nextPage();
    }
  });
})();
