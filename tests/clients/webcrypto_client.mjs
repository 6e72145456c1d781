// An encrypted Ignis client written the way a browser app is: the standard
// WebSocket API and WebCrypto (crypto.subtle) only, no Node modules, so the
// same code runs in a browser. It follows PROTOCOL.md section 7, the same
// calls as the reference's ECDH helper: generateKey / exportKey('raw') /
// importKey('raw') / deriveBits(256) / HKDF deriveKey / AES-GCM.
//
// Usage: node --experimental-websocket webcrypto_client.mjs URL USER
// Prints one JSON line per server message: {"plain": msg} for messages in
// clear, {"decrypted": msg} for decrypted ones, and one line for the close.
const [url, user] = process.argv.slice(2);
const subtle = globalThis.crypto.subtle;
const INFO = new TextEncoder().encode('ignis-ecdh-p256-aes-256-gcm-v1');
const b64 = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)));
const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));

const keyPair = await subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, false, ['deriveBits']);
const publicKey = b64(await subtle.exportKey('raw', keyPair.publicKey));
let aesKey = null;

async function deriveKey(serverPublicKey, salt) {
  const server = await subtle.importKey('raw', unb64(serverPublicKey), { name: 'ECDH', namedCurve: 'P-256' }, false, []);
  const bits = await subtle.deriveBits({ name: 'ECDH', public: server }, keyPair.privateKey, 256);
  const hkdf = await subtle.importKey('raw', bits, 'HKDF', false, ['deriveKey']);
  return subtle.deriveKey(
    { name: 'HKDF', hash: 'SHA-256', salt: unb64(salt), info: INFO },
    hkdf,
    { name: 'AES-GCM', length: 256 },
    false,
    ['encrypt', 'decrypt'],
  );
}

async function encrypt(msg) {
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const ct = await subtle.encrypt({ name: 'AES-GCM', iv, tagLength: 128 }, aesKey, new TextEncoder().encode(JSON.stringify(msg)));
  return { event: 'encrypted', data: { iv: b64(iv), ct: b64(ct) } };
}

async function decrypt({ iv, ct }) {
  const pt = await subtle.decrypt({ name: 'AES-GCM', iv: unb64(iv), tagLength: 128 }, aesKey, unb64(ct));
  return JSON.parse(new TextDecoder().decode(pt));
}

const ws = new WebSocket(url);
// Messages are handled one at a time, in order (decryption is async).
let chain = Promise.resolve();

ws.onopen = () => {
  ws.send(JSON.stringify({ event: 'authenticate', data: { userId: user, publicKey } }));
};

ws.onmessage = (e) => {
  chain = chain.then(() => handle(JSON.parse(e.data))).catch((err) => {
    console.log(JSON.stringify({ error: String(err) }));
  });
};

async function handle(msg) {
  if (msg.event !== 'encrypted') {
    console.log(JSON.stringify({ plain: msg }));
    if (msg.event === 'connected') {
      aesKey = await deriveKey(msg.data.serverPublicKey, msg.data.salt);
      ws.send(JSON.stringify({ event: 'join', data: { rooms: ['secure:room'] } }));
      // The join is applied before this arrives (same connection, in order).
      ws.send(JSON.stringify(await encrypt({ event: 'ready', data: { id: msg.data.id, secret: 'from-webcrypto' } })));
    }
    return;
  }
  const inner = await decrypt(msg.data);
  console.log(JSON.stringify({ decrypted: inner }));
  if (inner.event === 'bye') {
    ws.close(1000, 'done');
  }
}

ws.onclose = (e) => {
  chain.then(() => console.log(JSON.stringify({ closed: e.code, reason: e.reason })));
};
