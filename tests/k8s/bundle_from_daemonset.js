#!/usr/bin/env node
// An OCI runtime bundle's config.json for one container of the ktrust
// DaemonSet, derived from the manifest itself (so that what runs under runc
// here is what the kubelet would run, and the two cannot drift):
//
//   node bundle_from_daemonset.js RENDERED.json CONTAINER [options] > config.json
//     --image-config FILE   the image's OCI config (its Env joins the process')
//     --volume NAME=DIR     where a configMap, secret or emptyDir volume's
//                           files are on this machine (what the kubelet makes)
//     --host-root DIR       hostPath volumes are looked up under DIR (tests);
//                           default: the host's own paths
//     --node-name NAME      the downward API's spec.nodeName
//     --cgroups-path PATH   linux.cgroupsPath
//     --service-account DIR the pod's service-account token, ca.crt and
//                           namespace, mounted read-only where the kubelet
//                           mounts them (/var/run/secrets/kubernetes.io/
//                           serviceaccount) unless the pod opts out
//     --kubernetes-service HOST:PORT  KUBERNETES_SERVICE_HOST and _PORT, as
//                           the kubelet sets them for the API server's Service
//
// RENDERED.json: `kubectl kustomize tools/kubernetes` as a JSON array
// (yaml_to_json.js). It translates what a CRI runtime (containerd) does
// with a Linux container's spec: host namespaces, the capability set (the
// runtime's default set, minus drop, plus add; everything when privileged),
// read-only root, mounts with their propagation (HostToContainer is rslave,
// Bidirectional rshared), the default masked and read-only /proc paths of an
// unprivileged container, SELinux type (where SELinux is on), CPU request. It refuses what it
// cannot translate (a RuntimeDefault seccomp or AppArmor profile, an
// unknown volume type, a missing --volume) rather than leave it out.
// No process.rlimits: Kubernetes sets none (the runtime's own are
// inherited), so neither does the bundle.
'use strict';

const fs = require('fs');
const path = require('path');

function fail(message) {
  console.error(`bundle_from_daemonset: ${message}`);
  process.exit(1);
}

const [renderedFile, containerName, ...rest] = process.argv.slice(2);
if (!renderedFile || !containerName) {
  fail('usage: bundle_from_daemonset.js RENDERED.json CONTAINER [--image-config FILE] ' +
       '[--volume NAME=DIR]... [--host-root DIR] [--node-name NAME] [--cgroups-path PATH] ' +
       '[--service-account DIR] [--kubernetes-service HOST:PORT]');
}
const options = { volumes: {}, hostRoot: '', nodeName: '', cgroupsPath: '', imageConfig: null,
  serviceAccount: '', kubernetesService: null };
for (let i = 0; i < rest.length; i += 2) {
  const [flag, value] = [rest[i], rest[i + 1]];
  if (value === undefined) fail(`${flag} needs a value`);
  if (flag === '--volume') {
    const eq = value.indexOf('=');
    if (eq <= 0) fail(`--volume ${value}: expected NAME=DIR`);
    options.volumes[value.slice(0, eq)] = path.resolve(value.slice(eq + 1));
  } else if (flag === '--host-root') {
    options.hostRoot = path.resolve(value);
  } else if (flag === '--node-name') {
    options.nodeName = value;
  } else if (flag === '--cgroups-path') {
    options.cgroupsPath = value;
  } else if (flag === '--service-account') {
    options.serviceAccount = path.resolve(value);
  } else if (flag === '--kubernetes-service') {
    const m = /^([^:]+|\[[0-9a-fA-F:]+\]):(\d+)$/.exec(value);
    if (!m) fail(`--kubernetes-service ${value}: expected HOST:PORT`);
    options.kubernetesService = { host: m[1].replace(/^\[|\]$/g, ''), port: m[2] };
  } else if (flag === '--image-config') {
    options.imageConfig = JSON.parse(fs.readFileSync(value, 'utf8'));
  } else {
    fail(`unknown option ${flag}`);
  }
}

