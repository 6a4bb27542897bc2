// sandbox.files.read / files.write: REST GET/POST /files (multipart, octet-stream, gzip).
// envd runs on this machine, so node:fs checks what landed on disk independently of the SDK.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { describeErr, newSandbox, scratchPath, sdk } from '../lib/sdk.mjs';

const T = { timeout: 30_000 };
let sbx;
let dir;

const sha256 = (b) => createHash('sha256').update(b).digest('hex');
const all256 = () => Uint8Array.from({ length: 256 }, (_, i) => i);

before(async () => {
  sbx = await newSandbox();
  dir = scratchPath('files');
  mkdirSync(dir, { recursive: true });
});

after(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('files.write / files.read', () => {
  it('writes text and reports the entry', T, async () => {
    const p = join(dir, 'hello.txt');
    const info = await sbx.files.write(p, 'hello wörld\n');
    assert.equal(info.path, p);
    assert.equal(info.name, 'hello.txt');
    assert.equal(info.type, sdk.FileType.FILE);
    assert.equal(readFileSync(p, 'utf8'), 'hello wörld\n');
  });

  it('reads text (format text, the default)', T, async () => {
    const p = join(dir, 'given.txt');
    writeFileSync(p, 'line 1\nlíne 2 €\n');
    assert.equal(await sbx.files.read(p), 'line 1\nlíne 2 €\n');
    assert.equal(await sbx.files.read(p, { format: 'text' }), 'line 1\nlíne 2 €\n');
  });

  it('round-trips text through write and read', T, async () => {
    const p = join(dir, 'rt.txt');
    await sbx.files.write(p, 'round trip');
    assert.equal(await sbx.files.read(p), 'round trip');
  });

  it('writes and reads binary (Uint8Array, all 256 byte values)', T, async () => {
    const p = join(dir, 'bin-u8.bin');
    const data = all256();
    await sbx.files.write(p, data);
    assert.deepEqual(new Uint8Array(readFileSync(p)), data);
    const back = await sbx.files.read(p, { format: 'bytes' });
    assert.ok(back instanceof Uint8Array);
    assert.deepEqual(back, data);
  });

  it('writes binary from an ArrayBuffer and reads it as a Blob', T, async () => {
    const p = join(dir, 'bin-ab.bin');
    const data = all256().reverse();
    await sbx.files.write(p, data.buffer);
    assert.deepEqual(new Uint8Array(readFileSync(p)), data);
    const blob = await sbx.files.read(p, { format: 'blob' });
    assert.ok(blob instanceof Blob);
    assert.deepEqual(new Uint8Array(await blob.arrayBuffer()), data);
  });

  it('reads as a stream', T, async () => {
    const p = join(dir, 'stream-src.bin');
    const data = randomBytes(300_000);
    writeFileSync(p, data);
    const stream = await sbx.files.read(p, { format: 'stream' });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    assert.equal(sha256(Buffer.concat(chunks)), sha256(data));
  });

  it('writes and reads a 50 MiB file intact (sha256)', { timeout: 180_000 }, async () => {
    const p = join(dir, 'big.bin');
    const data = randomBytes(50 * 1024 * 1024);
    const want = sha256(data);
    const info = await sbx.files.write(p, new Blob([data]));
    assert.equal(info.path, p);
    assert.equal(statSync(p).size, data.length);
    assert.equal(sha256(readFileSync(p)), want, 'content on disk differs');
    const back = await sbx.files.read(p, { format: 'bytes' });
    assert.equal(back.length, data.length);
    assert.equal(sha256(back), want, 'content read back differs');
  });

  it('writes an empty file and reads it back empty', T, async () => {
    const p = join(dir, 'empty.txt');
    await sbx.files.write(p, '');
    assert.equal(statSync(p).size, 0);
    assert.equal(await sbx.files.read(p), '');
    assert.equal((await sbx.files.read(p, { format: 'bytes' })).length, 0);
  });

  it('overwriting a file truncates it', T, async () => {
    const p = join(dir, 'trunc.txt');
    writeFileSync(p, 'a much longer original content');
    await sbx.files.write(p, 'short');
    assert.equal(readFileSync(p, 'utf8'), 'short');
  });

  it('creates missing parent directories', T, async () => {
    const p = join(dir, 'new', 'deeper', 'leaf.txt');
    await sbx.files.write(p, 'leaf');
    assert.equal(readFileSync(p, 'utf8'), 'leaf');
    assert.ok(statSync(join(dir, 'new', 'deeper')).isDirectory());
  });

  it('writes several files at once (array form)', T, async () => {
    const a = join(dir, 'multi', 'a.txt');
    const b = join(dir, 'multi', 'sub', 'b.bin');
    const res = await sbx.files.write([
      { path: a, data: 'file A' },
      { path: b, data: all256().buffer },
    ]);
    assert.ok(Array.isArray(res), `expected an array, got ${JSON.stringify(res)}`);
    assert.deepEqual(
      res.map((r) => r.path).sort(),
      [a, b].sort(),
    );
    for (const r of res) assert.equal(r.type, sdk.FileType.FILE);
    assert.equal(readFileSync(a, 'utf8'), 'file A');
    assert.deepEqual(new Uint8Array(readFileSync(b)), all256());
  });

  it('writeFiles() is the same multi-file upload', T, async () => {
    const a = join(dir, 'wf', 'x.txt');
    const b = join(dir, 'wf', 'y.txt');
    const res = await sbx.files.writeFiles([
      { path: a, data: 'X' },
      { path: b, data: 'Y' },
    ]);
    assert.equal(res.length, 2);
    assert.equal(readFileSync(a, 'utf8'), 'X');
    assert.equal(readFileSync(b, 'utf8'), 'Y');
  });

  it('streams an upload as application/octet-stream (ReadableStream data)', T, async () => {
    const p = join(dir, 'octet.bin');
    const data = randomBytes(3 * 1024 * 1024 + 17);
    const stream = new Blob([data]).stream();
    const info = await sbx.files.write(p, stream);
    assert.equal(info.path, p);
    assert.equal(sha256(readFileSync(p)), sha256(data));
  });

  it('useOctetStream with a string body', T, async () => {
    const p = join(dir, 'octet.txt');
    await sbx.files.write(p, 'octet text', { useOctetStream: true });
    assert.equal(readFileSync(p, 'utf8'), 'octet text');
  });

  it('gzip upload (Content-Encoding: gzip) and gzip download', T, async () => {
    const p = join(dir, 'gz.bin');
    const data = Buffer.concat([randomBytes(100_000), Buffer.alloc(100_000, 'a')]);
    await sbx.files.write(p, new Blob([data]), { gzip: true });
    assert.equal(sha256(readFileSync(p)), sha256(data), 'gzip upload stored wrong bytes');
    const back = await sbx.files.read(p, { format: 'bytes', gzip: true });
    assert.equal(sha256(back), sha256(data), 'gzip download returned wrong bytes');
  });

  it("user 'nobody' writes a file owned by nobody", T, async () => {
    const d = join(dir, 'nobody-dir');
    mkdirSync(d);
    chmodSync(d, 0o777);
    const p = join(d, 'owned.txt');
    await sbx.files.write(p, 'mine', { user: 'nobody' });
    const st = statSync(p);
    assert.equal(st.uid, 65534, `owner uid ${st.uid}`);
    assert.equal(await sbx.files.read(p, { user: 'nobody' }), 'mine');
  });

  it("user 'nobody' cannot read a root-only file", T, async () => {
    const p = join(dir, 'secret.txt');
    writeFileSync(p, 'secret', { mode: 0o600 });
    const open = join(dir, 'public.txt');
    writeFileSync(open, 'public', { mode: 0o644 });
    assert.equal(await sbx.files.read(open, { user: 'nobody' }), 'public');
    await assert.rejects(sbx.files.read(p, { user: 'nobody' }), (err) => {
      assert.ok(!(err instanceof sdk.NotFoundError), `wrong error: ${describeErr(err)}`);
      return true;
    });
  });

  it('reading a missing file rejects with a not-found error (404)', T, async () => {
    // Positive control first, so a 404 from a missing route cannot pass this test.
    const ok = join(dir, 'control.txt');
    writeFileSync(ok, 'control');
    assert.equal(await sbx.files.read(ok), 'control');
    await assert.rejects(sbx.files.read(join(dir, 'does-not-exist')), (err) => {
      assert.ok(err instanceof sdk.NotFoundError, `expected NotFoundError, got ${describeErr(err)}`);
      return true;
    });
  });

  it('reading a directory rejects with InvalidArgumentError (400)', T, async () => {
    await assert.rejects(sbx.files.read(dir), (err) => {
      assert.ok(err instanceof sdk.InvalidArgumentError, `expected InvalidArgumentError, got ${describeErr(err)}`);
      return true;
    });
  });

  it('writing onto an existing directory rejects with InvalidArgumentError (400)', T, async () => {
    const d = join(dir, 'is-a-dir');
    mkdirSync(d);
    await assert.rejects(sbx.files.write(d, 'x'), (err) => {
      assert.ok(err instanceof sdk.InvalidArgumentError, `expected InvalidArgumentError, got ${describeErr(err)}`);
      return true;
    });
    assert.ok(statSync(d).isDirectory());
  });

  it('an unknown user is rejected (401)', T, async () => {
    await assert.rejects(sbx.files.read(join(dir, 'given.txt'), { user: 'no-such-user-e2e' }), (err) => {
      assert.ok(err instanceof sdk.AuthenticationError, `expected AuthenticationError, got ${describeErr(err)}`);
      return true;
    });
  });
});
