// A client written the way a browser app is written against the Ignis
// WebSocket docs: the standard WebSocket API only (no Node-specific
// modules), so the same code runs in a browser. Node runs it with
// --experimental-websocket (Node 20) or natively (Node 22+).
//
// Usage: node --experimental-websocket browser_client.mjs URL TOKEN
// Prints one JSON line per server message and one for the close.
const [url, token] = process.argv.slice(2);

const ws = new WebSocket(url);

ws.onopen = () => {
  ws.send(JSON.stringify({ event: 'authenticate', data: { type: 'Bearer', token } }));
};

ws.onmessage = (e) => {
  const msg = JSON.parse(e.data);
  console.log(JSON.stringify(msg));
  switch (msg.event) {
    case 'connected':
      ws.send(JSON.stringify({ event: 'join', data: { rooms: ['public:news', 'private:x'] } }));
      ws.send(JSON.stringify({ event: 'heartbeat' }));
      ws.send(JSON.stringify({ event: 'ready', data: { id: msg.data.id } }));
      break;
    case 'bye':
      ws.close(1000, 'done');
      break;
    default:
      break;
  }
};

ws.onerror = () => {
  console.log(JSON.stringify({ error: true }));
};

ws.onclose = (e) => {
  console.log(JSON.stringify({ closed: e.code, reason: e.reason, wasClean: e.wasClean }));
};
