// An activity probe for RStudio Server, for the workspace-culler:probe world.
//
// rserver's health check (`/health-check`, enabled with
// `server-health-check-enabled=1`) answers lines of `key: value`, among them
// `active-sessions` and `idle-seconds` (seconds since the last activity in
// any session). The last activity is then "now minus idle-seconds".
import { log } from 'workspace-culler:probe/log@0.1.0';

export function info() {
  return {
    name: 'rstudio',
    version: '0.1.0',
    description: "Reads RStudio Server's health check: seconds since the last activity in any session",
    capabilities: ['http', 'log'],
  };
}

// A probe-error: only `{tag, val}` objects cross the boundary as errors.
class ProbeFailure {
  constructor(message) {
    this.tag = 'failure';
    this.val = `rstudio probe: ${message}`;
  }
}

function parseConfig(text) {
  const config = { portId: 'rstudio', pathPrefix: '' };
  let given;
  try {
    given = JSON.parse(text || '{}');
  } catch (e) {
    throw new ProbeFailure(`config is invalid: ${e.message}`);
  }
  for (const [key, value] of Object.entries(given)) {
    if (!(key in config)) throw new ProbeFailure(`config is invalid: unknown field "${key}"`);
    if (typeof value !== 'string') throw new ProbeFailure(`config is invalid: "${key}" must be a string`);
    config[key] = value;
  }
  return config;
}

// `key: value` lines into an object of strings.
function parseHealth(text) {
  const fields = {};
  for (const line of text.split('\n')) {
    const at = line.indexOf(':');
    if (at > 0) fields[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return fields;
}

async function probeOnce(workspace, configText) {
  const config = parseConfig(configText);
  const port = workspace.ports.find((p) => p.id === config.portId);
  if (!port) {
    const known = workspace.ports.map((p) => p.id).join(', ') || 'none';
    throw new ProbeFailure(`port id "${config.portId}" does not resolve to a port of this workspace (known: ${known})`);
  }
  // An IPv6 address goes in brackets.
  const host = workspace.podIp.includes(':') ? `[${workspace.podIp}]` : workspace.podIp;
  const url = `http://${host}:${port.number}${config.pathPrefix.replace(/\/+$/, '')}/health-check`;
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new ProbeFailure(`GET ${url}: ${e && e.message ? e.message : e}`);
  }
  if (!response.ok) throw new ProbeFailure(`HTTP ${response.status} from ${url}`);
  const health = parseHealth(await response.text());
  log('debug', `health check: ${JSON.stringify(health)}`);
  // rserver always reports its sessions; an answer without them (a sign-in page, another
  // server behind a wrong pathPrefix) says nothing about activity, and must not read as idle.
  if (!('active-sessions' in health)) {
    throw new ProbeFailure(`${url} is not rserver's health check (no active-sessions line)`);
  }
  const idle = Number.parseFloat(health['idle-seconds']);
  if (!Number.isFinite(idle) || idle < 0) {
    // No session yet (or an rserver that does not report it): unknown.
    return { last_activity: null };
  }
  const last = new Date(Date.now() - Math.round(idle * 1000));
  return { last_activity: last.toISOString() };
}

export async function probe(workspace, config) {
  let result;
  try {
    result = await probeOnce(workspace, config);
  } catch (e) {
    // Anything else thrown would trap the component; report it instead.
    if (e instanceof ProbeFailure) throw { tag: e.tag, val: e.val };
    throw { tag: 'failure', val: `rstudio probe: ${e && e.stack ? e.stack : e}` };
  }
  return JSON.stringify(result);
}
