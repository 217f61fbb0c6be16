#include "ktrust/kubernetes/api_objects.h"

#include <arpa/inet.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace ktrust {
namespace {

using nlohmann::json;

// Error messages quote what the server said, capped: a hostile server must
// not fill the log.
constexpr size_t kMaxMessageBytes = 512;

std::string Capped(absl::string_view text) {
  if (text.size() <= kMaxMessageBytes) return std::string(text);
  return absl::StrCat(text.substr(0, kMaxMessageBytes), "...");
}

// object[key] when present and not null; nullptr otherwise. `object` must be
// an object.
const json* Field(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::Status WrongType(absl::string_view where, absl::string_view expected) {
  return absl::InvalidArgumentError(absl::StrCat(where, " is not ", expected));
}

// A string field; `required` ones must be present and not empty.
absl::Status ReadString(const json& object, const char* key, absl::string_view where, bool required,
                        std::string& out) {
  const json* value = Field(object, key);
  if (value == nullptr) {
    if (required) return absl::InvalidArgumentError(absl::StrCat(where, " is missing"));
    return absl::OkStatus();
  }
  if (!value->is_string()) return WrongType(where, "a string");
  out = value->get_ref<const std::string&>();
  if (required && out.empty()) return absl::InvalidArgumentError(absl::StrCat(where, " is empty"));
  return absl::OkStatus();
}

absl::Status ReadBool(const json& object, const char* key, absl::string_view where, bool& out) {
  const json* value = Field(object, key);
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_boolean()) return WrongType(where, "a boolean");
  out = value->get<bool>();
  return absl::OkStatus();
}

// labels and annotations: string to string.
absl::Status ReadStringMap(const json& object, const char* key, absl::string_view where,
                           KubernetesLabels& out) {
  const json* value = Field(object, key);
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_object()) return WrongType(where, "an object");
  for (const auto& [name, entry] : value->items()) {
    if (!entry.is_string())
      return WrongType(absl::StrCat(where, "[", Capped(name), "]"), "a string");
    out.emplace(name, entry.get_ref<const std::string&>());
  }
  return absl::OkStatus();
}

// metadata, which every object has.
absl::StatusOr<const json*> Metadata(const json& object, absl::string_view kind) {
  if (!object.is_object()) return WrongType(kind, "a JSON object");
  if (const json* k = Field(object, "kind");
      k != nullptr && (!k->is_string() || k->get_ref<const std::string&>() != kind)) {
    return absl::InvalidArgumentError(absl::StrCat("object is not a ", kind));
  }
  const json* metadata = Field(object, "metadata");
  if (metadata == nullptr) return absl::InvalidArgumentError("metadata is missing");
  if (!metadata->is_object()) return WrongType("metadata", "an object");
  return metadata;
}

// Pod UIDs are UUIDs (mirror pods of static pods: hex digests); they end up
// in cgroup matching and logs, so nothing else is accepted.
bool IsUid(absl::string_view uid) {
  return !uid.empty() && uid.size() <= 64 && std::all_of(uid.begin(), uid.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-';
  });
}

bool IsIpAddress(const std::string& text) {
  unsigned char buf[16];
  return inet_pton(AF_INET, text.c_str(), buf) == 1 || inet_pton(AF_INET6, text.c_str(), buf) == 1;
}

size_t MapBytes(const KubernetesLabels& map) {
  size_t bytes = 0;
  for (const auto& [key, value] : map) bytes += key.size() + value.size() + 32;
  return bytes;
}

