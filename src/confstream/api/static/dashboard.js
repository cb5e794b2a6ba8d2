// confstream live dashboard (docs/operations.md, Dashboard). Read-only: it listens to
// /dashboard/events (Server-Sent Events, one JSON snapshot about every 500 ms) and updates the
// page in place. Values are only ever set as text, never parsed as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const QUIET_DB = -60; // the level meter's left end, in dBFS; 0 dBFS is its right end

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(node, text) {
    const value = String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function show(value) {
    return value === null || value === undefined ? "–" : String(value);
  }

  function table(headings) {
    const t = el("table");
    const head = t.createTHead().insertRow();
    for (const h of headings) head.appendChild(el("th", h.num ? "num" : "", h.text));
    return [t, t.createTBody()];
  }

  // Keep the children of `parent` equal to `items` (keyed by key(item)), in order.
  function sync(parent, rows, items, key, create, update) {
    const seen = new Set();
    let index = 0;
    for (const item of items) {
      const k = key(item);
      seen.add(k);
      let row = rows.get(k);
      if (!row) {
        row = create(item);
        rows.set(k, row);
      }
      update(row, item);
      if (parent.children[index] !== row.node) {
        parent.insertBefore(row.node, parent.children[index] || null);
      }
      index += 1;
    }
    for (const [k, row] of rows) {
      if (!seen.has(k)) {
        row.node.remove();
        rows.delete(k);
      }
    }
  }

  // ------------------------------------------------------------------ participants
  function createParticipant(p) {
    const node = el("tr", "participant");
    node.dataset.callSid = p.call_sid;
    const sid = el("td", "sid call-sid", p.call_sid);
    const state = el("td", "state");
    const level = el("td", "level");
    const meter = el("span", "meter");
    const bar = el("span");
    meter.appendChild(bar);
    const db = el("span", "level-db");
    level.append(meter, db);
    node.append(sid, state, level);
    return { node, state, level, bar, db };
  }

  function updateParticipant(row, p) {
    const states = [];
    if (p.muted) states.push("muted");
    if (p.hold) states.push("hold");
    const label = states.join(" ") || "speaking";
    if (row.node.dataset.state !== label) {
      row.node.dataset.state = label;
      row.state.replaceChildren(
        ...(states.length ? states.map((s) => el("span", `badge ${s}`, s)) : [el("span", "badge", "live")])
      );
    }
    const db = p.level_dbfs;
    row.level.dataset.levelDbfs = db === null ? "" : String(db);
    const width = db === null ? 0 : Math.max(0, Math.min(100, ((db - QUIET_DB) / -QUIET_DB) * 100));
    row.bar.style.width = `${width.toFixed(1)}%`;
    setText(row.db, db === null ? "–" : `${db.toFixed(1)} dBFS`);
  }

  // ----------------------------------------------------------------------- streams
  const STREAM_COUNTERS = [
    ["messages_sent", "messages"],
    ["media_sent", "media"],
    ["frames_dropped", "dropped"],
    ["queued_frames", "queued"],
  ];

  function createStream(s) {
    const node = el("tr", "stream");
    node.dataset.streamSid = s.sid;
    const name = el("td", "name");
    const status = el("td", "status");
    const format = el("td", "format");
    const counters = {};
    node.append(name, status, format);
    for (const [field, cls] of STREAM_COUNTERS) {
      counters[field] = el("td", `num ${cls}`);
      node.appendChild(counters[field]);
    }
    return { node, name, status, format, counters };
  }

  function updateStream(row, s) {
    setText(row.name, s.name ? `${s.name} (${s.sid})` : s.sid);
    const statusText = s.error_code ? `${s.status} ${s.error_code}` : s.status;
    if (row.status.dataset.value !== statusText) {
      row.status.dataset.value = statusText;
      row.status.replaceChildren(el("span", `badge ${s.status}`, statusText));
    }
    setText(row.format, `${s.track} · ${s.codec}`);
    for (const [field] of STREAM_COUNTERS) setText(row.counters[field], show(s[field]));
  }

  // ------------------------------------------------------------------- conferences
  function createConference(c) {
    const node = el("section", "conference");
    node.dataset.conferenceSid = c.sid;
    const title = el("h2");
    const name = el("span", "name");
    const status = el("span", "badge");
    title.append(name, el("span", "sid", c.sid), status);
    const [pTable, pBody] = table([{ text: "Call" }, { text: "State" }, { text: "Level" }]);
    pTable.className = "participants";
    const [sTable, sBody] = table([
      { text: "Stream" }, { text: "Status" }, { text: "Track · codec" },
      { text: "Messages", num: true }, { text: "Media", num: true },
      { text: "Dropped", num: true }, { text: "Queued", num: true },
    ]);
    sTable.className = "streams";
    const noStreams = el("p", "empty", "No streams.");
    node.append(title, el("h3", "", "Participants"), pTable, el("h3", "", "Streams"), sTable, noStreams);
    return {
      node, name, status, pBody, sBody, sTable, noStreams,
      participants: new Map(), streams: new Map(),
    };
  }

  function updateConference(row, c) {
    setText(row.name, c.friendly_name);
    setText(row.status, c.status);
    row.status.className = `badge ${c.status}`;
    sync(row.pBody, row.participants, c.participants, (p) => p.call_sid, createParticipant, updateParticipant);
    sync(row.sBody, row.streams, c.streams, (s) => s.sid, createStream, updateStream);
    row.sTable.hidden = c.streams.length === 0;
    row.noStreams.hidden = c.streams.length !== 0;
  }

  const conferences = new Map();
  const main = $("conferences");
  const empty = $("empty");
  const cards = el("div", "cards");
  main.appendChild(cards);

  function render(snapshot) {
    setText($("account"), snapshot.account_sid);
    sync(cards, conferences, snapshot.conferences, (c) => c.sid, createConference, updateConference);
    empty.hidden = snapshot.conferences.length !== 0;
    const t = snapshot.totals;
    setText($("total-conferences"), t.conferences);
    setText($("total-participants"), t.participants);
    setText($("total-streams"), t.streams_active);
    setText($("total-dropped"), t.frames_dropped);
    setText($("updated"), `updated ${new Date(snapshot.time).toLocaleTimeString()}`);
  }

  function setConnection(online) {
    const badge = $("connection");
    setText(badge, online ? "live" : "reconnecting");
    badge.className = `badge ${online ? "online" : "offline"}`;
  }

  const events = new EventSource("/dashboard/events");
  events.addEventListener("open", () => setConnection(true));
  events.addEventListener("error", () => setConnection(false));
  events.addEventListener("snapshot", (e) => {
    setConnection(true);
    render(JSON.parse(e.data));
  });
})();
