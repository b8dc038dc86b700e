// terminals: the last time any terminal of the container was used.
//
// A terminal session — `kubectl exec -it`, a Jupyter or VS Code terminal,
// SSH — is a pseudo-terminal under /dev/pts whose access and modification
// times move with every keystroke and every line of output. The newest of
// them is the workspace's last terminal activity; without terminals the
// probe cannot tell (`last_activity: null`).
//
// Built with componentize-qjs (QuickJS): synchronous exports, no fetch, no
// TextDecoder; `Date` reads the evaluation's clock.
import { log } from 'workspace-culler:probe/log@0.1.0';
import { run } from 'workspace-culler:probe/exec@0.1.0';

// Prints "<atime> <mtime>" (Unix seconds) of each pseudo-terminal.
const LIST_TERMINALS = `for t in /dev/pts/[0-9]*; do
  [ -e "$t" ] && stat -c '%X %Y' "$t"
done
exit 0`;

export function info() {
  return {
    name: 'terminals',
    version: '0.1.0',
    description: 'The last time a terminal (kubectl exec -it, Jupyter, VS Code, SSH) was used',
    capabilities: ['exec', 'log'],
  };
}

// A probe-error: errors cross the boundary only as `{tag, val}`.
function failure(message) {
  return { tag: 'failure', val: `terminals probe: ${message}` };
}

function parseConfig(text) {
  const config = { timeoutMs: 5000 };
  let given;
  try {
    given = JSON.parse(text || '{}');
  } catch (e) {
    throw failure(`config is invalid: ${e.message}`);
  }
  for (const [key, value] of Object.entries(given)) {
    if (!(key in config)) throw failure(`config is invalid: unknown field "${key}"`);
    if (!Number.isInteger(value) || value <= 0) throw failure(`config is invalid: "${key}" must be a positive integer`);
    config[key] = value;
  }
  return config;
}

// ASCII bytes to text (QuickJS here has no TextDecoder; stat prints ASCII).
function ascii(bytes) {
  let text = '';
  for (const b of bytes) text += String.fromCharCode(b);
  return text;
}

function lastTerminalUse(configText) {
  const config = parseConfig(configText);
  let out;
  try {
    out = run({ argv: ['/bin/sh', '-c', LIST_TERMINALS], stdin: new Uint8Array(0), timeoutMs: config.timeoutMs });
  } catch (e) {
    // A failed import call throws an Error carrying the WIT error in `payload`.
    const error = e && e.payload;
    if (error && error.tag === 'timeout') {
      throw { tag: 'timeout', val: `terminals probe: listing terminals took longer than ${config.timeoutMs} ms` };
    }
    throw failure(`cannot list terminals: ${error ? `${error.tag} ${error.val ?? ''}`.trim() : e}`);
  }
  if (out.exitCode !== 0) {
    throw failure(`listing terminals exited ${out.exitCode}: ${ascii(out.stderr).trim().slice(-200)}`);
  }
  let newest = 0;
  for (const line of ascii(out.stdout).split('\n')) {
    if (line.trim() === '') continue;
    const times = line.trim().split(/\s+/).map(Number);
    if (times.length !== 2 || !times.every(Number.isInteger)) {
      throw failure(`unexpected output from stat: ${JSON.stringify(line)}`);
    }
    newest = Math.max(newest, ...times);
  }
  log('debug', `newest terminal use: ${newest}`);
  if (newest === 0) return { last_activity: null };
  // Never in the future: a clock step in the container must not look like activity to come.
  const at = Math.min(newest * 1000, Date.now());
  return { last_activity: new Date(at).toISOString() };
}

export function probe(workspace, config) {
  let result;
  try {
    result = lastTerminalUse(config);
  } catch (e) {
    // Anything but a probe-error would trap the component.
    if (e && (e.tag === 'failure' || e.tag === 'timeout')) throw e;
    throw failure(String(e && e.stack ? e.stack : e));
  }
  return JSON.stringify(result);
}