const objects = JSON.parse(fs.readFileSync(renderedFile, 'utf8'));
const ds = objects.find((o) => o.kind === 'DaemonSet' && o.metadata.name === 'ktrust');
if (!ds) fail(`${renderedFile} has no DaemonSet ktrust`);
const pod = ds.spec.template.spec;
const container = [...(pod.initContainers || []), ...pod.containers].find((c) => c.name === containerName);
if (!container) fail(`the DaemonSet has no container ${containerName}`);
const sc = container.securityContext || {};
const podSc = pod.securityContext || {};
const privileged = sc.privileged === true;

// The capabilities a CRI runtime (containerd, CRI-O) gives a container that
// asks for none.
const RUNTIME_DEFAULT_CAPS = ['CHOWN', 'DAC_OVERRIDE', 'FSETID', 'FOWNER', 'MKNOD', 'NET_RAW', 'SETGID',
  'SETUID', 'SETFCAP', 'SETPCAP', 'NET_BIND_SERVICE', 'SYS_CHROOT', 'KILL', 'AUDIT_WRITE'];
// Every capability of Linux 5.9 and later, in bit order (CAP_CHECKPOINT_RESTORE is 40).
const ALL_CAPS = ['CHOWN', 'DAC_OVERRIDE', 'DAC_READ_SEARCH', 'FOWNER', 'FSETID', 'KILL', 'SETGID',
  'SETUID', 'SETPCAP', 'LINUX_IMMUTABLE', 'NET_BIND_SERVICE', 'NET_BROADCAST', 'NET_ADMIN', 'NET_RAW',
  'IPC_LOCK', 'IPC_OWNER', 'SYS_MODULE', 'SYS_RAWIO', 'SYS_CHROOT', 'SYS_PTRACE', 'SYS_PACCT',
  'SYS_ADMIN', 'SYS_BOOT', 'SYS_NICE', 'SYS_RESOURCE', 'SYS_TIME', 'SYS_TTY_CONFIG', 'MKNOD', 'LEASE',
  'AUDIT_WRITE', 'AUDIT_CONTROL', 'SETFCAP', 'MAC_OVERRIDE', 'MAC_ADMIN', 'SYSLOG', 'WAKE_ALARM',
  'BLOCK_SUSPEND', 'AUDIT_READ', 'PERFMON', 'BPF', 'CHECKPOINT_RESTORE'];

// A privileged container gets what the runtime itself may hold: its
// bounding set (containerd does the same), which in a sandbox lacks some.
function runtimeBoundingSet() {
  const line = fs.readFileSync('/proc/self/status', 'utf8').split('\n').find((l) => l.startsWith('CapBnd:'));
  const bits = BigInt(`0x${line.split(/\s+/)[1]}`);
  return ALL_CAPS.filter((_, bit) => (bits >> BigInt(bit)) & 1n);
}

function capabilities() {
  if (privileged) return runtimeBoundingSet();
  const caps = sc.capabilities || {};
  const drop = (caps.drop || []).map((c) => c.replace(/^CAP_/, ''));
  let set = drop.includes('ALL') ? [] : RUNTIME_DEFAULT_CAPS.filter((c) => !drop.includes(c));
  for (const c of caps.add || []) {
    const name = c.replace(/^CAP_/, '');
    if (!ALL_CAPS.includes(name)) fail(`container ${containerName}: unknown capability ${c}`);
    if (!set.includes(name)) set = [...set, name];
  }
  return set;
}

