#!/usr/bin/env node
// Checks Kubernetes manifests offline, as an API server would and more:
//   node check_manifests.js MODULES_DIR FILE.yaml
// MODULES_DIR holds the npm packages of tests/k8s/package.json (tools/dev
// setup installs them under build/). Every object of FILE (multi-document
// YAML, such as `kubectl kustomize tools/kubernetes`) gets:
//   1. its kubernetes-models class's validate() (the API's JSON schemas:
//      types, required fields, enums);
//   2. an unknown-field check: validate() accepts misspelled keys, as the
//      schemas do not close their objects. The same compiled validator runs
//      over a proxy of the object that records which keys it reads; a key it
//      never read is no field of that type;
//   3. rules the API server enforces beyond the schemas, that a mistake in
//      these manifests could break (mount propagation, volume names,
//      selectors, privilege escalation);
//   4. ktrust's own rules, across objects: the DaemonSet and the ConfigMap's
//      ktrustd.yaml must agree on paths and ports, and the DaemonSet must keep
//      what docs/kubernetes.md promises (capabilities, surge, probes on the
//      pod's own control socket, the CA Secret's keys, the uninstall step).
// Prints one line per object and per problem; exits 1 on any problem.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');

const [modulesDir, file] = process.argv.slice(2);
if (!modulesDir || !file) {
  console.error('usage: check_manifests.js MODULES_DIR FILE.yaml');
  process.exit(2);
}
const requireModule = createRequire(path.join(path.resolve(modulesDir), 'package.json'));
let YAML;
try {
  YAML = requireModule('yaml');
  requireModule.resolve('kubernetes-models/package.json');
} catch (e) {
  console.error(`check_manifests: the npm packages are not in ${modulesDir} (run tools/dev setup): ${e.message}`);
  process.exit(2);
}

const problems = [];
const problem = (where, what) => problems.push(`${where}: ${what}`);

// A Go-style duration as the agent reads it ("30s", "1m30s", "500ms"), in
// seconds; NaN if it is not one.
function durationSeconds(text) {
  const unit = { h: 3600, m: 60, s: 1, ms: 1e-3, us: 1e-6, ns: 1e-9 };
  let total = 0;
  const rest = String(text).replace(/(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)/g, (_, n, u) => {
    total += parseFloat(n) * unit[u];
    return '';
  });
  return rest === '' && String(text) !== '' ? total : NaN;
}

// The kubernetes-models class of an object: kubernetes-models/<group>/<version>/<Kind>.
function modelOf(obj) {
  const apiVersion = String(obj.apiVersion || '');
  const parts = apiVersion.split('/');
  const modulePath = parts.length === 1 ? `kubernetes-models/${parts[0]}/${obj.kind}`
                                        : `kubernetes-models/${parts[0]}/${parts[1]}/${obj.kind}`;
  let exported;
  try {
    exported = requireModule(modulePath);
  } catch (e) {
    return null;
  }
  return exported[obj.kind] || null;
}

const isPlainObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

// A proxy of `value` (recursively) that records, per object, the keys read.
function recordingProxy(value, seen) {
  if (value === null || typeof value !== 'object') return value;
  const keys = new Set();
  seen.set(value, keys);
  return new Proxy(value, {
    get(target, key, receiver) {
      if (typeof key === 'string') keys.add(key);
      return recordingProxy(Reflect.get(target, key, receiver), seen);
    },
    has(target, key) {
      if (typeof key === 'string') keys.add(key);
      return Reflect.has(target, key);
    },
    getOwnPropertyDescriptor(target, key) {
      if (typeof key === 'string') keys.add(key);
      return Reflect.getOwnPropertyDescriptor(target, key);
    },
    // Iterating the keys is what the validator does for maps (labels, data,
    // resource quantities): every key of a map is a known one.
    ownKeys(target) {
      for (const key of Object.keys(target)) keys.add(key);
      return Reflect.ownKeys(target);
    },
  });
}

// Keys of `obj` (recursively) that the validator never read. Returns the
// number of fields checked.
function findUnknownFields(obj, seen, where, at) {
  let checked = 0;
  if (Array.isArray(obj)) {
    obj.forEach((item, i) => { checked += findUnknownFields(item, seen, where, `${at}[${i}]`); });
    return checked;
  }
  if (!isPlainObject(obj)) return 0;
  const read = seen.get(obj);
  for (const key of Object.keys(obj)) {
    const child = at ? `${at}.${key}` : key;
    if (!read || !read.has(key)) {
      problem(where, `unknown field ${child}`);
      continue;
    }
    checked += 1 + findUnknownFields(obj[key], seen, where, child);
  }
  return checked;
}

