// The operators' dashboard: joins the node's cluster channel over the V2
// protocol (PROTOCOL.md §2.3) and redraws on every "cluster" push. No
// library: the protocol needs a dozen lines.
"use strict";

(function () {
  const cfg = window.CHANNELSD_DASHBOARD || {};
  const windowMinutes = 5;
  const history = []; // {t, in, out, sockets}
  let ws = null, ref = 0, joinRef = null, beat = null, backoff = 500, expired = false;

  document.getElementById("window").textContent = windowMinutes;

  function status(text, kind) {
    const el = document.getElementById("status");
    el.textContent = text;
    el.className = "status " + (kind || "");
  }

  function send(jr, topic, event, payload) {
    ref += 1;
    ws.send(JSON.stringify([jr, String(ref), topic, event, payload]));
    return String(ref);
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(proto + "//" + location.host + cfg.socketPath + "/websocket?vsn=2.0.0");
    ws.onopen = function () {
      backoff = 500;
      beat = setInterval(function () { send(null, "phoenix", "heartbeat", {}); }, 30000);
      // The join needs a fresh ticket: the page's session (an HttpOnly
      // cookie) or the node's loopback rule vouches for it.
      const sock = ws;
      fetch("dashboard/ticket", { credentials: "same-origin", cache: "no-store" }).then(function (res) {
        if (res.status === 401 || res.status === 403) {
          expired = true;
          status("session expired: reload the page to log in again", "bad");
          sock.close();
          return;
        }
        if (!res.ok) throw new Error("ticket: HTTP " + res.status);
        return res.json().then(function (t) {
          if (sock === ws) joinRef = send(null, cfg.topic, "phx_join", { ticket: t.ticket });
        });
      }).catch(function () { sock.close(); });
    };
    ws.onmessage = function (ev) {
      const [jr, r, topic, event, payload] = JSON.parse(ev.data);
      if (topic !== cfg.topic) return;
      if (event === "phx_reply" && r === joinRef) {
        if (payload.status === "ok") status("live", "ok");
        else status("refused: " + JSON.stringify(payload.response), "bad");
      } else if (event === "cluster") {
        render(payload);
      } else if (event === "phx_error" || event === "phx_close") {
        status("channel closed", "bad");
      }
    };
    ws.onclose = function () {
      clearInterval(beat);
      if (expired) return;
      status("reconnecting…", "bad");
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }

  function fmt(n) { return Number(n).toLocaleString("en-US", { maximumFractionDigits: 1 }); }

  function cell(tr, text) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }

  function render(view) {
    const nodes = view.nodes || [];
    const tbody = document.querySelector("#nodes tbody");
    tbody.replaceChildren();
    let sockets = 0, channels = 0, rin = 0, rout = 0;
    for (const n of nodes) {
      const tr = document.createElement("tr");
      tr.dataset.node = n.node;
      if (n.draining) tr.className = "draining";
      else if (n.age > 2 * (view.interval_ms / 1000)) tr.className = "stale";
      cell(tr, n.node);
      cell(tr, fmt(n.sockets));
      cell(tr, fmt(n.websockets));
      cell(tr, fmt(n.longpoll));
      cell(tr, fmt(n.channels));
      cell(tr, fmt(n.in_rate));
      cell(tr, fmt(n.out_rate));
      cell(tr, n.draining ? "draining" : "serving");
      cell(tr, n.age.toFixed(1) + " s");
      tbody.appendChild(tr);
      sockets += n.sockets; channels += n.channels; rin += n.in_rate; rout += n.out_rate;
    }
    document.getElementById("t-nodes").textContent = nodes.length;
    document.getElementById("t-sockets").textContent = fmt(sockets);
    document.getElementById("t-channels").textContent = fmt(channels);
    document.getElementById("t-in").textContent = fmt(rin);
    document.getElementById("t-out").textContent = fmt(rout);
    const now = Date.now();
    history.push({ t: now, in: rin, out: rout, sockets: sockets });
    while (history.length && history[0].t < now - windowMinutes * 60000) history.shift();
    plot(now);
  }

  function line(key, scale, t0, cls) {
    const pts = history.map(function (h) {
      const x = ((h.t - t0) / (windowMinutes * 60000)) * 600;
      const y = 150 - (h[key] / scale) * 140;
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    const el = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    el.setAttribute("points", pts.join(" "));
    el.setAttribute("class", cls);
    return el;
  }

  function plot(now) {
    const svg = document.getElementById("plot");
    svg.replaceChildren();
    const t0 = now - windowMinutes * 60000;
    const rateMax = Math.max(1, ...history.map(function (h) { return Math.max(h.in, h.out); }));
    const sockMax = Math.max(1, ...history.map(function (h) { return h.sockets; }));
    svg.appendChild(line("in", rateMax, t0, "in"));
    svg.appendChild(line("out", rateMax, t0, "out"));
    svg.appendChild(line("sockets", sockMax, t0, "sockets"));
    // The scale is HTML, not SVG text: the plot stretches to the page's
    // width (preserveAspectRatio="none"), and so would text inside it.
    document.getElementById("scale").textContent =
      "top of the plot: " + fmt(rateMax) + " msg/s, " + fmt(sockMax) + " sockets";
  }

  connect();
})();