function env() {
  const out = [...((options.imageConfig && options.imageConfig.config && options.imageConfig.config.Env) || [])];
  for (const e of container.env || []) {
    let value = e.value;
    if (e.valueFrom) {
      const field = e.valueFrom.fieldRef && e.valueFrom.fieldRef.fieldPath;
      if (field !== 'spec.nodeName') fail(`env ${e.name}: only fieldRef spec.nodeName is translated`);
      if (!options.nodeName) fail(`env ${e.name} needs --node-name`);
      value = options.nodeName;
    }
    out.push(`${e.name}=${value === undefined ? '' : value}`);
  }
  // The kubelet's service environment variables for the API server (only
  // these two: the agent reads nothing else of it).
  if (options.kubernetesService) {
    out.push(`KUBERNETES_SERVICE_HOST=${options.kubernetesService.host}`,
             `KUBERNETES_SERVICE_PORT=${options.kubernetesService.port}`);
  }
  return out;
}

// "16Mi" -> "16m" (tmpfs takes k, m, g as powers of 1024).
function tmpfsSize(quantity) {
  const m = /^(\d+)(Ki|Mi|Gi)$/.exec(String(quantity));
  if (!m) fail(`sizeLimit ${quantity}: only Ki, Mi and Gi are translated`);
  return `size=${m[1]}${m[2][0].toLowerCase()}`;
}

const PROPAGATION = { undefined: 'rprivate', None: 'rprivate', HostToContainer: 'rslave', Bidirectional: 'rshared' };

