// sandbox.pty.*: process.Process/Start with a PTY, SendInput{pty}, Update (resize), SendSignal.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { CommandExitError, describeErr, newSandbox, sdk, waitFor } from '../lib/sdk.mjs';

const T = { timeout: 45_000 };
const enc = new TextEncoder();
let sbx;
const started = new Set();

before(async () => {
  sbx = await newSandbox();
});

after(async () => {
  for (const pid of started) await sbx.pty.kill(pid).catch(() => {});
});

/** A line of output, allowing for the terminal's \r and the shell's escape sequences (e.g.
 * bracketed-paste "\x1b[?2004l\r") before it. */
const line = (text) => new RegExp(`(^|[\\r\\n])${text}\\r?\\n`);

/** Start a PTY whose output accumulates in term.out (decoded as UTF-8, control bytes kept), and
 * wait until the shell has evaluated a first command: a login shell's profile can take seconds,
 * and input typed earlier is only echoed by the terminal, while a kill or ^C in the middle of a
 * profile can leave the machine's profile state broken (e.g. pyenv's rehash lock). */
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
    waitFor(
      () => term.out.slice(from).match(re),
      ms,
      `${re} in PTY output ${JSON.stringify(term.out.slice(from).slice(-300))}`,
    );
  await term.send('echo READY_$((40+2))\n');
  await term.expect(line('READY_42'), 0, 25_000);
  term.mark = () => term.out.length;
  return term;
}

describe('pty', () => {
  it('create + sendInput: echo $((6*7)) prints 42', T, async () => {
    const term = await openPty();
    assert.ok(term.handle.pid > 0);
    const m = term.mark();
    await term.send('echo $((6*7))\n');
    // The echo of the typed line contains "$((6*7))", so only the result line has a bare 42.
    await term.expect(line('42'), m);
    assert.equal(await sbx.pty.kill(term.handle.pid), true);
    started.delete(term.handle.pid);
  });

  it('the PTY has the requested size, and resize changes it (stty size)', T, async () => {
    const term = await openPty({ cols: 80, rows: 24 });
    let m = term.mark();
    await term.send('stty size\n');
    await term.expect(line('24 80'), m);
    m = term.mark();
    await sbx.pty.resize(term.handle.pid, { cols: 120, rows: 40 });
    await term.send('stty size\n');
    await term.expect(line('40 120'), m);
    await sbx.pty.kill(term.handle.pid);
    started.delete(term.handle.pid);
  });

  it('the shell is interactive on a terminal with TERM set and UTF-8', T, async () => {
    const term = await openPty();
    const m = term.mark();
    await term.send('[ -t 0 ] && echo "tty=yes"; echo "term=$TERM"; printf "\\xe2\\x82\\xac\\n"\n');
    await term.expect(line('tty=yes'), m);
    await term.expect(line('term=xterm-256color'), m);
    await term.expect(line('€'), m);
    await sbx.pty.kill(term.handle.pid);
    started.delete(term.handle.pid);
  });

  it('envs and cwd apply to the PTY shell', T, async () => {
    const term = await openPty({ envs: { E2E_PTY: 'pty-env-ok' }, cwd: '/tmp' });
    const m = term.mark();
    await term.send('echo "v=$E2E_PTY"; pwd\n');
    await term.expect(line('v=pty-env-ok'), m);
    await term.expect(line('/tmp'), m);
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
    assert.equal(await sbx.pty.kill(term.handle.pid), true);
    await assert.rejects(term.handle.wait(), CommandExitError);
    started.delete(term.handle.pid);
    const list = await sbx.commands.list();
    assert.ok(!list.some((p) => p.pid === term.handle.pid), 'killed PTY still listed');
    assert.equal(await sbx.pty.kill(term.handle.pid), false);
  });

  it('Ctrl-C (0x03) interrupts the foreground command, the shell survives', T, async () => {
    const term = await openPty();
    await term.send('sleep 30; echo not-interrupted\n');
    await new Promise((r) => setTimeout(r, 500));
    const t0 = Date.now();
    await term.send('\x03');
    const m = term.mark();
    await term.send('echo after-int\n');
    await term.expect(line('after-int'), m, 10_000);
    assert.ok(Date.now() - t0 < 10_000);
    assert.ok(!line('not-interrupted').test(term.out), 'sleep was not interrupted');
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
