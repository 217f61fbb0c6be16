// The Kubernetes API's JSON, read into the agent's types: list responses,
// watch events, Status objects, pods and namespaces. Every function checks
// the shape (types, required fields, the bounds it is given) and says what is
// wrong; none trusts the server.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ktrust/kubernetes/cluster_state.h"

namespace ktrust {

// A metav1.Status: what the API server sends for an error, as a response
// body or as the object of a watch ERROR event.
struct KubernetesApiStatus {
  int code = 0;         // the HTTP status it stands for (410 for an expired resourceVersion)
  std::string reason;   // "Expired", "Gone", "Unauthorized", ...
  std::string message;  // in words, capped in length
};
// An error if `object` is not a Status (kind "Status" with an integer code).
absl::StatusOr<KubernetesApiStatus> ParseApiStatus(const nlohmann::json& object);
// "HTTP 401 Unauthorized: <message>" from a response's status code and body
// (a Status if the server sent one), for logs and last_error.
std::string DescribeHttpError(int http_status, absl::string_view body);

// One page of a list response (PodList, NamespaceList).
struct KubernetesListPage {
  std::string resource_version;  // metadata.resourceVersion: where a watch resumes
  std::string continue_token;    // metadata.continue: more pages follow if not empty
  nlohmann::json items;          // an array (empty for null)
};
absl::StatusOr<KubernetesListPage> ParseListPage(absl::string_view body);

enum class WatchEventType { kAdded, kModified, kDeleted, kBookmark, kError };
absl::string_view WatchEventTypeName(WatchEventType type);

// One line of a watch stream: {"type": ..., "object": {...}}.
struct KubernetesWatchEvent {
  WatchEventType type = WatchEventType::kError;
  nlohmann::json object;
};
absl::StatusOr<KubernetesWatchEvent> ParseWatchEvent(absl::string_view line);

// metadata.resourceVersion of an object (a BOOKMARK's object has little else).
absl::StatusOr<std::string> ResourceVersionOf(const nlohmann::json& object);
// metadata.uid or metadata.name, when present and a string: to drop what an
// unreadable event was about. Empty when absent.
std::string UidOf(const nlohmann::json& object);
std::string NameOf(const nlohmann::json& object);

// A Pod object; refused if a field the agent reads has the wrong type, a
// required one (uid, name, namespace) is missing, or the kept fields exceed
// `max_bytes`.
absl::StatusOr<KubernetesPod> ParsePod(const nlohmann::json& object, size_t max_bytes);
absl::StatusOr<KubernetesNamespace> ParseNamespace(const nlohmann::json& object, size_t max_bytes);

}  // namespace ktrust
