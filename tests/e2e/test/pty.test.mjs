// sandbox.pty.*: process.Process/Start with a PTY, SendInput{pty}, Update (resize), SendSignal.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { CommandExitError, describeErr, newSandbox, sdk, waitFor } from '../lib/sdk.mjs';

const T = { timeout: 30_000 };
const enc = new TextEncoder();
let sbx;
const started = new Set();

before(async () => {
  sbx = await newSandbox();
});

after(async () => {
  for (const pid of started) await sbx.pty.kill(pid).catch(() => {});
});

/** Start a PTY whose output accumulates in term.out (decoded as UTF-8, control bytes kept). */
async function openPty(opts = {}) {
  const dec = new TextDecoder();
  const term = { out: '' };
  term.handle = await sbx.pty.create({
    cols: 80,
    rows: 24,
    timeoutMs: 60_000,
    onData: (d) => {
      term.out += dec.decode(d, { stream: true });
    },
    ...opts,
  });
  started.add(term.handle.pid);
  term.send = (s) => sbx.pty.sendInput(term.handle.pid, enc.encode(s));
  /** Wait until the output after position `from` matches re; returns the match. */
  term.expect = (re, from = 0, ms = 8000) =>
    waitFor(() => term.out.slice(from).match(re), ms, `${re} in PTY output ${JSON.stringify(term.out.slice(-300))}`);
  return term;
}

describe('pty', () => {
  it('create + sendInput: echo $((6*7)) prints 42', T, async () => {
    const term = await openPty();
    assert.ok(term.handle.pid > 0);
    await term.send('echo $((6*7))\n');
    // The echo of the typed line contains "$((6*7))", so only the result line has a bare 42.
    await term.expect(/(^|\n)42\r?\n/);
    assert.equal(await sbx.pty.kill(term.handle.pid), true);
    started.delete(term.handle.pid);
  });

  it('the PTY has the requested size, and resize changes it (stty size)', T, async () => {
    const term = await openPty({ cols: 80, rows: 24 });
    await term.send('stty size\n');
    await term.expect(/(^|\n)24 80\r?\n/);
    const mark = term.out.length;
    await sbx.pty.resize(term.handle.pid, { cols: 120, rows: 40 });
    await term.send('stty size\n');
    await term.expect(/(^|\n)40 120\r?\n/, mark);
    await sbx.pty.kill(term.handle.pid);
    started.delete(term.handle.pid);
  });

  it('the shell is interactive on a terminal with TERM set and UTF-8', T, async () => {
    const term = await openPty();
    await term.send('[ -t 0 ] && echo "tty=yes"; echo "term=$TERM"; printf "\\xe2\\x82\\xac\\n"\n');
    await term.expect(/tty=yes\r?\n/);
    await term.expect(/term=xterm-256color\r?\n/);
    await term.expect(/(^|\n)€\r?\n/);
    await sbx.pty.kill(term.handle.pid);
    started.delete(term.handle.pid);
  });

  it('envs and cwd apply to the PTY shell', T, async () => {
    const term = await openPty({ envs: { E2E_PTY: 'pty-env-ok' }, cwd: '/tmp' });
    await term.send('echo "v=$E2E_PTY"; pwd\n');
    await term.expect(/v=pty-env-ok\r?\n/);
    await term.expect(/(^|\n)\/tmp\r?\n/);
    await sbx.pty.kill(term.handle.pid);
    started.delete(term.handle.pid);
  });

  it('exit in the shell ends the PTY process with its exit code', T, async () => {
    const term = await openPty();
    await term.send('exit 5\n');
    await assert.rejects(term.handle.wait(), (err) => {
      assert.ok(err instanceof CommandExitError, describeErr(err));
      assert.equal(err.exitCode, 5);
      return true;
    });
    started.delete(term.handle.pid);
  });

  it('kill ends the PTY: wait() rejects and the pid leaves the list', T, async () => {
    const term = await openPty();
    await term.send('echo ready\n');
    await term.expect(/(^|\n)ready\r?\n/);
    assert.equal(await sbx.pty.kill(term.handle.pid), true);
    await assert.rejects(term.handle.wait(), CommandExitError);
    started.delete(term.handle.pid);
    const list = await sbx.commands.list();
    assert.ok(!list.some((p) => p.pid === term.handle.pid), 'killed PTY still listed');
    assert.equal(await sbx.pty.kill(term.handle.pid), false);
  });

  it('Ctrl-C (0x03) interrupts the foreground command, the shell survives', T, async () => {
    const term = await openPty();
    await term.send('sleep 30\n');
    await new Promise((r) => setTimeout(r, 300));
    await term.send('\x03');
    const mark = term.out.length;
    await term.send('echo after-int\n');
    await term.expect(/(^|\n)after-int\r?\n/, mark);
    await sbx.pty.kill(term.handle.pid);
    started.delete(term.handle.pid);
  });

  it('resize of an unknown pid rejects with NotFoundError', T, async () => {
    await assert.rejects(sbx.pty.resize(2 ** 31 - 11, { cols: 10, rows: 10 }), (err) => {
      assert.ok(err instanceof sdk.NotFoundError, `expected NotFoundError, got ${describeErr(err)}`);
      return true;
    });
  });
});
