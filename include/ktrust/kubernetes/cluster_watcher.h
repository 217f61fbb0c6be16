// The cluster's view of this node: lists, then watches, the pods whose
// spec.nodeName is this node and all namespaces (their labels decide
// opt-in), and publishes a ClusterSnapshot at every change.
//
// Protocol (https://kubernetes.io/docs/reference/using-api/api-concepts/):
// a list (paged with limit/continue) gives the objects and a resourceVersion;
// a watch from that resourceVersion (watch=1, allowWatchBookmarks=true,
// timeoutSeconds) streams one JSON event per line: ADDED, MODIFIED, DELETED,
// BOOKMARK (only a newer resourceVersion) and ERROR (a Status). Each event
// moves the resourceVersion on. A watch that ends (its timeout, a dropped
// connection) resumes from the last resourceVersion; 410 Gone, as an ERROR
// event or as the HTTP status, means that version is too old: list again,
// and the new list replaces the state (objects gone meanwhile are dropped).
// Failures back off exponentially with jitter (KubernetesApiOptions).
//
// Malformed data never crashes the agent and never makes it claim a state
// it did not read: an unreadable line or object is logged with the reason
// and skipped (an object it was about is dropped, so the agent refuses that
// pod rather than trust stale data); a list that cannot be read completely
// does not count, so `synced` stays false until one can.
//
// Threads: Start() runs one thread per resource (pods, namespaces). The
// change callback runs on them, one call at a time, each with the latest
// published snapshot, newer than the one before (changes that come together
// may arrive as one); it must not block for long or call Stop().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ktrust/kubernetes/api_options.h"
#include "ktrust/kubernetes/cluster_state.h"

namespace ktrust {

// How the list and watch of one resource goes, for status output and tests.
struct KubernetesResourceStatus {
  bool listed = false;           // a complete list has been read
  std::string resource_version;  // where the next watch starts
  uint64_t lists = 0;            // complete lists read (relists included)
  uint64_t watches = 0;          // watch streams the server accepted
  uint64_t skipped = 0;          // malformed events and objects skipped
  // Failures since the last healthy watch (one that delivered an event or
  // lasted a second): what the backoff doubles on.
  int consecutive_failures = 0;
  absl::Duration last_backoff;  // the wait after the last failure
  std::string last_error;       // the last failure; cleared by a complete list or a healthy watch
};

struct ClusterWatcherStatus {
  bool synced = false;
  uint64_t generation = 0;
  KubernetesResourceStatus pods;
  KubernetesResourceStatus namespaces;
};

class ClusterWatcher {
 public:
  using ChangeCallback = std::function<void(const std::shared_ptr<const ClusterSnapshot>&)>;

  // Checks the options; connects only at Start().
  static absl::StatusOr<std::unique_ptr<ClusterWatcher>> Create(KubernetesApiOptions options,
                                                                ChangeCallback on_change = nullptr);
  ~ClusterWatcher();
  ClusterWatcher(const ClusterWatcher&) = delete;
  ClusterWatcher& operator=(const ClusterWatcher&) = delete;

  void Start();
  // Interrupts requests in flight and waits for both threads. Idempotent.
  void Stop();

  // Never null; not synced and empty until the first lists complete.
  std::shared_ptr<const ClusterSnapshot> Snapshot() const;
  ClusterWatcherStatus Status() const;
  // Waits until `condition` holds for the status (checked at every change of
  // it), at most `timeout`. Returns whether it held.
  bool WaitUntil(const std::function<bool(const ClusterWatcherStatus&)>& condition,
                 absl::Duration timeout) const;

  struct Shared;  // the state both threads publish into (cluster_watcher.cc)

 private:
  explicit ClusterWatcher(std::unique_ptr<Shared> shared);

  std::unique_ptr<Shared> shared_;
  std::thread pods_thread_;
  std::thread namespaces_thread_;
  bool started_ = false;
};

}  // namespace ktrust
