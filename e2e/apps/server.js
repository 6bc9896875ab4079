// The Node.js service of the e2e shop: answers GET /ping on $PORT and, every 2 s, calls $PEER_URL
// (another service of the namespace, by its Service name), so a traced process keeps making spans.
'use strict';
const http = require('http');

const port = Number(process.env.PORT || 8080);
console.log(`node ${process.version} listening on ${port}; LD_PRELOAD=${process.env.LD_PRELOAD || ''}`);
http.createServer((req, res) => res.end('pong\n')).listen(port);

const peer = process.env.PEER_URL;
if (peer) {
  setInterval(() => {
    http.get(peer, (res) => res.resume()).on('error', (err) => console.log('peer call failed:', err.message));
  }, 2000);
}
process.on('SIGTERM', () => process.exit(0));