function mounts() {
  const ro = privileged ? [] : ['ro'];
  const out = [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts',
      options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', ...ro] },
    { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', ...ro] },
  ];
  const volumes = new Map((pod.volumes || []).map((v) => [v.name, v]));
  for (const m of container.volumeMounts || []) {
    const volume = volumes.get(m.name);
    if (!volume) fail(`volumeMount ${m.name}: no such volume`);
    if (m.subPath) fail(`volumeMount ${m.name}: subPath is not translated`);
    const propagation = PROPAGATION[m.mountPropagation];
    if (!propagation) fail(`volumeMount ${m.name}: mountPropagation ${m.mountPropagation} is not translated`);
    if (m.mountPropagation === 'Bidirectional' && !privileged) {
      fail(`volumeMount ${m.name}: Bidirectional needs a privileged container`);
    }
    const readOnly = m.readOnly ? ['ro'] : [];
    let source;
    if (volume.hostPath) {
      source = path.join(options.hostRoot || '/', volume.hostPath.path);
      const type = volume.hostPath.type || '';
      if (type === 'DirectoryOrCreate') {
        fs.mkdirSync(source, { recursive: true, mode: 0o755 });  // as the kubelet does
      } else if (type === 'Directory' && !(fs.existsSync(source) && fs.statSync(source).isDirectory())) {
        fail(`hostPath ${source} (volume ${m.name}) is not a directory`);
      } else if (type !== 'Directory' && type !== 'DirectoryOrCreate') {
        fail(`hostPath type ${type || '""'} (volume ${m.name}) is not translated`);
      }
    } else if (volume.configMap || volume.secret || volume.emptyDir) {
      if (volume.emptyDir && volume.emptyDir.medium === 'Memory' && !options.volumes[m.name]) {
        out.push({ destination: m.mountPath, type: 'tmpfs', source: 'tmpfs',
                   options: ['nosuid', 'nodev', 'mode=755', tmpfsSize(volume.emptyDir.sizeLimit || '64Mi'), ...readOnly] });
        continue;
      }
      source = options.volumes[m.name];
      if (!source) fail(`volume ${m.name} needs --volume ${m.name}=DIR (its files on this machine)`);
    } else {
      fail(`volume ${m.name}: only hostPath, configMap, secret and emptyDir are translated`);
    }
    out.push({ destination: m.mountPath, type: 'bind', source, options: ['rbind', propagation, ...readOnly] });
  }
  // The service account's token volume, which the kubelet adds to every
  // container of a pod that does not opt out.
  const automount = pod.automountServiceAccountToken !== false;
  if (options.serviceAccount) {
    if (!automount) fail('--service-account: the pod sets automountServiceAccountToken: false');
    out.push({ destination: '/var/run/secrets/kubernetes.io/serviceaccount', type: 'bind',
               source: options.serviceAccount, options: ['rbind', 'rprivate', 'ro'] });
  }
  return out;
}

function profiles(ociProcess) {
  const seccomp = sc.seccompProfile || podSc.seccompProfile;
  const apparmor = sc.appArmorProfile || podSc.appArmorProfile;
  // Unconfined (what the DaemonSet says) is the absence of a profile.
  if (!privileged && (!seccomp || seccomp.type !== 'Unconfined')) {
    fail(`container ${containerName}: seccomp ${JSON.stringify(seccomp)} is not translated (Unconfined is)`);
  }
  if (!privileged && (!apparmor || apparmor.type !== 'Unconfined')) {
    fail(`container ${containerName}: AppArmor ${JSON.stringify(apparmor)} is not translated (Unconfined is)`);
  }
  // As the CRI runtime does: a label only where SELinux is on (runc refuses
  // one elsewhere).
  const selinux = sc.seLinuxOptions || podSc.seLinuxOptions;
  if (selinux && selinux.type && fs.existsSync('/sys/fs/selinux/enforce')) {
    ociProcess.selinuxLabel = `${selinux.user || 'system_u'}:${selinux.role || 'system_r'}:${selinux.type}:${selinux.level || 's0'}`;
  }
}

// CPU request in millicores -> cgroup v1 shares (the kubelet's formula,
// which runc turns into a cgroup v2 weight).
function cpuShares() {
  const cpu = container.resources && container.resources.requests && container.resources.requests.cpu;
  if (cpu === undefined) return undefined;
  const m = /^(\d+)(m?)$/.exec(String(cpu));
  if (!m) fail(`cpu request ${cpu} is not translated`);
  const millis = m[2] ? Number(m[1]) : Number(m[1]) * 1000;
  return Math.max(2, Math.floor((millis * 1024) / 1000));
}

const caps = capabilities().map((c) => `CAP_${c}`);
const ociProcess = {
  terminal: false,
  user: { uid: sc.runAsUser ?? podSc.runAsUser ?? 0, gid: sc.runAsGroup ?? podSc.runAsGroup ?? 0 },
  args: [...(container.command || []), ...(container.args || [])],
  env: env(),
  cwd: container.workingDir || '/',
  capabilities: { bounding: caps, effective: caps, permitted: caps },
  noNewPrivileges: sc.allowPrivilegeEscalation === false,
};
if (!ociProcess.args.length) fail(`container ${containerName} has no command (the image's is not read)`);
profiles(ociProcess);

const namespaces = [{ type: 'mount' }, { type: 'ipc' }, { type: 'cgroup' }];
if (!pod.hostNetwork) namespaces.push({ type: 'network' }, { type: 'uts' });  // hostNetwork shares the host's UTS too
if (!pod.hostPID) namespaces.push({ type: 'pid' });

const allMounts = mounts();
const linux = {
  namespaces,
  // rshared when this container propagates mounts to the host, as the CRI
  // runtime does; rslave otherwise, so host mounts still reach it.
  rootfsPropagation: allMounts.some((m) => (m.options || []).includes('rshared')) ? 'rshared' : 'rslave',
};
if (options.cgroupsPath) linux.cgroupsPath = options.cgroupsPath;
const shares = cpuShares();
if (shares !== undefined) linux.resources = { cpu: { shares } };
if (!privileged) {
  linux.maskedPaths = ['/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats',
    '/proc/timer_list', '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/sys/firmware',
    '/sys/devices/virtual/powercap'];
  linux.readonlyPaths = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];
}

const config = {
  ociVersion: '1.0.2',
  process: ociProcess,
  root: { path: 'rootfs', readonly: sc.readOnlyRootFilesystem === true },
  mounts: allMounts,
  linux,
  annotations: { 'io.ktrust.derived-from': `DaemonSet/${ds.metadata.name} container ${containerName}` },
};
console.log(JSON.stringify(config, null, 2));
