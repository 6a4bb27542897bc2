// A secured sandbox: envd got an access token through POST /init, the SDK sends it as
// X-Access-Token, and signs uploadUrl()/downloadUrl() with it. This needs its own envd (a token
// on the shared one would lock the other test files out), so this file starts one on a free
// port and points the SDK at it with the `sandboxUrl` connection option instead of debug mode's
// fixed localhost:49983. The sandbox also reports envd version 0.6.1, like Wrenn's control plane
// will, so the SDK's version gates behave as in production.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { Sandbox, describeErr, scratchPath, sdk, sleep, waitFor } from '../lib/sdk.mjs';

const T = { timeout: 30_000 };
const BIN = process.env.E2E_ENVD_BIN || resolve(import.meta.dirname ?? '.', '../../../build/src/envd/wrenn-envd');
const TOKEN = randomBytes(16).toString('hex');
const VERSION = '0.6.1';

let dir;
let envd;
let url;

function sandboxWith(token) {
  return new Sandbox({
    sandboxId: 'secured-e2e',
    envdVersion: VERSION,
    envdAccessToken: token,
    sandboxUrl: url,
    debug: true,
  });
}

before(async () => {
  dir = scratchPath('auth');
  mkdirSync(join(dir, 'run'), { recursive: true });
  const portFile = join(dir, 'port');
  const log = openSync(join(dir, 'envd.log'), 'w');
  envd = spawn(BIN, ['--port', '0', '--addr', '127.0.0.1', '--port-file', portFile, '--run-dir', join(dir, 'run')], {
    stdio: ['ignore', log, log],
    // envd refuses unknown WRENN_ENVD_* variables, e.g. the runner's WRENN_ENVD_BIN.
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WRENN_ENVD_'))),
  });
  closeSync(log);
  await waitFor(() => existsSync(portFile) && readFileSync(portFile, 'utf8').trim(), 10_000, 'envd port file').catch(
    (err) => {
      throw new Error(`${err.message}; envd log:\n${envdLog()}`);
    },
  );
  url = `http://127.0.0.1:${readFileSync(portFile, 'utf8').trim()}`;
  const r = await fetch(`${url}/init`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ accessToken: TOKEN }),
  });
  assert.equal(r.status, 204, `POST /init: ${r.status} ${await r.text()}`);
});

after(async () => {
  if (envd && envd.exitCode === null) {
    const gone = new Promise((r) => envd.once('exit', r));
    envd.kill('SIGTERM');
    await Promise.race([gone, sleep(5000)]);
    if (envd.exitCode === null) envd.kill('SIGKILL');
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** envd's log, for failure messages. */
const envdLog = () => {
  try {
    return readFileSync(join(dir, 'envd.log'), 'utf8').split('\n').slice(-10).join('\n');
  } catch {
    return '';
  }
};

const authErr = (err) => {
  assert.ok(err instanceof sdk.AuthenticationError, `expected AuthenticationError, got ${describeErr(err)}`);
  return true;
};

describe('access token', () => {
  it('with the token: commands, filesystem RPCs and /files work', T, async () => {
    const sbx = sandboxWith(TOKEN);
    const r = await sbx.commands.run('echo secured', { user: 'nobody', cwd: '/tmp' });
    assert.equal(r.stdout, 'secured\n');
    const p = join(dir, 'tok.txt');
    await sbx.files.write(p, 'with token');
    assert.equal(await sbx.files.read(p), 'with token');
    assert.equal(await sbx.files.exists(p), true);
    assert.ok((await sbx.files.list(dir)).some((e) => e.name === 'tok.txt'));
  });

  it('without the token, RPCs are rejected with AuthenticationError (401)', T, async () => {
    const sbx = sandboxWith(undefined);
    await assert.rejects(sbx.commands.run('echo no', { user: 'nobody', cwd: '/tmp' }), authErr);
    await assert.rejects(sbx.files.list(dir), authErr);
    await assert.rejects(sbx.commands.list(), authErr);
  });

  it('a wrong token is rejected on RPCs and on /files', T, async () => {
    const sbx = sandboxWith(`${TOKEN}x`);
    await assert.rejects(sbx.files.exists(dir), authErr);
    const p = join(dir, 'wrong.txt');
    writeFileSync(p, 'x');
    await assert.rejects(sbx.files.read(p), authErr);
    await assert.rejects(sbx.files.write(join(dir, 'wrong-w.txt'), 'x'), authErr);
    assert.equal(existsSync(join(dir, 'wrong-w.txt')), false, 'upload with a wrong token landed');
  });

  it('/health needs no token (isRunning)', T, async () => {
    assert.equal(await sandboxWith(undefined).isRunning(), true);
  });
});

describe('signed URLs', () => {
  it('uploadUrl() accepts a multipart POST without the token header', T, async () => {
    const sbx = sandboxWith(TOKEN);
    const p = join(dir, 'signed-up.txt');
    const u = await sbx.uploadUrl(p);
    assert.match(u, /signature=v1_/);
    const form = new FormData();
    form.append('file', new Blob(['signed upload']), p);
    const r = await fetch(u, { method: 'POST', body: form });
    assert.equal(r.status, 200, `${r.status} ${await r.clone().text()}`);
    assert.equal(readFileSync(p, 'utf8'), 'signed upload');
  });

  it('downloadUrl() serves the file without the token header', T, async () => {
    const sbx = sandboxWith(TOKEN);
    const p = join(dir, 'signed-down.bin');
    const data = randomBytes(1000);
    writeFileSync(p, data);
    const r = await fetch(await sbx.downloadUrl(p));
    assert.equal(r.status, 200);
    assert.deepEqual(Buffer.from(await r.arrayBuffer()), data);
  });

  it('signatures with an expiration work; a tampered signature or a different path is 401', T, async () => {
    const sbx = sandboxWith(TOKEN);
    const p = join(dir, 'signed-exp.txt');
    writeFileSync(p, 'expiring');
    const u = new URL(await sbx.downloadUrl(p, { useSignatureExpiration: 60 }));
    assert.ok(u.searchParams.get('signature_expiration'));
    assert.equal(await (await fetch(u)).text(), 'expiring');

    const bad = new URL(u);
    bad.searchParams.set('signature', `${u.searchParams.get('signature')}A`);
    assert.equal((await fetch(bad)).status, 401);

    const other = join(dir, 'other.txt');
    writeFileSync(other, 'other');
    const moved = new URL(u);
    moved.searchParams.set('path', other);
    assert.equal((await fetch(moved)).status, 401);

    // A read signature does not authorize a write.
    const form = new FormData();
    form.append('file', new Blob(['nope']), p);
    const w = await fetch(u, { method: 'POST', body: form });
    assert.equal(w.status, 401);
    assert.equal(readFileSync(p, 'utf8'), 'expiring');
  });
});
