// channelsd demo chat. It speaks the Phoenix Channels V2 protocol directly:
// every text frame is [join_ref, ref, topic, event, payload].
"use strict";

const SOCKET_PATH = (window.CHANNELSD && window.CHANNELSD.socketPath) || "/socket";
const HEARTBEAT_MS = 30000;
const RECONNECT_MS = [100, 500, 1000, 2000, 5000];
const REJOIN_MS = [1000, 2000, 5000, 10000];
const TYPING_SEND_MS = 2000;
const TYPING_SHOW_MS = 4000;
// HISTORY is how many of a room's last broadcasts a first join asks for
// (the server keeps room:* history: 100 broadcasts for 5 minutes).
const HISTORY = 50;

const $ = (id) => document.getElementById(id);
const has = (obj, key) => Object.prototype.hasOwnProperty.call(obj, key);

let session = null;

// Session is one user in one room: a WebSocket that reconnects with
// backoff, and the join of room:<room> on it, rejoined when needed. The
// first join asks for the room's last HISTORY broadcasts; every rejoin
// asks for what came after the last position seen ("since"), so nothing
// is missed or shown twice while the history still holds it.
function Session(user, room) {
  const topic = "room:" + room;
  let ws = null, stopped = false, joined = false;
  let ref = 0, joinRef = null, replies = {};
  let reconnects = 0, rejoins = 0, joins = 0;
  let reconnectTimer = null, rejoinTimer = null, heartbeatTimer = null, heartbeatRef = null;
  let presences = Object.create(null), stateJoinRef = null, pendingDiffs = [];
  const typers = new Map(); // user -> timer hiding their indicator
  let lastTyping = 0;
  // last is the position to recover from (the newest broadcast seen, or
  // the join reply's); seen the newest one shown, so that a broadcast
  // is never shown twice; replayTop the join reply's position: the room's
  // broadcasts up to it are history, not news.
  let last = null, seen = null, replayTop = null;

  // send writes one frame and returns its ref; onReply gets the reply.
  function send(jr, t, event, payload, onReply) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return null;
    const r = String(++ref);
    if (onReply) replies[r] = onReply;
    ws.send(JSON.stringify([jr, r, t, event, payload]));
    return r;
  }
  const push = (event, payload, onReply) => send(joinRef, topic, event, payload, onReply);

  function connect() {
    // With --token-secret the server wants a token: open the page as
    // /?token=<channelsd token --sub ann>; it is passed on as is.
    const token = new URLSearchParams(location.search).get("token");
    const url = location.origin.replace(/^http/, "ws") + SOCKET_PATH +
      "/websocket?vsn=2.0.0&user=" + encodeURIComponent(user) +
      (token ? "&token=" + encodeURIComponent(token) : "");
    const sock = new WebSocket(url);
    ws = sock;
    sock.binaryType = "arraybuffer";
    sock.onopen = () => { reconnects = 0; heartbeat(); join(); };
    sock.onmessage = (e) => { if (sock === ws) receive(e.data); };
    sock.onclose = () => { if (sock === ws) closed(); };
  }

  // closed forgets the connection's state and schedules a reconnect.
  function closed() {
    ws = null; joined = false; joinRef = null; replies = {}; heartbeatRef = null;
    clearTimeout(heartbeatTimer); clearTimeout(rejoinTimer);
    if (stopped) return;
    const delay = RECONNECT_MS[Math.min(reconnects++, RECONNECT_MS.length - 1)];
    status("offline, reconnecting…", "bad");
    reconnectTimer = setTimeout(connect, delay);
  }

  // heartbeat sends one every HEARTBEAT_MS; an unanswered one means the
  // connection is dead, so it is dropped at once and reopened.
  function heartbeat() {
    heartbeatTimer = setTimeout(() => {
      if (heartbeatRef !== null) {
        const sock = ws;
        closed();
        sock.close(4000, "heartbeat timeout");
        return;
      }
      heartbeatRef = send(null, "phoenix", "heartbeat", {}, () => { heartbeatRef = null; });
      heartbeat();
    }, HEARTBEAT_MS);
  }

  function join() {
    clearTimeout(rejoinTimer);
    joined = false; pendingDiffs = [];
    const r = String(++ref);
    joinRef = r;
    const since = last;
    const params = since ? { user: user, since: since } : { user: user, history: HISTORY };
    replies[r] = (reply) => {
      if (joinRef !== r) return;
      if (reply.status === "ok") {
        joined = true; rejoins = 0;
        status("online as " + user, "good");
        const resp = reply.response || {};
        // How the latest join went, for test/browser to read: the joins so
        // far, the since sent, the reply's position and recovered flag.
        Object.assign(document.body.dataset, {
          joins: String(++joins), since: since || "",
          position: typeof resp.position === "string" ? resp.position : "",
          recovered: has(resp, "recovered") ? String(resp.recovered) : "",
        });
        if (typeof resp.position === "string") {
          replayTop = parsePos(resp.position);
          // The replay, if any, follows the reply and moves last on as
          // it arrives; taking the reply's position before it would skip
          // what the replay had yet to bring, should the socket drop.
          if (resp.recovered !== true) last = resp.position;
        }
        if (since && resp.recovered === false) {
          note("Some messages may be missing: the server could not replay what was sent while you were away (" +
            (resp.reason || "history unavailable") + ").");
        } else if (since) {
          note("");
        }
      } else {
        status("join refused: " + describe(reply.response), "bad");
        rejoin();
      }
    };
    ws.send(JSON.stringify([r, r, topic, "phx_join", params]));
    status("joining…", "");
  }

  function rejoin() {
    joined = false;
    clearTimeout(rejoinTimer);
    const delay = REJOIN_MS[Math.min(rejoins++, REJOIN_MS.length - 1)];
    rejoinTimer = setTimeout(() => { if (ws && ws.readyState === WebSocket.OPEN) join(); }, delay);
  }

  function receive(data) {
    if (typeof data !== "string") return; // this page uses no binary payloads
    let msg;
    try { msg = JSON.parse(data); } catch (_) { return; }
    if (!Array.isArray(msg) || msg.length < 5) return;
    const [jr, r, t, event, payload] = msg;
    if (event === "phx_reply") {
      const onReply = replies[r];
      delete replies[r];
      if (onReply) onReply(payload || {});
      return;
    }
    if (t !== topic || (jr !== null && jr !== joinRef)) return; // another join's message
    if (!payload || typeof payload !== "object") return;
    // A broadcast of a room with history carries its position as the ref.
    const pos = jr === null && typeof r === "string" ? parsePos(r) : null;
    if (pos) {
      if (seen && pos.epoch === seen.epoch && pos.offset <= seen.offset) return; // shown already
      seen = pos; last = r;
      // Of the broadcasts replayed from before the join only the messages
      // matter: old typing signals are stale, and presence_state already
      // holds what old presence diffs said.
      const replayed = replayTop && pos.epoch === replayTop.epoch && pos.offset <= replayTop.offset;
      if (replayed && event !== "new_msg") return;
    }
    switch (event) {
      case "phx_error": status("room crashed, rejoining…", "bad"); rejoin(); break;
      case "phx_close": joined = false; status("the server closed the room", "bad"); break;
      case "presence_state": syncState(payload); break;
      case "presence_diff": syncDiff(payload); break;
      case "new_msg": stopTyping(payload.user); addMessage(payload.user, payload.body); break;
      case "typing": startTyping(payload.user); break;
    }
  }

  // Presence, merged the way phoenix.js's Presence does: metas are told
  // apart by phx_ref, and diffs wait for the current join's state.
  function syncState(state) {
    const joins = Object.create(null), leaves = Object.create(null);
    for (const key of Object.keys(presences)) {
      if (!has(state, key)) leaves[key] = presences[key];
    }
    for (const key of Object.keys(state)) {
      const cur = presences[key], next = state[key];
      if (!cur) { joins[key] = next; continue; }
      const curRefs = refs(cur.metas), nextRefs = refs(next.metas);
      const added = next.metas.filter((m) => !curRefs.has(m.phx_ref));
      const removed = cur.metas.filter((m) => !nextRefs.has(m.phx_ref));
      if (added.length) joins[key] = { metas: added };
      if (removed.length) leaves[key] = { metas: removed };
    }
    applyDiff({ joins, leaves });
    stateJoinRef = joinRef;
    pendingDiffs.forEach(applyDiff);
    pendingDiffs = [];
    renderPeople();
  }

  function syncDiff(diff) {
    if (stateJoinRef !== joinRef) { pendingDiffs.push(diff); return; }
    applyDiff(diff);
    renderPeople();
  }

  function applyDiff(diff) {
    for (const [key, entry] of Object.entries(diff.joins || {})) {
      const joinedRefs = refs(entry.metas);
      const kept = presences[key] ? presences[key].metas.filter((m) => !joinedRefs.has(m.phx_ref)) : [];
      presences[key] = { metas: kept.concat(entry.metas) };
    }
    for (const [key, entry] of Object.entries(diff.leaves || {})) {
      if (!presences[key]) continue;
      const leftRefs = refs(entry.metas);
      presences[key].metas = presences[key].metas.filter((m) => !leftRefs.has(m.phx_ref));
      if (presences[key].metas.length === 0) delete presences[key];
    }
  }

  function renderPeople() {
    const list = $("people");
    list.replaceChildren();
    for (const key of Object.keys(presences).sort()) {
      const li = document.createElement("li");
      const n = presences[key].metas.length;
      li.textContent = key + (n > 1 ? " (" + n + ")" : "");
      if (key === user) li.className = "me";
      list.append(li);
    }
    $("count").textContent = String(list.children.length);
  }

  function startTyping(who) {
    if (typeof who !== "string" || who === user) return;
    clearTimeout(typers.get(who));
    typers.set(who, setTimeout(() => stopTyping(who), TYPING_SHOW_MS));
    renderTyping();
  }

  function stopTyping(who) {
    clearTimeout(typers.get(who));
    if (typers.delete(who)) renderTyping();
  }

  function renderTyping() {
    const names = [...typers.keys()];
    $("typing").textContent =
      names.length === 0 ? "" :
      names.length === 1 ? names[0] + " is typing…" :
      names.length <= 3 ? names.join(", ") + " are typing…" :
      "several people are typing…";
  }

  this.say = (body) => {
    if (!joined) return false;
    push("new_msg", { body: body }, (reply) => {
      if (reply.status !== "ok") status("message refused: " + describe(reply.response), "bad");
    });
    lastTyping = 0;
    return true;
  };

  this.typing = () => {
    const now = Date.now();
    if (!joined || now - lastTyping < TYPING_SEND_MS) return;
    lastTyping = now;
    push("typing", {});
  };

  this.stop = () => {
    stopped = true;
    clearTimeout(reconnectTimer); clearTimeout(rejoinTimer); clearTimeout(heartbeatTimer);
    typers.forEach((timer) => clearTimeout(timer));
    if (ws) ws.close(1000, "left");
    ws = null;
  };

  connect();
}

