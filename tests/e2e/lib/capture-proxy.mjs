// A logging reverse proxy for diagnosing e2e failures at the wire level (run.sh with
// E2E_CAPTURE=<file>). It listens where the SDK's debug mode connects (localhost:49983, both
// loopback families), forwards every request unchanged to envd on another port, and appends one
// record per exchange to the log: request line, headers, the first bytes of the request and the
// response bodies (Connect envelopes decoded to their JSON when they fit).
//
// usage: node capture-proxy.mjs <listen-port> <envd-port> <log-file>
import { appendFileSync } from 'node:fs';
import http from 'node:http';

const [listenPort, envdPort, logFile] = process.argv.slice(2);
const MAX = 4096;
let seq = 0;

/** Keep at most MAX bytes of a body for the log. */
function capture() {
  const parts = [];
  let len = 0;
  let total = 0;
  return {
    add(chunk) {
      total += chunk.length;
      if (len < MAX) {
        const piece = chunk.subarray(0, MAX - len);
        parts.push(piece);
        len += piece.length;
      }
    },
    render(ctype) {
      const buf = Buffer.concat(parts);
      const suffix = total > len ? ` ... (${total} bytes in all)` : '';
      if (/connect\+json/.test(ctype || '')) return renderEnvelopes(buf) + suffix;
      if (/json|text/.test(ctype || '') || isPrintable(buf)) return buf.toString('utf8') + suffix;
      return `<${total} bytes binary: ${buf.subarray(0, 64).toString('hex')}${total > 64 ? '...' : ''}>`;
    },
  };
}

function isPrintable(buf) {
  for (const b of buf.subarray(0, 512)) if (b < 9 || (b > 13 && b < 32)) return false;
  return true;
}

/** Connect streaming envelopes: flag byte, 4-byte big-endian length, payload. */
function renderEnvelopes(buf) {
  const out = [];
  let off = 0;
  while (off + 5 <= buf.length) {
    const flag = buf[off];
    const n = buf.readUInt32BE(off + 1);
    const payload = buf.subarray(off + 5, off + 5 + n);
    out.push(`[flag=${flag} len=${n}] ${payload.toString('utf8')}${payload.length < n ? ' (truncated)' : ''}`);
    off += 5 + n;
  }
  if (off < buf.length) out.push(`[${buf.length - off} trailing bytes]`);
  return out.join('\n      ');
}

const SKIP = new Set(['user-agent', 'lang', 'lang_version', 'package_version', 'publisher', 'sdk_runtime', 'system', 'browser']);
const hdrs = (h) =>
  Object.entries(h)
    .filter(([k]) => !SKIP.has(k))
    .map(([k, v]) => `${k}: ${v}`)
    .join('\n    ');

function handler(req, res) {
  const id = ++seq;
  const t0 = Date.now();
  const reqBody = capture();
  const resBody = capture();
  let upRes = null;
  let logged = false;
  const flush = (note) => {
    if (logged) return;
    logged = true;
    const status = upRes ? upRes.statusCode : '-';
    appendFileSync(
      logFile,
      `#${id} ${req.method} ${req.url} -> ${status} (${Date.now() - t0} ms)${note ? ` [${note}]` : ''}\n` +
        `  request headers:\n    ${hdrs(req.headers)}\n` +
        `  request body: ${reqBody.render(req.headers['content-type'])}\n` +
        (upRes ? `  response headers:\n    ${hdrs(upRes.headers)}\n` : '') +
        (upRes ? `  response body: ${resBody.render(upRes.headers['content-type'])}\n` : '') +
        '\n',
    );
  };
  const up = http.request(
    { host: '127.0.0.1', port: envdPort, method: req.method, path: req.url, headers: req.headers },
    (ur) => {
      upRes = ur;
      res.writeHead(ur.statusCode, ur.headers);
      ur.on('data', (c) => {
        resBody.add(c);
        res.write(c);
      });
      ur.on('end', () => {
        res.end();
        flush();
      });
      ur.on('error', (e) => {
        flush(`upstream response error: ${e.message}`);
        res.destroy(e);
      });
    },
  );
  up.on('error', (e) => {
    flush(`upstream error: ${e.message}`);
    if (!res.headersSent) res.writeHead(502);
    res.end();
  });
  req.on('data', (c) => {
    reqBody.add(c);
    up.write(c);
  });
  req.on('end', () => up.end());
  // The client went away (e.g. watch stop(), command disconnect): drop the upstream too.
  res.on('close', () => {
    if (!res.writableFinished) {
      flush('client closed the connection');
      up.destroy();
    }
  });
}

for (const host of ['127.0.0.1', '::1']) {
  http.createServer(handler).listen(Number(listenPort), host);
}