// The pod template of a workload object, or null.
function podSpecOf(obj) {
  if (obj.kind === 'Pod') return obj.spec;
  return obj.spec && obj.spec.template && obj.spec.template.spec || null;
}

// What the API server checks beyond the schemas (pkg/apis/core/validation).
function apiServerRules(obj, where) {
  const spec = podSpecOf(obj);
  if (!spec) return;
  const volumes = new Set((spec.volumes || []).map((v) => v.name));
  const containers = [...(spec.initContainers || []), ...(spec.containers || [])];
  for (const c of containers) {
    const sc = c.securityContext || {};
    const caps = (sc.capabilities && sc.capabilities.add) || [];
    for (const m of c.volumeMounts || []) {
      if (!volumes.has(m.name)) problem(where, `container ${c.name} mounts volume ${m.name}, which the pod does not have`);
      if (m.mountPropagation === 'Bidirectional' && sc.privileged !== true) {
        problem(where, `container ${c.name}: mountPropagation Bidirectional on ${m.mountPath} is allowed only in privileged containers`);
      }
    }
    if (sc.allowPrivilegeEscalation === false && (sc.privileged === true || caps.includes('SYS_ADMIN'))) {
      problem(where, `container ${c.name}: allowPrivilegeEscalation false cannot be set with privileged or SYS_ADMIN`);
    }
  }
  if (obj.kind !== 'Pod') {
    const selector = (obj.spec.selector && obj.spec.selector.matchLabels) || {};
    const labels = (obj.spec.template.metadata && obj.spec.template.metadata.labels) || {};
    for (const [k, v] of Object.entries(selector)) {
      if (labels[k] !== v) problem(where, `selector ${k}=${v} does not match the pod template's labels`);
    }
  }
}

// The CA Secret the agent loads from identity.ca_dir: ca.crt, ca.key and
// bundle.crt, PEM, nothing else (a key the agent does not read is a key
// exposed for nothing).
function caSecretRules(secret, namespace, trustDomain) {
  const where = `Secret/${secret.metadata.name}`;
  if (secret.metadata.namespace !== namespace) {
    problem(where, `is in namespace ${secret.metadata.namespace}, the DaemonSet in ${namespace}`);
  }
  if (secret.type !== undefined && secret.type !== 'Opaque') problem(where, `type ${secret.type}, expected Opaque`);
  if (secret.stringData) problem(where, 'stringData: the CA files go in data, as ktrust ca kubernetes-secret writes them');
  const data = secret.data || {};
  const expected = { 'ca.crt': 'CERTIFICATE', 'bundle.crt': 'CERTIFICATE', 'ca.key': 'PRIVATE KEY' };
  if (!sameSet(Object.keys(data), Object.keys(expected))) {
    problem(where, `holds ${JSON.stringify(Object.keys(data).sort())}, the agent reads exactly ${JSON.stringify(Object.keys(expected).sort())}`);
  }
  for (const [key, block] of Object.entries(expected)) {
    if (typeof data[key] !== 'string') continue;
    const text = Buffer.from(data[key], 'base64').toString('latin1');
    if (!new RegExp(`-----BEGIN [A-Z ]*${block}-----`).test(text)) problem(where, `${key} is not a PEM ${block}`);
  }
  // The agent refuses a CA of another trust domain than the ConfigMap's.
  if (typeof data['ca.crt'] === 'string') {
    let sans = '';
    try {
      sans = new crypto.X509Certificate(Buffer.from(data['ca.crt'], 'base64')).subjectAltName || '';
    } catch (e) {
      return problem(where, `ca.crt: ${e.message}`);
    }
    if (!sans.split(', ').includes(`URI:spiffe://${trustDomain}`)) {
      problem(where, `ca.crt is a CA of ${sans || 'no trust domain'}, the ConfigMap's trust_domain is ${trustDomain}`);
    }
  }
}

