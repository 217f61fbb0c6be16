#!/usr/bin/env bash
# The agent inside a cgroup namespace of its own, as in a container: its
# /proc/self/cgroup says "/" and the cgroup2 mount's root shows as
# "/../../..", so neither names its real cgroup. With agent.cgroup_root set
# it must find its real cgroup (by its pid in cgroup.procs), never enrol
# itself through a glob that matches it, and enrol and serve the right
# workloads; without agent.cgroup_root, where it cannot tell, it must refuse
# to start and say what to set; and with hostPID (pid 1 in the host's
# cgroup namespace) it must find the root itself through /proc/1/root.
#
#   node a: ktrustd under `unshare --cgroup` in cgroup agent; glob "**"
#           matches every cgroup of the node, the agent's own included;
#           cgroup client: curl
#   node b: ktrustd as usual; cgroup server: python3 http.server :8080
#
# Needs root. Usage: cgroup_namespace_test.sh KTRUST KTRUSTD
set -euo pipefail

ktrust=$1
ktrustd=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
# shellcheck source=two_nodes.sh
source "$here/two_nodes.sh"
trap two_nodes_cleanup EXIT


two_nodes_up "$work" "$ktrust"
mkdir -p "$KT_CG"/a/{client,idle} "$KT_CG"/b/server

write_config a '
  - name: everything
    cgroup: "**"
    spiffe_id: spiffe://{trust_domain}/{node}/{cgroup}' '
  []'
write_config b '
  - name: server
    cgroup: server
    spiffe_id: spiffe://{trust_domain}/{node}/server
    ports: [8080]' '
  - to: server
    ports: [8080]
    from: [spiffe://example.org/node-a/client]'

# Without agent.cgroup_root, in a cgroup namespace: on this host pid 1's
# namespace is unreadable, so the agent cannot tell where it is and must
# refuse (in the VM, where pid 1 is readable and in the host's namespace,
# it finds the host's root through /proc/1/root instead; see
# docs/configuration.md). No workloads and no mesh: an agent that wrongly
# took the whole host hierarchy as its root would change nothing.
cat >"$work/a/noroot.yaml" <<END
version: 1
trust_domain: example.org
identity:
  ca_dir: $work/a/ca
agent:
  node_name: node-a
  bpf_pin_dir: $work/a/bpffs/noroot
  control_socket: $work/a/noroot.sock
  metrics_address: ""
  holder_socket: $work/a/noroot-holder.sock
END
if ! stat -L /proc/1/ns/cgroup >/dev/null 2>&1; then
  set +e
  exec_in a agent timeout 20 unshare --cgroup "$ktrustd" run --config "$work/a/noroot.yaml" \
    >"$work/a/noroot.log" 2>&1
  status=$?
  set -e
  echo "# without cgroup_root: exit $status, $(grep -o '"reason":"[^"]*' "$work/a/noroot.log" | tail -1)"
  check "without agent.cgroup_root in a cgroup namespace the agent refuses to start" \
    test "$status" -ne 0 -a "$status" -ne 124
  check "and says it cannot tell and what to set" \
    grep -q 'cannot tell whether it sees the host.s cgroups.*set agent.cgroup_root' "$work/a/noroot.log"
else
  echo "# pid 1's cgroup namespace is readable here: the refusal case is the unit tests' (cgroup_place_test)"
fi

start_agent b "$ktrustd"
start_agent a "$ktrustd" unshare --cgroup
agent_a=$(pgrep -f "ktrustd run --config $work/a/ktrustd.yaml")
echo "# agent a: pid $agent_a, cgroup namespace $(readlink "/proc/$agent_a/ns/cgroup") (ours: $(readlink /proc/self/ns/cgroup))"
echo "# agent a reads its own cgroup as: $(nsenter -t "$agent_a" -C cat "/proc/$agent_a/cgroup" | grep '^0::')"
echo "# the host reads it as: $(grep '^0::' "/proc/$agent_a/cgroup")"
check "agent a runs in a cgroup namespace of its own" \
  test "$(readlink "/proc/$agent_a/ns/cgroup")" != "$(readlink /proc/self/ns/cgroup)"
place=$(grep '"event":"cgroup_place"' "$work/a/agent.log" | sed 's/^[^{]*//' || true)
echo "# $place"
check "it finds its real cgroup ($KT_CG/a/agent)" \
  test "$(jq -r .own_cgroup <<<"$place" 2>/dev/null)" = "$KT_CG/a/agent"
check "by its pid in that cgroup's cgroup.procs" grep -q 'its pid in .*/a/agent/cgroup.procs' <<<"$place"
check "whose id is the real one" \
  test "$(jq -r .own_cgroup_id <<<"$place" 2>/dev/null)" = "$(stat -c %i "$KT_CG/a/agent")"
check "it says the glob matched its own cgroup and that it is not enrolled" \
  grep -q '"cgroup":"agent".*ktrustd.s own cgroup; the agent is never enrolled' "$work/a/agent.log"

run_in b server "$work/http.log" python3 -u -m http.server --bind 0.0.0.0 --directory "$work" 8080
wait_for "$work/http.log" "Serving HTTP"
echo hello-from-b >"$work/hello.txt"
reply=$(exec_in a client curl -sS --max-time 10 http://10.77.0.2:8080/hello.txt 2>&1 || true)
echo "# client on node a got: $reply"
check "a client in an enrolled cgroup reaches node b's server through the agent" \
  test "$reply" = hello-from-b
check "node b's agent saw node a's client by its SPIFFE ID" wait_for "$work/b/agent.log" \
  '"event":"connection_closed".*"local_id":"spiffe://example.org/node-b/server","peer_id":"spiffe://example.org/node-a/client"' 5

workloads=$(kt a workloads --json)
enrolled=$(jq -r '[.workloads[].cgroup] | sort | join(" ")' <<<"$workloads")
echo "# enrolled on node a: $enrolled"
check "the workloads' cgroups are enrolled" grep -qw client <<<"$enrolled"
check "the idle cgroup too (the glob matches it)" grep -qw idle <<<"$enrolled"
check "the agent's own cgroup is not" lacks agent "$enrolled"

# hostPID, as a DaemonSet runs: pid 1 is the host's init, in the initial
# cgroup namespace, and the agent, in a namespace of its own with no
# agent.cgroup_root, must find the host's root through /proc/1/root. Here
# pid 1 is a shell in new pid and mount namespaces whose only cgroup2 mount
# is node a's subtree (the others are unmounted in that private copy), so
# "the host's root" is node a's and nothing outside it is touched. Agent a
# is stopped first; the new one adopts its pinned programs.
gone() { [[ ! -e /proc/$1 || $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) == Z ]]; }
kill -TERM "$agent_a"
check "agent a exits on SIGTERM" wait_until 20 gone "$agent_a"
grep -v '^  cgroup_root:' "$work/a/ktrustd.yaml" >"$work/a/hostpid.yaml"
mkdir -p "$work/a/hostcg"
# shellcheck disable=SC2016  # the inner script's own variables
run_in a agent "$work/a/hostpid.log" unshare --mount --propagation private --pid --fork sh -c '
  set -e
  mount --bind "$1" "$2"
  for m in $(awk '"'"'{for (i = 7; i < NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") print $5; break }}'"'"' /proc/self/mountinfo); do
    [ "$m" = "$2" ] || umount -l "$m"
  done
  mount -t proc proc /proc
  echo "pid 1 sees cgroup2 at: $(awk '"'"'/ - cgroup2 /{print $5}'"'"' /proc/self/mountinfo)"
  unshare --cgroup "$3" run --config "$4" &
  wait $!' sh "$KT_CG/a" "$work/a/hostcg" "$ktrustd" "$work/a/hostpid.yaml"
