"""The Python service of the e2e shop: answers GET /ping on $PORT and, every 2 s, calls $PEER_URL
with `requests` (the application's own dependency, as in a real service)."""

import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


class Ping(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"pong\n")

    def log_message(self, *args):
        pass


def call_peer(url):
    while True:
        time.sleep(2)
        try:
            requests.get(url, timeout=5)
        except requests.RequestException as error:
            print("peer call failed:", error, flush=True)


port = int(os.environ.get("PORT", "8080"))
print(f"python {sys.version.split()[0]} listening on {port}; LD_PRELOAD={os.environ.get('LD_PRELOAD', '')};"
      f" user preload ran: {os.environ.get('USER_PRELOAD_RAN', 'no')}", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if os.environ.get("PEER_URL"):
    threading.Thread(target=call_peer, args=(os.environ["PEER_URL"],), daemon=True).start()
ThreadingHTTPServer(("", port), Ping).serve_forever()