// parsePos reads a history position, "<epoch>:<offset>"; null if r is
// not one (a reply's ref, say).
function parsePos(r) {
  const i = r.lastIndexOf(":");
  if (i <= 0) return null;
  const offset = Number(r.slice(i + 1));
  return Number.isSafeInteger(offset) ? { epoch: r.slice(0, i), offset: offset } : null;
}

// note shows text above the messages, or hides it when text is empty.
function note(text) {
  $("note").textContent = text;
  $("note").hidden = text === "";
}

function refs(metas) { return new Set(metas.map((m) => m.phx_ref)); }

function describe(response) {
  return response && typeof response.reason === "string" ? response.reason : JSON.stringify(response);
}

function status(text, kind) {
  $("status").textContent = text;
  $("status").className = "status " + kind;
}

function addMessage(user, body) {
  const list = $("messages");
  const stick = list.scrollTop + list.clientHeight >= list.scrollHeight - 8;
  const li = document.createElement("li");
  const who = document.createElement("b");
  who.textContent = String(user);
  const text = document.createElement("span");
  text.textContent = typeof body === "string" ? body : JSON.stringify(body);
  li.append(who, text);
  list.append(li);
  if (stick) list.scrollTop = list.scrollHeight;
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  const user = $("name").value.trim(), room = $("room").value.trim();
  if (!user || !room) return;
  localStorage.setItem("channelsd.user", user);
  location.hash = encodeURIComponent(room);
  $("title").textContent = "#" + room;
  $("messages").replaceChildren();
  $("people").replaceChildren();
  $("count").textContent = "0";
  $("typing").textContent = "";
  note("");
  $("login").hidden = true;
  $("chat").hidden = false;
  session = new Session(user, room);
  $("body").focus();
});

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const body = $("body").value.trim();
  if (body && session && session.say(body)) $("body").value = "";
});

$("body").addEventListener("input", () => { if (session) session.typing(); });

$("leave").addEventListener("click", () => {
  if (session) session.stop();
  session = null;
  status("offline", "");
  $("chat").hidden = true;
  $("login").hidden = false;
});

$("name").value = localStorage.getItem("channelsd.user") || "guest-" + Math.floor(1000 + Math.random() * 9000);
try {
  if (location.hash.length > 1) $("room").value = decodeURIComponent(location.hash.slice(1));
} catch (_) { /* a malformed hash keeps the default room */ }