wait_for "$work/a/hostpid.log" '"event":"ready"\|startup_failed\|pid 1 sees' 30
wait_for "$work/a/hostpid.log" '"event":"ready"\|startup_failed' 30 || true
grep -m1 'pid 1 sees' "$work/a/hostpid.log" | sed 's/^/# /'
place=$(grep '"event":"cgroup_place"' "$work/a/hostpid.log" | sed 's/^[^{]*//' || true)
echo "# ${place:-no cgroup_place: $(grep -o '"reason":"[^"]*' "$work/a/hostpid.log" | tail -1)}"
check "hostPID without agent.cgroup_root: the root is found through /proc/1/root" \
  test "$(jq -r .cgroup_root <<<"$place" 2>/dev/null)" = "/proc/1/root$work/a/hostcg"
check "and the agent's real cgroup below it, by its pid" \
  test "$(jq -r .own_cgroup <<<"$place" 2>/dev/null)" = "/proc/1/root$work/a/hostcg/agent"
check "with the real id" \
  test "$(jq -r .own_cgroup_id <<<"$place" 2>/dev/null)" = "$(stat -c %i "$KT_CG/a/agent")"
check "because its cgroup namespace is not pid 1's" \
  grep -q 'cgroup namespace of its own' <<<"$place"
reply=$(exec_in a client curl -sS --max-time 10 http://10.77.0.2:8080/hello.txt 2>&1 || true)
check "the client is carried again ($reply)" test "$reply" = hello-from-b
enrolled=$(kt a workloads --json 2>/dev/null | jq -r '[.workloads[].cgroup] | sort | join(" ")' || true)
echo "# enrolled on node a: $enrolled"
check "client and idle are enrolled, the agent's own cgroup is not" test "$enrolled" = "client idle"

two_nodes_results
