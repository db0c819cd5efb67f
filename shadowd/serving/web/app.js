// shadowd annotate: the labelling page. Served by shadowd (no CDN); everything from an item is shown
// through textContent or drawn on a canvas, never parsed as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = { token: null, session: null, info: null, item: null, busy: false, emptyTimer: null };

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function age(seconds) {
    if (seconds < 90) return Math.round(seconds) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    if (seconds < 172800) return (seconds / 3600).toFixed(1) + " h";
    return (seconds / 86400).toFixed(1) + " d";
  }

  function clock(ts) {
    return new Date(ts * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  // --- the token: from the URL fragment (never sent to a server) into this tab's sessionStorage ---

  function takeToken() {
    const hash = new URLSearchParams(window.location.hash.slice(1));
    const fromUrl = hash.get("token");
    if (fromUrl) {
      sessionStorage.setItem("shadowd-token", fromUrl);
      history.replaceState(null, "", window.location.pathname);
    }
    return sessionStorage.getItem("shadowd-token");
  }

  function showLogin(reason) {
    sessionStorage.removeItem("shadowd-token");
    sessionStorage.removeItem("shadowd-session");
    state.token = null;
    state.session = null;
    $("login-error").textContent = reason || "";
    for (const id of ["item", "empty"]) $(id).hidden = true;
    $("login").hidden = false;
    $("token-input").focus();
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + state.token };
    if (state.session) headers["X-Shadowd-Session"] = state.session;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {
      method: method,
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = { error: "HTTP " + resp.status };
    }
    if (resp.status === 401 || resp.status === 403) {
      showLogin(data.error);
      throw new Error(data.error);
    }
    return { status: resp.status, data: data };
  }

  async function openSession() {
    const got = await api("POST", "/api/session", {});
    if (got.status !== 200) throw new Error(got.data.error);
    state.info = got.data;
    state.session = got.data.session;
    sessionStorage.setItem("shadowd-session", state.session);
  }

  // --- status line: who labels, the rotation, the backlog (and the lease is renewed) ---

  async function refreshStatus() {
    if (!state.session) return;
    let got;
    try {
      got = await api("GET", "/api/status");
    } catch (e) {
      return;
    }
    if (got.status === 409) {
      await openSession();
      return;
    }
    const s = got.data;
    const box = $("status");
    clear(box);
    box.appendChild(el("span", "labelling as " + state.info.annotator));
    if (s.rotation) {
      box.appendChild(
        el(
          "span",
          "rotation " + s.rotation.name + ": on call " + s.rotation.on_call + " until " + clock(s.rotation.until_ts) +
            ", next " + s.rotation.next
        )
      );
    }
    const b = s.backlog;
    const lanes = Object.entries(b.lanes || {})
      .map(([lane, x]) => lane + " " + x.items)
      .join(", ");
    box.appendChild(el("span", "backlog " + b.items + " (" + lanes + "), oldest " + age(b.oldest_age_s)));
    box.appendChild(el("span", "done here " + (state.done || 0)));
    $("status").dataset.backlog = String(b.items);
  }

  // --- one item ---

  function row(table, key, value, cls) {
    const tr = el("tr");
    tr.appendChild(el("td", key));
    const td = el("td", value);
    if (cls) td.className = cls;
    tr.appendChild(td);
    table.appendChild(tr);
  }

  function renderWhy(item) {
    const box = $("why");
    clear(box);
    const add = (k, v, cls) => {
      box.appendChild(el("span", k, "k"));
      box.appendChild(el("span", v, cls));
    };
    const lane =
      item.lane === "evaluation"
        ? "evaluation sample (random; its label decides the gate" +
          (item.inclusion ? ", drawn with p=" + item.inclusion.toPrecision(3) : "") +
          ")"
        : "review (priority queue; its label feeds suites, not the gate)";
    add("lane", lane, "lane-" + item.lane);
    add("why", item.reason + (item.detail ? ": " + item.detail : "") + " (priority " + item.priority.toPrecision(3) + ")");
    add("slices", item.slices.length ? item.slices.join(", ") : "-");
    add("age", age(item.age_s) + " (queued " + clock(item.created_ts) + ")");
    add("request", item.request_id);
  }

  function renderInputs(view) {
    const box = $("inputs");
    clear(box);
    box.appendChild(el("h3", "inputs"));
    if (view.kind === "image") {
      const [h, w, c] = view.shape;
      const canvas = el("canvas", undefined, "input-image");
      canvas.width = w;
      canvas.height = h;
      const scale = Math.max(1, Math.floor(256 / Math.max(h, w)));
      canvas.style.width = w * scale + "px";
      canvas.style.height = h * scale + "px";
      const ctx = canvas.getContext("2d");
      const img = ctx.createImageData(w, h);
      for (let i = 0; i < h * w; i++) {
        for (let k = 0; k < 3; k++) img.data[4 * i + k] = view.pixels[c === 1 ? i : 3 * i + k];
        img.data[4 * i + 3] = 255;
      }
      ctx.putImageData(img, 0, 0);
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", "input image " + h + "x" + w);
      box.appendChild(canvas);
      box.appendChild(el("div", "values " + view.min.toPrecision(3) + " (black) to " + view.max.toPrecision(3) + " (white)"));
    } else if (view.kind === "table") {
      const table = el("table", undefined, "input-table");
      for (const [name, value] of view.rows) row(table, name, value);
      box.appendChild(table);
      if (view.more) box.appendChild(el("div", "... and " + view.more + " more"));
    } else {
      box.appendChild(el("pre", view.text + (view.truncated ? "\n[...]" : ""), "input-text"));
    }
  }

  function renderAnswers(item) {
    const box = $("answers");
    clear(box);
    box.appendChild(el("h3", "the models' answers"));
    for (const m of item.models) {
      box.appendChild(el("h4", m.role + " (" + m.model + ")"));
      if (m.outcome !== "ok") {
        box.appendChild(el("div", m.outcome + (m.detail ? ": " + m.detail : ""), "error"));
        continue;
      }
      const table = el("table", undefined, "answers-" + m.role);
      if (m.probabilities) {
        for (const [k, name, p] of m.probabilities.slice(0, 5)) {
          const tr = el("tr", undefined, k === m.top ? "top" : "");
          tr.appendChild(el("td", name));
          const td = el("td");
          const bar = el("span", undefined, "bar");
          bar.style.width = Math.round(120 * p) + "px";
          td.appendChild(bar);
          td.appendChild(document.createTextNode(" " + p.toFixed(3)));
          tr.appendChild(td);
          table.appendChild(tr);
        }
      } else if (m.values) {
        m.values.forEach((v, i) => row(table, "value " + i, v.toPrecision(4)));
      }
      box.appendChild(table);
    }
  }

  function renderFeatures(item) {
    const box = $("features");
    clear(box);
    if (!item.features.length) return;
    box.appendChild(el("h3", "features"));
    const table = el("table", undefined, "feature-table");
    for (const [k, v] of item.features) row(table, k, v);
    box.appendChild(table);
  }

  function renderControls(item) {
    const buttons = $("class-buttons");
    clear(buttons);
    const classes = item.task === "classification" ? item.classes : [];
    const typed = item.task !== "classification" || classes.length > 10;
    if (item.task === "classification" && classes.length <= 20) {
      classes.forEach((name, k) => {
        const b = el("button", name === String(k) || typed || k >= 10 ? name : k + ": " + name);
        b.type = "button";
        b.dataset.answer = String(k);
        b.addEventListener("click", () => answer(k));
        buttons.appendChild(b);
      });
    }
    $("value-entry").hidden = !typed;
    $("value-input").value = "";
  }

  function render(item) {
    state.item = item;
    $("item-error").textContent = "";
    renderWhy(item);
    renderInputs(item.inputs);
    renderAnswers(item);
    renderFeatures(item);
    renderControls(item);
    $("empty").hidden = true;
    $("item").hidden = false;
    $("item").dataset.requestId = item.request_id;
    if (!$("value-entry").hidden) $("value-input").focus();
  }

  async function next() {
    if (state.emptyTimer) clearTimeout(state.emptyTimer);
    state.emptyTimer = null;
    let got;
    try {
      got = await api("POST", "/api/next", {});
    } catch (e) {
      return;
    }
    if (got.status === 409) {
      await openSession();
      return next();
    }
    if (got.status !== 200) {
      $("item-error").textContent = got.data.error;
      return;
    }
    if (!got.data.item) {
      state.item = null;
      $("item").hidden = true;
      $("empty").hidden = false;
      state.emptyTimer = setTimeout(next, 3000);
      return;
    }
    render(got.data.item);
  }

  async function answer(value) {
    if (!state.item || state.busy) return;
    state.busy = true;
    const rid = state.item.request_id;
    try {
      const got = await api("POST", "/api/label", { request_id: rid, answer: value });
      if (got.status === 200) {
        state.done = (state.done || 0) + 1;
        const l = got.data.label;
        $("saved").textContent = "saved " + rid + ": " + (l.verdict === "label" ? "label " + JSON.stringify(l.label) : l.verdict);
        $("saved").dataset.count = String(state.done);
        state.item = null;
        await next();
        refreshStatus();
      } else if (got.status === 409) {
        $("saved").textContent = got.data.error;
        state.item = null;
        await next();
      } else {
        $("item-error").textContent = got.data.error;
      }
    } catch (e) {
      $("item-error").textContent = String(e.message || e);
    } finally {
      state.busy = false;
    }
  }

  function typedValue() {
    const text = $("value-input").value.trim();
    if (!text) return;
    let value;
    try {
      value = JSON.parse(text);
    } catch (e) {
      $("item-error").textContent = JSON.stringify(text) + " is not a number or a list of numbers";
      return;
    }
    answer(value);
  }

  function onKey(ev) {
    if (!state.item || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const inValue = document.activeElement === $("value-input");
    if (inValue) {
      if (ev.key === "Enter") {
        ev.preventDefault();
        typedValue();
      }
      return;
    }
    if (document.activeElement === $("token-input")) return;
    if (ev.key === "s") {
      ev.preventDefault();
      answer("skip");
    } else if (ev.key === "b") {
      ev.preventDefault();
      answer("bad_data");
    } else if (/^[0-9]$/.test(ev.key) && state.item.task === "classification" && state.item.classes.length <= 10) {
      const k = Number(ev.key);
      if (k < state.item.classes.length) {
        ev.preventDefault();
        answer(k);
      }
    }
  }

  async function start() {
    state.token = takeToken();
    if (!state.token) {
      showLogin("");
      return;
    }
    $("login").hidden = true;
    state.session = sessionStorage.getItem("shadowd-session");
    try {
      if (!state.session) {
        await openSession();
      } else {
        const got = await api("POST", "/api/session", {});
        // A reload: the old session's item goes back; this tab gets a fresh session.
        const old = state.session;
        state.info = got.data;
        state.session = got.data.session;
        sessionStorage.setItem("shadowd-session", state.session);
        fetch("/api/close", {
          method: "POST",
          headers: { Authorization: "Bearer " + state.token, "X-Shadowd-Session": old },
          keepalive: true,
        }).catch(() => {});
      }
    } catch (e) {
      return;
    }
    await refreshStatus();
    await next();
    setInterval(refreshStatus, 15000);
  }

  window.addEventListener("pagehide", () => {
    if (state.token && state.session) {
      fetch("/api/release", {
        method: "POST",
        headers: { Authorization: "Bearer " + state.token, "X-Shadowd-Session": state.session },
        keepalive: true,
      }).catch(() => {});
    }
  });
  document.addEventListener("keydown", onKey);
  document.addEventListener("DOMContentLoaded", () => {
    $("skip").addEventListener("click", () => answer("skip"));
    $("bad").addEventListener("click", () => answer("bad_data"));
    $("value-save").addEventListener("click", typedValue);
    $("token-save").addEventListener("click", () => {
      const t = $("token-input").value.trim();
      if (!t) return;
      sessionStorage.setItem("shadowd-token", t);
      $("token-input").value = "";
      start();
    });
    $("token-input").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") $("token-save").click();
    });
    start();
  });
})();