// tools/kubernetes/uninstall: `ktrustd uninstall` of the agents' own pin
// directory on every node, with no more than it needs.
function uninstallRules(ds, pins) {
  const where = 'DaemonSet/ktrust-uninstall';
  const spec = ds.spec.template.spec;
  if (spec.hostPID !== true) problem(where, 'hostPID must be true (it refuses while a ktrustd run is alive on the node)');
  if (!(spec.tolerations || []).some((t) => t.operator === 'Exists' && !t.key && !t.effect)) {
    problem(where, 'needs a toleration of every taint, as the agent has');
  }
  if (spec.automountServiceAccountToken !== false) problem(where, 'automountServiceAccountToken must be false (it talks to no API server)');
  const step = (spec.initContainers || []).find((c) => c.name === 'uninstall');
  if (!step) return problem(where, 'no init container uninstall');
  const script = (step.command || []).join(' ');
  if (!script.includes(`/usr/sbin/ktrustd uninstall --pin-dir ${pins}\n`)) {
    problem(where, `the uninstall container does not run \`/usr/sbin/ktrustd uninstall --pin-dir ${pins}\` (agent.bpf_pin_dir)`);
  }
  const sc = step.securityContext || {};
  const caps = sc.capabilities || {};
  if (sc.privileged) problem(where, 'the uninstall container must not be privileged');
  if (!sameSet(caps.drop || [], ['ALL']) || !sameSet(caps.add || [], ['BPF', 'NET_ADMIN'])) {
    problem(where, `the uninstall container's capabilities are ${JSON.stringify(caps.add)}, documented: BPF, NET_ADMIN`);
  }
  const mount = (step.volumeMounts || []).find((m) => pins.startsWith(`${m.mountPath}/`));
  const volume = mount && (spec.volumes || []).find((v) => v.name === mount.name);
  if (!volume || !volume.hostPath || volume.hostPath.path !== mount.mountPath) {
    problem(where, `${pins} is not on the host's bpffs in the uninstall container`);
  }
}

function sameSet(a, b) {
  return a.length === b.length && [...a].sort().join() === [...b].sort().join();
}