absl::Status ReadContainerPorts(const json& containers, absl::string_view where,
                                bool only_restartable, std::vector<KubernetesContainerPort>& out) {
  if (!containers.is_array()) return WrongType(where, "an array");
  for (size_t i = 0; i < containers.size(); ++i) {
    const json& container = containers[i];
    std::string at = absl::StrCat(where, "[", i, "]");
    if (!container.is_object()) return WrongType(at, "an object");
    if (only_restartable) {
      // A sidecar: an init container that keeps running (restartPolicy Always).
      std::string restart_policy;
      if (auto s =
              ReadString(container, "restartPolicy", at + ".restartPolicy", false, restart_policy);
          !s.ok()) {
        return s;
      }
      if (restart_policy != "Always") continue;
    }
    const json* ports = Field(container, "ports");
    if (ports == nullptr) continue;
    if (!ports->is_array()) return WrongType(at + ".ports", "an array");
    for (size_t j = 0; j < ports->size(); ++j) {
      const json& entry = (*ports)[j];
      std::string port_at = absl::StrCat(at, ".ports[", j, "]");
      if (!entry.is_object()) return WrongType(port_at, "an object");
      KubernetesContainerPort port;
      const json* number = Field(entry, "containerPort");
      if (number == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(port_at, ".containerPort is missing"));
      }
      if (!number->is_number_integer() || number->get<int64_t>() < 1 ||
          number->get<int64_t>() > 65535) {
        return WrongType(port_at + ".containerPort", "a port number (1-65535)");
      }
      port.port = static_cast<uint16_t>(number->get<int64_t>());
      if (auto s = ReadString(entry, "name", port_at + ".name", false, port.name); !s.ok())
        return s;
      if (auto s = ReadString(entry, "protocol", port_at + ".protocol", false, port.protocol);
          !s.ok()) {
        return s;
      }
      // The API server fills in TCP; a missing protocol means the same.
      if (port.protocol.empty()) port.protocol = "TCP";
      if (port.protocol != "TCP" && port.protocol != "UDP" && port.protocol != "SCTP") {
        return absl::InvalidArgumentError(
            absl::StrCat(port_at, ".protocol is not TCP, UDP or SCTP: ", Capped(port.protocol)));
      }
      out.push_back(std::move(port));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<KubernetesApiStatus> ParseApiStatus(const json& object) {
  if (!object.is_object()) return WrongType("Status", "a JSON object");
  const json* kind = Field(object, "kind");
  if (kind == nullptr || !kind->is_string() || *kind != "Status") {
    return absl::InvalidArgumentError("object is not a Status");
  }
  const json* code = Field(object, "code");
  if (code == nullptr || !code->is_number_integer()) {
    return absl::InvalidArgumentError("Status has no integer code");
  }
  KubernetesApiStatus status;
  status.code = static_cast<int>(std::clamp<int64_t>(code->get<int64_t>(), 0, 999));
  std::string text;
  if (ReadString(object, "reason", "Status.reason", false, text).ok()) status.reason = Capped(text);
  text.clear();
  if (ReadString(object, "message", "Status.message", false, text).ok()) {
    status.message = Capped(text);
  }
  return status;
}

std::string DescribeHttpError(int http_status, absl::string_view body) {
  json parsed = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  auto status = ParseApiStatus(parsed);
  if (!status.ok()) return absl::StrCat("HTTP ", http_status, " (no Status in the body)");
  return absl::StrCat("HTTP ", http_status, " ", status->reason.empty() ? "" : status->reason,
                      status->message.empty() ? "" : ": ", status->message);
}

absl::StatusOr<KubernetesListPage> ParseListPage(absl::string_view body) {
  json parsed = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return absl::InvalidArgumentError("list response is not JSON");
  if (!parsed.is_object()) return WrongType("list response", "a JSON object");
  const json* metadata = Field(parsed, "metadata");
  if (metadata == nullptr || !metadata->is_object()) {
    return absl::InvalidArgumentError("list response has no metadata");
  }
  KubernetesListPage page;
  if (auto s = ReadString(*metadata, "resourceVersion", "list metadata.resourceVersion", true,
                          page.resource_version);
      !s.ok()) {
    return s;
  }
  if (auto s =
          ReadString(*metadata, "continue", "list metadata.continue", false, page.continue_token);
      !s.ok()) {
    return s;
  }
  // An empty list may say "items": null.
  if (const json* items = Field(parsed, "items"); items != nullptr) {
    if (!items->is_array()) return WrongType("list items", "an array");
    page.items = std::move(parsed["items"]);
  } else if (parsed.contains("items")) {
    page.items = json::array();
  } else {
    return absl::InvalidArgumentError("list response has no items");
  }
  return page;
}

absl::string_view WatchEventTypeName(WatchEventType type) {
  switch (type) {
    case WatchEventType::kAdded:
      return "ADDED";
    case WatchEventType::kModified:
      return "MODIFIED";
    case WatchEventType::kDeleted:
      return "DELETED";
    case WatchEventType::kBookmark:
      return "BOOKMARK";
    case WatchEventType::kError:
      return "ERROR";
  }
  return "?";
}

absl::StatusOr<KubernetesWatchEvent> ParseWatchEvent(absl::string_view line) {
  json parsed = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return absl::InvalidArgumentError("watch event is not JSON");
  if (!parsed.is_object()) return WrongType("watch event", "a JSON object");
  std::string type;
  if (auto s = ReadString(parsed, "type", "watch event type", true, type); !s.ok()) return s;
  KubernetesWatchEvent event;
  if (type == "ADDED") {
    event.type = WatchEventType::kAdded;
  } else if (type == "MODIFIED") {
    event.type = WatchEventType::kModified;
  } else if (type == "DELETED") {
    event.type = WatchEventType::kDeleted;
  } else if (type == "BOOKMARK") {
    event.type = WatchEventType::kBookmark;
  } else if (type == "ERROR") {
    event.type = WatchEventType::kError;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown watch event type ", Capped(type)));
  }
  const json* object = Field(parsed, "object");
  if (object == nullptr || !object->is_object()) {
    return absl::InvalidArgumentError("watch event has no object");
  }
  event.object = std::move(parsed["object"]);
  return event;
}

absl::StatusOr<std::string> ResourceVersionOf(const json& object) {
  if (!object.is_object()) return WrongType("object", "a JSON object");
  const json* metadata = Field(object, "metadata");
  if (metadata == nullptr || !metadata->is_object()) {
    return absl::InvalidArgumentError("object has no metadata");
  }
  std::string version;
  if (auto s = ReadString(*metadata, "resourceVersion", "metadata.resourceVersion", true, version);
      !s.ok()) {
    return s;
  }
  return version;
}

namespace {
std::string MetadataString(const json& object, const char* key) {
  if (!object.is_object()) return "";
  const json* metadata = Field(object, "metadata");
  if (metadata == nullptr || !metadata->is_object()) return "";
  const json* value = Field(*metadata, key);
  if (value == nullptr || !value->is_string()) return "";
  return Capped(value->get_ref<const std::string&>());
}
}  // namespace

std::string UidOf(const json& object) { return MetadataString(object, "uid"); }
std::string NameOf(const json& object) { return MetadataString(object, "name"); }

absl::StatusOr<KubernetesPod> ParsePod(const json& object, size_t max_bytes) {
  auto metadata = Metadata(object, "Pod");
  if (!metadata.ok()) return metadata.status();
  const json& meta = **metadata;
  KubernetesPod pod;
  if (auto s = ReadString(meta, "uid", "metadata.uid", true, pod.uid); !s.ok()) return s;
  if (!IsUid(pod.uid)) {
    return absl::InvalidArgumentError(absl::StrCat("metadata.uid is not a UID: ", Capped(pod.uid)));
  }
  if (auto s = ReadString(meta, "name", "metadata.name", true, pod.name); !s.ok()) return s;
  if (auto s = ReadString(meta, "namespace", "metadata.namespace", true, pod.namespace_name);
      !s.ok()) {
    return s;
  }
  if (auto s = ReadStringMap(meta, "labels", "metadata.labels", pod.labels); !s.ok()) return s;
  if (auto s = ReadStringMap(meta, "annotations", "metadata.annotations", pod.annotations);
      !s.ok()) {
    return s;
  }
  std::string deletion;
  if (auto s = ReadString(meta, "deletionTimestamp", "metadata.deletionTimestamp", false, deletion);
      !s.ok()) {
    return s;
  }
  pod.deleting = !deletion.empty();

  const json* spec = Field(object, "spec");
  if (spec == nullptr) return absl::InvalidArgumentError("spec is missing");
  if (!spec->is_object()) return WrongType("spec", "an object");
  if (auto s = ReadString(*spec, "serviceAccountName", "spec.serviceAccountName", false,
                          pod.service_account);
      !s.ok()) {
    return s;
  }
  if (auto s = ReadString(*spec, "nodeName", "spec.nodeName", false, pod.node_name); !s.ok()) {
    return s;
  }
  if (auto s = ReadBool(*spec, "hostNetwork", "spec.hostNetwork", pod.host_network); !s.ok()) {
    return s;
  }
  if (const json* containers = Field(*spec, "containers"); containers != nullptr) {
    if (auto s = ReadContainerPorts(*containers, "spec.containers", false, pod.ports); !s.ok()) {
      return s;
    }
  }
  if (const json* init = Field(*spec, "initContainers"); init != nullptr) {
    if (auto s = ReadContainerPorts(*init, "spec.initContainers", true, pod.ports); !s.ok()) {
      return s;
    }
  }

  if (const json* status = Field(object, "status"); status != nullptr) {
    if (!status->is_object()) return WrongType("status", "an object");
    if (auto s = ReadString(*status, "phase", "status.phase", false, pod.phase); !s.ok()) return s;
    if (const json* ips = Field(*status, "podIPs"); ips != nullptr) {
      if (!ips->is_array()) return WrongType("status.podIPs", "an array");
      for (size_t i = 0; i < ips->size(); ++i) {
        std::string at = absl::StrCat("status.podIPs[", i, "]");
        if (!(*ips)[i].is_object()) return WrongType(at, "an object");
        std::string ip;
        if (auto s = ReadString((*ips)[i], "ip", at + ".ip", true, ip); !s.ok()) return s;
        pod.ips.push_back(std::move(ip));
      }
    }
    std::string pod_ip;
    if (auto s = ReadString(*status, "podIP", "status.podIP", false, pod_ip); !s.ok()) return s;
    // Servers before dual stack (1.16) say podIP only; later ones say both,
    // podIPs[0] being podIP.
    if (pod.ips.empty() && !pod_ip.empty()) pod.ips.push_back(pod_ip);
    for (const std::string& ip : pod.ips) {
      if (!IsIpAddress(ip)) {
        return absl::InvalidArgumentError(
            absl::StrCat("status.podIPs holds a non-address: ", Capped(ip)));
      }
    }
  }
  if (pod.ApproxBytes() > max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "pod fields kept would take ", pod.ApproxBytes(), " bytes, over the limit of ", max_bytes));
  }
  return pod;
}

