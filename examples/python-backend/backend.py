#!/usr/bin/env python3
"""A tiny application backend for channelsd, standard library only.

It authorizes joins of order:<id> topics (a user may join only their own
orders) and handles one event, add_item, which it answers and broadcasts.
channelsd calls it as configured in channelsd.yaml beside this file.

    CHANNELS_PROXY_SECRET=dev-secret python3 backend.py   # listens on 127.0.0.1:3000
"""
import hashlib
import hmac
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ.get("CHANNELS_PROXY_SECRET", "").encode()

# Which user owns which order: the application's own data.
ORDERS = {"7": "ann", "8": "bob"}
ITEMS = {}


def connect(req):
    user = req["params"].get("user", "")
    if not user:
        return {"status": "error", "reason": "who are you?", "http_status": 401}
    return {"status": "ok", "socket_id": "user:" + user, "user": user, "assigns": {}}


def join(req):
    order = req["topic"].split(":", 1)[1]
    if ORDERS.get(order) != req["user"]:
        return {"status": "error", "reason": "not your order"}
    return {"status": "ok", "reply": {"items": ITEMS.get(order, [])}, "assigns": {"order": order}}


def event(req):
    if req["event"] != "add_item":
        return {"status": "error", "reason": "unknown event"}
    sku = req["payload"].get("sku")
    if not isinstance(sku, str) or not sku:
        return {"status": "error", "reason": "sku required"}
    items = ITEMS.setdefault(req["assigns"]["order"], [])
    items.append(sku)
    return {
        "status": "ok",
        "reply": {"count": len(items)},
        "broadcasts": [{"event": "item_added", "payload": {"sku": sku, "by": req["user"]}}],
    }


def leave(req):
    print("left", req["topic"], req["user"], req["reason"], flush=True)
    return {"status": "ok"}


CALLS = {"/channels/connect": connect, "/channels/join": join, "/channels/event": event, "/channels/leave": leave}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if SECRET:
            # The signature covers the body as received: check it before parsing.
            expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, self.headers.get("X-Channelsd-Signature", "")):
                self.send_error(401, "bad signature")
                return
        call = CALLS.get(self.path)
        if call is None:
            self.send_error(404)
            return
        answer = json.dumps(call(json.loads(body))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", 3000), Handler).serve_forever()