// ktrust's promises (docs/kubernetes.md), and the agreement between the
// DaemonSet and the configuration it mounts.
function ktrustRules(objects) {
  const find = (kind, name) => objects.find((o) => o.kind === kind && o.metadata && o.metadata.name === name);
  const ds = find('DaemonSet', 'ktrust');
  const cm = find('ConfigMap', 'ktrustd-config');
  const role = find('ClusterRole', 'ktrust-agent');
  if (!ds) return problem('ktrust', 'no DaemonSet ktrust');
  if (!cm) return problem('ktrust', 'no ConfigMap ktrustd-config');
  if (!role) return problem('ktrust', 'no ClusterRole ktrust-agent');
  const where = 'DaemonSet/ktrust';
  const spec = ds.spec.template.spec;

  if (spec.hostPID !== true) problem(where, 'hostPID must be true (cgroup.procs lists host PIDs)');
  if (spec.hostNetwork !== true) problem(where, 'hostNetwork must be true');
  if (spec.priorityClassName !== 'system-node-critical') problem(where, 'priorityClassName must be system-node-critical');
  if (!(spec.tolerations || []).some((t) => t.operator === 'Exists' && !t.key && !t.effect)) {
    problem(where, 'needs a toleration of every taint (operator Exists, no key, no effect)');
  }
  const rolling = ds.spec.updateStrategy && ds.spec.updateStrategy.rollingUpdate || {};
  if (ds.spec.updateStrategy.type !== 'RollingUpdate' || rolling.maxSurge !== 1 || rolling.maxUnavailable !== 0) {
    problem(where, 'updateStrategy must be RollingUpdate with maxSurge 1, maxUnavailable 0');
  }

  const agent = (spec.containers || []).find((c) => c.name === 'agent');
  if (!agent) return problem(where, 'no container agent');
  const sc = agent.securityContext || {};
  const caps = sc.capabilities || {};
  if (sc.privileged) problem(where, 'the agent container must not be privileged');
  if (!sameSet(caps.drop || [], ['ALL'])) problem(where, 'the agent must drop ALL capabilities');
  const expectedCaps = ['BPF', 'PERFMON', 'NET_ADMIN', 'SYS_ADMIN', 'SYS_PTRACE'];
  if (!sameSet(caps.add || [], expectedCaps)) {
    problem(where, `the agent's capabilities are ${JSON.stringify(caps.add)}, documented: ${expectedCaps.join(', ')}`);
  }
  for (const c of [...(spec.initContainers || []), ...spec.containers]) {
    // With hostNetwork a container port is a host port: the surge pod would
    // not fit on its node.
    if ((c.ports || []).length) problem(where, `container ${c.name} declares ports, which blocks maxSurge with hostNetwork`);
    if (!c.resources || !c.resources.requests) problem(where, `container ${c.name} has no resource requests`);
  }
  const nodeName = (agent.env || []).find((e) => e.name === 'NODE_NAME');
  if (!nodeName || !nodeName.valueFrom || !nodeName.valueFrom.fieldRef ||
      nodeName.valueFrom.fieldRef.fieldPath !== 'spec.nodeName') {
    problem(where, 'NODE_NAME must come from the downward API (spec.nodeName)');
  }

  // The configuration the agent reads, from the ConfigMap it mounts.
  const configArg = agent.command.indexOf('--config');
  const configPath = configArg >= 0 ? agent.command[configArg + 1] : '/etc/ktrust/ktrustd.yaml';
  const configFile = path.basename(configPath);
  if (!cm.data || typeof cm.data[configFile] !== 'string') {
    return problem('ConfigMap/ktrustd-config', `has no key ${configFile} (the agent reads ${configPath})`);
  }
  let config;
  try {
    config = YAML.parse(cm.data[configFile]);
  } catch (e) {
    return problem('ConfigMap/ktrustd-config', `${configFile} is not YAML: ${e.message}`);
  }
  const settings = config.agent || {};
  const volumeOf = (name) => (spec.volumes || []).find((v) => v.name === name) || {};
  const mountAt = (dir) => (agent.volumeMounts || []).find((m) => m.mountPath === dir);
  const mountUnder = (file) => (agent.volumeMounts || []).find((m) => file.startsWith(`${m.mountPath}/`));

  const configMount = mountAt(path.dirname(configPath));
  if (!configMount || (volumeOf(configMount.name).configMap || {}).name !== 'ktrustd-config') {
    problem(where, `${path.dirname(configPath)} is not the ConfigMap ktrustd-config`);
  }
  const cgroup = settings.cgroup_root && mountAt(settings.cgroup_root);
  if (!cgroup || (volumeOf(cgroup.name).hostPath || {}).path !== '/sys/fs/cgroup') {
    problem(where, `agent.cgroup_root ${settings.cgroup_root} is not the host's /sys/fs/cgroup mounted in the agent`);
  }
  const pins = settings.bpf_pin_dir || '/sys/fs/bpf/ktrust';
  const pinMount = mountUnder(pins);
  if (!pinMount || (volumeOf(pinMount.name).hostPath || {}).path !== '/sys/fs/bpf') {
    problem(where, `agent.bpf_pin_dir ${pins} is not on the host's /sys/fs/bpf`);
  } else {
    const init = (spec.initContainers || []).find((c) => (c.volumeMounts || []).some(
        (m) => m.name === pinMount.name && m.mountPropagation === 'Bidirectional'));
    if (!init) problem(where, 'no init container mounts bpffs with Bidirectional propagation');
  }
  const socket = settings.control_socket || '/run/ktrust/control.sock';
  const socketMount = mountAt(path.dirname(socket));
  if (!socketMount || !volumeOf(socketMount.name).emptyDir) {
    problem(where, `the control socket's directory ${path.dirname(socket)} is not a per-pod emptyDir`);
  }
  // The handover socket: the new agent of a surge must find the old one's.
  const handover = settings.handover_socket || path.join(path.dirname(socket), 'handover.sock');
  const handoverMount = mountAt(path.dirname(handover));
  if (!handoverMount || !volumeOf(handoverMount.name).hostPath) {
    problem(where, `the handover socket's directory ${path.dirname(handover)} is not a hostPath shared by both agents of a surge`);
  }
  // The kubelet's SIGKILL must not cut the agent's drain short.
  const drain = durationSeconds(settings.drain_timeout || '30s');
  const grace = spec.terminationGracePeriodSeconds === undefined ? 30 : spec.terminationGracePeriodSeconds;
  if (!(grace > drain)) {
    problem(where, `terminationGracePeriodSeconds ${grace} does not outlast agent.drain_timeout (${drain} s): the kubelet would kill a draining agent`);
  }
  const caDir = (config.identity || {}).ca_dir || '/var/lib/ktrust/ca';
  const caMount = mountAt(caDir);
  const caSecret = caMount && volumeOf(caMount.name).secret;
  if (!caSecret) {
    problem(where, `identity.ca_dir ${caDir} is not a mounted Secret`);
  } else {
    // The agent refuses a key its group or others may read (Kubernetes'
    // default is 0644).
    const mode = caSecret.defaultMode === undefined ? 0o644 : caSecret.defaultMode;
    if (mode & 0o077) problem(where, `the CA Secret's defaultMode is 0${mode.toString(8)}; the agent refuses a key others may read (use 0400)`);
    // The Secret itself, when given (`ktrust ca kubernetes-secret`; the
    // kustomization leaves it out on purpose).
    const secret = find('Secret', caSecret.secretName);
    if (secret) caSecretRules(secret, ds.metadata.namespace, config.trust_domain);
  }

  // Probes: `ktrust health` / `ktrust ready` against this pod's own control
  // socket. A TCP probe (httpGet on agent.metrics_address) reaches whichever
  // process holds the node's port: the other agent during a surge, or a
  // local user who bound it while no agent runs.
  const probes = { startupProbe: 'health', livenessProbe: 'health', readinessProbe: 'ready' };
  for (const [kind, expected] of Object.entries(probes)) {
    const probe = agent[kind];
    if (!probe) {
      problem(where, `no ${kind}`);
      continue;
    }
    const command = probe.exec && probe.exec.command;
    if (!Array.isArray(command)) {
      const handler = ['httpGet', 'tcpSocket', 'grpc'].find((k) => probe[k]) || 'no';
      problem(where, `${kind} is a ${handler} probe; it must be an exec of ktrust on the pod's own control socket (a port reaches whichever process holds it)`);
      continue;
    }
    let probeSocket = '/run/ktrust/control.sock';
    let timeout = 3;
    const positional = [];
    for (let i = 1; i < command.length; i++) {
      const arg = command[i];
      if (arg === '--socket') probeSocket = command[++i];
      else if (arg.startsWith('--socket=')) probeSocket = arg.slice('--socket='.length);
      else if (arg === '--timeout') timeout = command[++i];
      else positional.push(arg);
    }
    if (command[0] !== '/usr/bin/ktrust') problem(where, `${kind} runs ${command[0]}, not the image's /usr/bin/ktrust`);
    if (positional.join(' ') !== expected) {
      problem(where, `${kind} runs \`ktrust ${positional.join(' ')}\`, expected \`ktrust ${expected}\``);
    }
    if (probeSocket !== socket) problem(where, `${kind} asks the control socket ${probeSocket}, but agent.control_socket is ${socket}`);
    const seconds = typeof timeout === 'number' ? timeout : /^\d+s$/.test(timeout) ? parseInt(timeout, 10) : NaN;
    if (!(seconds < (probe.timeoutSeconds || 1))) {
      problem(where, `${kind}: ktrust's --timeout (${timeout}) must be below timeoutSeconds (${probe.timeoutSeconds || 1}), or the kubelet kills it before it says why`);
    }
  }

  // Unpinning is a separate, explicit step (tools/kubernetes/uninstall):
  // the agents' own DaemonSet never runs it.
  for (const c of [...(spec.initContainers || []), ...spec.containers]) {
    if ([...(c.command || []), ...(c.args || [])].some((a) => /\buninstall\b/.test(a))) {
      problem(where, `container ${c.name} runs ktrustd uninstall: deleting or updating the agents must never unpin`);
    }
  }
  const uninstall = find('DaemonSet', 'ktrust-uninstall');
  if (uninstall) uninstallRules(uninstall, pins);

  // Read only, only what the agent does (list and watch), only pods and
  // namespaces.
  for (const rule of role.rules || []) {
    const extra = (rule.verbs || []).filter((v) => !['list', 'watch'].includes(v));
    if (extra.length) problem('ClusterRole/ktrust-agent', `verbs beyond list/watch: ${extra.join(', ')}`);
    const resources = (rule.resources || []).filter((r) => !['pods', 'namespaces'].includes(r));
    if (resources.length) problem('ClusterRole/ktrust-agent', `resources beyond pods and namespaces: ${resources.join(', ')}`);
  }
}