absl::StatusOr<KubernetesNamespace> ParseNamespace(const json& object, size_t max_bytes) {
  auto metadata = Metadata(object, "Namespace");
  if (!metadata.ok()) return metadata.status();
  KubernetesNamespace ns;
  if (auto s = ReadString(**metadata, "name", "metadata.name", true, ns.name); !s.ok()) return s;
  if (auto s = ReadStringMap(**metadata, "labels", "metadata.labels", ns.labels); !s.ok()) return s;
  if (ns.ApproxBytes() > max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("namespace fields kept would take ",
                                                     ns.ApproxBytes(), " bytes, over the limit of ",
                                                     max_bytes));
  }
  return ns;
}

size_t KubernetesPod::ApproxBytes() const {
  size_t bytes = sizeof(*this) + uid.size() + name.size() + namespace_name.size() +
                 service_account.size() + node_name.size() + phase.size() + MapBytes(labels) +
                 MapBytes(annotations);
  for (const auto& ip : ips) bytes += ip.size() + 32;
  for (const auto& port : ports) bytes += sizeof(port) + port.name.size() + port.protocol.size();
  return bytes;
}

size_t KubernetesNamespace::ApproxBytes() const {
  return sizeof(*this) + name.size() + MapBytes(labels);
}

const KubernetesPod* ClusterSnapshot::FindPod(absl::string_view uid) const {
  auto it = pods->find(std::string(uid));
  return it == pods->end() ? nullptr : &it->second;
}

const KubernetesNamespace* ClusterSnapshot::FindNamespace(absl::string_view name) const {
  auto it = namespaces->find(std::string(name));
  return it == namespaces->end() ? nullptr : &it->second;
}

}  // namespace ktrust
