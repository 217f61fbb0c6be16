#include "ktrust/agent/pod_cgroup.h"

#include <algorithm>
#include <optional>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace ktrust {
namespace {

bool IsLowerHex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

bool IsContainerId(absl::string_view text) {
  return text.size() == 64 && std::all_of(text.begin(), text.end(), IsLowerHex);
}

// A pod-level component, as the cgroup driver wrote it.
struct PodComponent {
  std::string uid;
  bool systemd = false;  // a .slice, whose containers are .scope units
};

// What a component claims. nullopt: it claims no pod. An error: it claims
// one (its shape is a pod's) but does not name a valid UID.
absl::StatusOr<std::optional<PodComponent>> ClassifyComponent(absl::string_view component) {
  absl::string_view rest = component;
  // systemd: kubepods-pod<uid>.slice, kubepods-<qos>-pod<uid>.slice; its
  // QoS slices (kubepods-burstable.slice) are not pods.
  if (absl::ConsumePrefix(&rest, "kubepods-") && absl::ConsumeSuffix(&rest, ".slice")) {
    if (rest == "burstable" || rest == "besteffort") return std::nullopt;
    if (!absl::ConsumePrefix(&rest, "burstable-")) absl::ConsumePrefix(&rest, "besteffort-");
    if (!absl::ConsumePrefix(&rest, "pod")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cgroup component ", component,
          " is neither a QoS slice (kubepods-burstable.slice, kubepods-besteffort.slice) nor a "
          "pod slice (kubepods[-<qos>]-pod<UID>.slice)"));
    }
    // systemd escapes the UID's '-' as '_': a '-' here would be a slice
    // separator, so the name was not written by kubelet.
    if (absl::StrContains(rest, '-') || !IsPodUid(absl::StrReplaceAll(rest, {{"_", "-"}}))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pod slice ", component, ": \"", rest,
          "\" is not a pod UID (RFC 4122, lowercase, '_' for '-'; or a static pod's 32 hex)"));
    }
    return PodComponent{absl::StrReplaceAll(rest, {{"_", "-"}}), true};
  }
  // cgroupfs: pod<uid>. Any "pod" followed only by hex digits and '-' claims
  // to be one: refused, not read as "no pod", when it is not a pod UID.
  rest = component;
  if (!absl::ConsumePrefix(&rest, "pod") || rest.empty() ||
      !std::all_of(rest.begin(), rest.end(),
                   [](char c) { return absl::ascii_isxdigit(c) || c == '-'; })) {
    return std::nullopt;
  }
  if (!IsPodUid(rest)) {
    return absl::InvalidArgumentError(
        absl::StrCat("pod cgroup ", component, ": \"", rest,
                     "\" is not a pod UID (RFC 4122, lowercase; or a static pod's 32 hex)"));
  }
  return PodComponent{std::string(rest), false};
}

// The container ID of the component right below a pod's, or why it is none.
absl::StatusOr<std::string> ContainerOf(const PodComponent& pod, absl::string_view component) {
  absl::string_view rest = component;
  if (pod.systemd) {
    if (absl::ConsumeSuffix(&rest, ".scope")) {
      for (absl::string_view runtime : {"cri-containerd-", "crio-", "docker-"}) {
        absl::string_view id = rest;
        if (absl::ConsumePrefix(&id, runtime) && IsContainerId(id)) return std::string(id);
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat("cgroup ", component, " below pod ", pod.uid,
                     " is not a container scope (cri-containerd-, crio- or docker-<64 "
                     "lowercase hex>.scope)"));
  }
  absl::ConsumePrefix(&rest, "crio-");
  if (IsContainerId(rest)) return std::string(rest);
  return absl::InvalidArgumentError(
      absl::StrCat("cgroup ", component, " below pod ", pod.uid,
                   " is not a container (<64 lowercase hex> or crio-<64 lowercase hex>)"));
}

}  // namespace

bool IsPodUid(absl::string_view text) {
  // A static pod's: kubelet's md5 of its manifest, in lowercase hex.
  if (text.size() == 32) return std::all_of(text.begin(), text.end(), IsLowerHex);
  if (text.size() != 36) return false;
  for (size_t i = 0; i < text.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? text[i] != '-' : !IsLowerHex(text[i])) return false;
  }
  return true;
}

absl::StatusOr<PodCgroup> PodOfCgroup(absl::string_view cgroup_path) {
  std::vector<absl::string_view> components = absl::StrSplit(cgroup_path, '/', absl::SkipEmpty());
  std::optional<PodComponent> pod;
  size_t pod_index = 0;
  for (size_t i = 0; i < components.size(); ++i) {
    auto claim = ClassifyComponent(components[i]);
    if (!claim.ok()) return claim.status();
    if (!*claim) continue;
    if (pod) {
      // No kubelet layout nests pods: a second pod component was made below
      // the first by whoever runs there, and names nobody to trust.
      return absl::InvalidArgumentError(
          pod->uid == (*claim)->uid
              ? absl::StrCat("cgroup ", cgroup_path, " names pod ", pod->uid, " twice (",
                             components[pod_index], ", ", components[i], ")")
              : absl::StrCat("cgroup ", cgroup_path, " names two pods: ", pod->uid, " (",
                             components[pod_index], ") and ", (*claim)->uid, " (", components[i],
                             ")"));
    }
    pod = **claim;
    pod_index = i;
  }
  if (!pod) {
    return absl::NotFoundError(absl::StrCat("cgroup ", cgroup_path, " names no pod"));
  }
  PodCgroup result{pod->uid, ""};
  // Deeper cgroups (a container's own nesting) stay in that container.
  if (pod_index + 1 < components.size()) {
    auto container = ContainerOf(*pod, components[pod_index + 1]);
    if (!container.ok()) return container.status();
    result.container_id = *std::move(container);
  }
  return result;
}

}  // namespace ktrust