const documents = YAML.parseAllDocuments(fs.readFileSync(file, 'utf8'));
const objects = [];
for (const doc of documents) {
  if (doc.errors.length) {
    problem(file, `YAML: ${doc.errors[0].message}`);
    continue;
  }
  const obj = doc.toJSON();
  if (obj !== null) objects.push(obj);
}
if (!objects.length) problem(file, 'no objects');

for (const obj of objects) {
  const where = `${obj.kind}/${obj.metadata && obj.metadata.name}`;
  const Model = modelOf(obj);
  if (!Model) {
    problem(where, `no schema for apiVersion ${obj.apiVersion} kind ${obj.kind}`);
    continue;
  }
  const before = problems.length;
  try {
    new Model(obj).validate();
  } catch (e) {
    problem(where, `schema: ${e.message}`);
  }
  const seen = new Map();
  try {
    Model.prototype.validate.call(recordingProxy(obj, seen));
  } catch (e) {
    // Reported above; here only the keys read matter.
  }
  const fields = findUnknownFields(obj, seen, where, '');
  apiServerRules(obj, where);
  console.log(`${problems.length === before ? 'ok' : 'FAIL'} ${obj.apiVersion} ${where}: ${fields} fields checked`);
}
ktrustRules(objects);

for (const p of problems) console.log(`problem: ${p}`);
console.log(`${objects.length} objects, ${problems.length} problems`);
process.exit(problems.length ? 1 : 0);
