#include "ktrust/kubernetes/cluster_watcher.h"

#include <httplib.h>

#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "api_client.h"
#include "ktrust/common/log.h"
#include "ktrust/kubernetes/api_objects.h"
#include "ktrust/kubernetes/backoff.h"

namespace ktrust {

using kubernetes_internal::ApiClient;
using nlohmann::json;

struct ClusterWatcher::Shared {
  Shared(KubernetesApiOptions opts, ChangeCallback callback)
      : options(std::move(opts)), on_change(std::move(callback)) {}

  const KubernetesApiOptions options;
  const ChangeCallback on_change;
  // One client per thread: a cpp-httplib client serves one request at a time.
  ApiClient pods_client{options};
  ApiClient namespaces_client{options};

  mutable absl::Mutex mu;
  std::shared_ptr<const ClusterSnapshot> snapshot ABSL_GUARDED_BY(mu) =
      std::make_shared<ClusterSnapshot>();
  ClusterWatcherStatus status ABSL_GUARDED_BY(mu);
  bool stopping ABSL_GUARDED_BY(mu) = false;
  int threads_running ABSL_GUARDED_BY(mu) = 0;

  // Callbacks one at a time, each with a newer snapshot than the last.
  std::mutex callback_mu;
  uint64_t delivered_generation = 0;  // under callback_mu
};

namespace {

// A watch that ends sooner than this without an event is a failure (a
// server that closes at once must not be polled in a tight loop).
constexpr absl::Duration kHealthyWatch = absl::Seconds(1);
// Beyond the watch's own timeout: how long a silent stream may stay open.
constexpr absl::Duration kWatchReadMargin = absl::Seconds(30);
// The body of a refused watch: a Status, a few hundred bytes.
constexpr size_t kMaxWatchErrorBody = 1 << 20;

struct PodTraits {
  using Object = KubernetesPod;
  using Map = KubernetesPodMap;
  static constexpr char kResource[] = "pods";
  static constexpr char kPath[] = "/api/v1/pods";
  static httplib::Params Selector(const KubernetesApiOptions& options) {
    return {{"fieldSelector", "spec.nodeName=" + options.node_name}};
  }
  static size_t MaxObjects(const KubernetesApiOptions& options) { return options.max_pods; }
  static absl::StatusOr<Object> Parse(const json& object, const KubernetesApiOptions& options) {
    auto pod = ParsePod(object, options.max_object_bytes);
    // The field selector asks for this node's pods only; a server that
    // sends others is not believed.
    if (pod.ok() && pod->node_name != options.node_name) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pod is on node \"", pod->node_name, "\", not on this node \"", options.node_name, "\""));
    }
    return pod;
  }
  static std::string KeyOf(const json& object) { return UidOf(object); }
  static const std::string& Key(const Object& pod) { return pod.uid; }
  static KubernetesResourceStatus& StatusIn(ClusterWatcherStatus& status) { return status.pods; }
  static void Store(ClusterSnapshot& snapshot, std::shared_ptr<const Map> map) {
    snapshot.pods = std::move(map);
  }
};

struct NamespaceTraits {
  using Object = KubernetesNamespace;
  using Map = KubernetesNamespaceMap;
  static constexpr char kResource[] = "namespaces";
  static constexpr char kPath[] = "/api/v1/namespaces";
  static httplib::Params Selector(const KubernetesApiOptions&) { return {}; }
  static size_t MaxObjects(const KubernetesApiOptions& options) { return options.max_namespaces; }
  static absl::StatusOr<Object> Parse(const json& object, const KubernetesApiOptions& options) {
    return ParseNamespace(object, options.max_object_bytes);
  }
  static std::string KeyOf(const json& object) { return NameOf(object); }
  static const std::string& Key(const Object& ns) { return ns.name; }
  static KubernetesResourceStatus& StatusIn(ClusterWatcherStatus& status) {
    return status.namespaces;
  }
  static void Store(ClusterSnapshot& snapshot, std::shared_ptr<const Map> map) {
    snapshot.namespaces = std::move(map);
  }
};

// List, then watch, one resource until the watcher stops.
template <typename Traits>
class Reflector {
 public:
  using Object = typename Traits::Object;
  using Map = typename Traits::Map;

  Reflector(ClusterWatcher::Shared& shared, ApiClient& client)
      : shared_(shared),
        client_(client),
        options_(shared.options),
        backoff_(options_.backoff_initial, options_.backoff_max, options_.backoff_jitter),
        random_(std::random_device{}()) {}

  void Run() {
    bool need_list = true;
    while (!Stopping()) {
      if (need_list) {
        if (auto listed = List(); !listed.ok()) {
          if (!Fail(listed)) return;
          continue;
        }
        need_list = false;
      }
      switch (Watch()) {
        case WatchEnd::kResume:
          break;
        case WatchEnd::kRelist:
          need_list = true;
          break;
        case WatchEnd::kStopped:
          return;
      }
    }
  }

 private:
  enum class WatchEnd { kResume, kRelist, kStopped };

  bool Stopping() const {
    absl::MutexLock lock(&shared_.mu);
    return shared_.stopping;
  }

  // Logs, records and waits out the backoff. False when stopping.
  bool Fail(const absl::Status& error) {
    if (absl::IsCancelled(error) && Stopping()) return false;
    absl::Duration delay = backoff_.Next();
    LogEvent(spdlog::level::warn, {{"event", "kubernetes_api_error"},
                                   {"resource", Traits::kResource},
                                   {"error", std::string(error.message())},
                                   {"failures", backoff_.failures()},
                                   {"retry_in_ms", absl::ToInt64Milliseconds(delay)}});
    absl::MutexLock lock(&shared_.mu);
    KubernetesResourceStatus& status = Traits::StatusIn(shared_.status);
    status.last_error = std::string(error.message());
    status.consecutive_failures = backoff_.failures();
    status.last_backoff = delay;
    return !shared_.mu.AwaitWithTimeout(absl::Condition(&shared_.stopping), delay);
  }

  void Skip(absl::string_view what, const absl::Status& why, const json& object) {
    LogEvent(spdlog::level::warn, {{"event", "kubernetes_object_skipped"},
                                   {"resource", Traits::kResource},
                                   {"what", std::string(what)},
                                   {"name", NameOf(object)},
                                   {"uid", UidOf(object)},
                                   {"reason", std::string(why.message())}});
    absl::MutexLock lock(&shared_.mu);
    ++Traits::StatusIn(shared_.status).skipped;
  }

  // Publishes `next` (null: the objects did not change) and the status
  // changes `update` makes, as one new snapshot if anything a reader sees
  // changed; then tells the callback.
  void Publish(std::shared_ptr<const Map> next,
               const std::function<void(KubernetesResourceStatus&)>& update) {
    bool became_synced = false;
    {
      absl::MutexLock lock(&shared_.mu);
      KubernetesResourceStatus& status = Traits::StatusIn(shared_.status);
      status.resource_version = resource_version_;
      if (update) update(status);
      bool synced = shared_.status.pods.listed && shared_.status.namespaces.listed;
      if (next == nullptr && synced == shared_.snapshot->synced) return;
      became_synced = synced && !shared_.snapshot->synced;
      auto snapshot = std::make_shared<ClusterSnapshot>(*shared_.snapshot);
      if (next != nullptr) Traits::Store(*snapshot, std::move(next));
      snapshot->synced = synced;
      snapshot->generation = shared_.snapshot->generation + 1;
      shared_.status.synced = synced;
      shared_.status.generation = snapshot->generation;
      shared_.snapshot = std::move(snapshot);
    }
    if (became_synced) LogEvent(spdlog::level::info, {{"event", "kubernetes_synced"}});
    if (!shared_.on_change) return;
    std::lock_guard<std::mutex> callback_lock(shared_.callback_mu);
    std::shared_ptr<const ClusterSnapshot> latest;
    {
      absl::MutexLock lock(&shared_.mu);
      latest = shared_.snapshot;
    }
    // The other thread may have delivered a newer one meanwhile.
    if (latest->generation <= shared_.delivered_generation) return;
    shared_.delivered_generation = latest->generation;
    shared_.on_change(latest);
  }

  // A complete list, all pages, replacing the state; nothing is kept from a
  // list that fails part-way.
  absl::Status List() {
    Map next;
    size_t bytes = 0;
    std::string continue_token;
    std::string version;
    bool paged = true;
    while (true) {
      httplib::Params params = Traits::Selector(options_);
      if (paged) {
        params.emplace("limit", std::to_string(options_.list_page_size));
        if (!continue_token.empty()) params.emplace("continue", continue_token);
      }
      auto response =
          client_.Get(Traits::kPath, params, options_.request_timeout, options_.max_response_bytes);
      if (!response.ok()) return response.status();
      if (response->status == 410 && !continue_token.empty()) {
        // The continue token expired between pages: a consistent list must
        // start again; unpaged this time, so it cannot expire again.
        LogEvent(spdlog::level::info, {{"event", "kubernetes_list_restarted"},
                                       {"resource", Traits::kResource},
                                       {"reason", "continue token expired"}});
        paged = false;
        continue_token.clear();
        next.clear();
        bytes = 0;
        continue;
      }
      if (response->status != 200) {
        return absl::UnavailableError(
            absl::StrCat("list of ", Traits::kResource, ": ",
                         DescribeHttpError(response->status, response->body)));
      }
      auto page = ParseListPage(response->body);
      if (!page.ok()) {
        return absl::Status(page.status().code(), absl::StrCat("list of ", Traits::kResource, ": ",
                                                               page.status().message()));
      }
      for (const json& item : page->items) {
        auto object = Traits::Parse(item, options_);
        if (!object.ok()) {
          Skip("list item", object.status(), item);
          continue;
        }
        if (next.size() >= Traits::MaxObjects(options_)) {
          return absl::ResourceExhaustedError(absl::StrCat(
              "list of ", Traits::kResource, ": more than ", Traits::MaxObjects(options_)));
        }
        bytes += object->ApproxBytes();
        if (bytes > options_.max_state_bytes) {
          return absl::ResourceExhaustedError(absl::StrCat("list of ", Traits::kResource,
                                                           ": more than ", options_.max_state_bytes,
                                                           " bytes to keep"));
        }
        std::string key = Traits::Key(*object);
        next.insert_or_assign(std::move(key), *std::move(object));
      }
      version = page->resource_version;
      if (page->continue_token.empty()) break;
      continue_token = page->continue_token;
    }
    resource_version_ = version;
    current_bytes_ = bytes;
    const size_t count = next.size();
    std::shared_ptr<const Map> listed = std::make_shared<const Map>(std::move(next));
    const bool changed = *listed != *current_;
    current_ = listed;
    Publish(changed ? listed : nullptr, [](KubernetesResourceStatus& status) {
      status.listed = true;
      ++status.lists;
      status.last_error.clear();
    });
    LogEvent(spdlog::level::info, {{"event", "kubernetes_listed"},
                                   {"resource", Traits::kResource},
                                   {"count", count},
                                   {"resource_version", version}});
    return absl::OkStatus();
  }

  WatchEnd Watch() {
    const int64_t timeout_s = std::uniform_int_distribution<int64_t>(
        absl::ToInt64Seconds(options_.watch_timeout),
        2 * absl::ToInt64Seconds(options_.watch_timeout) - 1)(random_);
    httplib::Params params = Traits::Selector(options_);
    params.emplace("watch", "1");
    params.emplace("allowWatchBookmarks", "true");
    params.emplace("resourceVersion", resource_version_);
    params.emplace("timeoutSeconds", std::to_string(timeout_s));

    const absl::Time started = absl::Now();
    uint64_t events = 0;
    bool oversize = false;
    bool expired = false;
    absl::Status server_error;
    std::string pending;  // the part of the stream after the last newline

    // Handles one line; false stops reading the stream.
    auto handle_line = [&](absl::string_view line) {
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty()) return true;
      auto event = ParseWatchEvent(line);
      if (!event.ok()) {
        Skip("watch event", event.status(), json());
        return true;
      }
      switch (event->type) {
        case WatchEventType::kError: {
          auto status = ParseApiStatus(event->object);
          if (status.ok() && status->code == 410) {
            expired = true;
          } else if (status.ok()) {
            server_error = absl::UnavailableError(
                absl::StrCat("watch of ", Traits::kResource, ": ERROR event ", status->code, " ",
                             status->reason, status->message.empty() ? "" : ": ", status->message));
          } else {
            server_error = absl::UnavailableError(absl::StrCat("watch of ", Traits::kResource,
                                                               ": ERROR event without a Status (",
                                                               status.status().message(), ")"));
          }
          return false;
        }
        case WatchEventType::kBookmark: {
          auto version = ResourceVersionOf(event->object);
          if (!version.ok()) {
            Skip("BOOKMARK event", version.status(), event->object);
            return true;
          }
          resource_version_ = *version;
          ++events;
          Publish(nullptr, nullptr);
          return true;
        }
        default:
          ++events;
          Apply(*event);
          return true;
      }
    };
    auto on_data = [&](absl::string_view chunk) {
      pending.append(chunk.data(), chunk.size());
      size_t begin = 0;
      for (size_t newline; (newline = pending.find('\n', begin)) != std::string::npos;
           begin = newline + 1) {
        if (!handle_line(absl::string_view(pending).substr(begin, newline - begin))) return false;
      }
      pending.erase(0, begin);
      if (pending.size() > options_.max_event_bytes) {
        oversize = true;
        return false;
      }
      return true;
    };

    auto response = client_.Get(Traits::kPath, params, absl::Seconds(timeout_s) + kWatchReadMargin,
                                kMaxWatchErrorBody, on_data);
    const bool healthy = events > 0 || absl::Now() - started >= kHealthyWatch;
    if (!response.ok()) {
      // A dropped stream: resume from the last resourceVersion.
      if (healthy) backoff_.Reset();
      return Fail(response.status()) ? WatchEnd::kResume : WatchEnd::kStopped;
    }
    if (response->status == 410) {
      expired = true;
    } else if (response->status != 200) {
      absl::Status error =
          absl::UnavailableError(absl::StrCat("watch of ", Traits::kResource, ": ",
                                              DescribeHttpError(response->status, response->body)));
      return Fail(error) ? WatchEnd::kResume : WatchEnd::kStopped;
    } else {
      absl::MutexLock lock(&shared_.mu);
      ++Traits::StatusIn(shared_.status).watches;
    }
    if (oversize) {
      // The same event would come again on resume; a relist reads the object
      // from a list instead, where it is refused on its own.
      absl::Status error = absl::ResourceExhaustedError(
          absl::StrCat("watch of ", Traits::kResource, ": an event longer than ",
                       options_.max_event_bytes, " bytes"));
      return Fail(error) ? WatchEnd::kRelist : WatchEnd::kStopped;
    }
    if (expired) {
      LogEvent(spdlog::level::info, {{"event", "kubernetes_watch_expired"},
                                     {"resource", Traits::kResource},
                                     {"resource_version", resource_version_},
                                     {"action", "list again"}});
      if (!healthy && !Fail(absl::UnavailableError(
                          absl::StrCat("watch of ", Traits::kResource, ": resourceVersion ",
                                       resource_version_, " expired at once (410 Gone)")))) {
        return WatchEnd::kStopped;
      }
      if (healthy) backoff_.Reset();
      return WatchEnd::kRelist;
    }
    if (!server_error.ok()) return Fail(server_error) ? WatchEnd::kResume : WatchEnd::kStopped;
    if (!pending.empty() && !response->stopped_by_reader) {
      Skip("watch event", absl::InvalidArgumentError("stream ended inside an event"), json());
    }
    if (!healthy) {
      absl::Status error = absl::UnavailableError(absl::StrCat(
          "watch of ", Traits::kResource, ": the server ended it at once, without an event"));
      return Fail(error) ? WatchEnd::kResume : WatchEnd::kStopped;
    }
    // The watch's timeout: a healthy end, resumed at once.
    backoff_.Reset();
    Publish(nullptr, [](KubernetesResourceStatus& status) {
      status.consecutive_failures = 0;
      status.last_error.clear();
    });
    return WatchEnd::kResume;
  }

  // ADDED, MODIFIED, DELETED. An object that cannot be read is dropped from
  // the state: the agent then refuses that pod rather than trust stale data.
  void Apply(const KubernetesWatchEvent& event) {
    if (auto version = ResourceVersionOf(event.object); version.ok()) {
      resource_version_ = *version;
    }
    const std::string key = Traits::KeyOf(event.object);
    std::optional<Object> object;
    if (event.type != WatchEventType::kDeleted) {
      auto parsed = Traits::Parse(event.object, options_);
      if (parsed.ok()) {
        object = *std::move(parsed);
      } else {
        Skip(absl::StrCat(WatchEventTypeName(event.type), " event"), parsed.status(), event.object);
      }
    } else if (key.empty()) {
      Skip("DELETED event", absl::InvalidArgumentError("object has no key"), event.object);
    }
    const std::string& target = object ? Traits::Key(*object) : key;
    auto existing = current_->find(target);
    if (object && existing != current_->end() && existing->second == *object) {
      Publish(nullptr, nullptr);  // a change to fields the agent does not keep
      return;
    }
    if (object && existing == current_->end() && current_->size() >= Traits::MaxObjects(options_)) {
      Skip(absl::StrCat(WatchEventTypeName(event.type), " event"),
           absl::ResourceExhaustedError(
               absl::StrCat("more than ", Traits::MaxObjects(options_), " ", Traits::kResource)),
           event.object);
      object.reset();
    }
    size_t bytes = current_bytes_;
    if (existing != current_->end()) bytes -= existing->second.ApproxBytes();
    if (object && bytes + object->ApproxBytes() > options_.max_state_bytes) {
      Skip(absl::StrCat(WatchEventTypeName(event.type), " event"),
           absl::ResourceExhaustedError(absl::StrCat("more than ", options_.max_state_bytes,
                                                     " bytes of ", Traits::kResource)),
           event.object);
      object.reset();
    }
    if (!object && existing == current_->end()) {
      Publish(nullptr, nullptr);
      return;
    }
    auto next = std::make_shared<Map>(*current_);
    if (object) {
      bytes += object->ApproxBytes();
      next->insert_or_assign(target, *std::move(object));
    } else {
      next->erase(target);
    }
    current_bytes_ = bytes;
    current_ = next;
    Publish(std::move(next), nullptr);
  }

  ClusterWatcher::Shared& shared_;
  ApiClient& client_;
  const KubernetesApiOptions& options_;
  Backoff backoff_;
  std::minstd_rand random_;
  std::shared_ptr<const Map> current_ = std::make_shared<const Map>();
  size_t current_bytes_ = 0;
  std::string resource_version_;
};

template <typename Traits>
void RunReflector(ClusterWatcher::Shared& shared, ApiClient& client) {
  Reflector<Traits>(shared, client).Run();
  absl::MutexLock lock(&shared.mu);
  --shared.threads_running;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ClusterWatcher>> ClusterWatcher::Create(KubernetesApiOptions options,
                                                                       ChangeCallback on_change) {
  if (auto valid = options.Validate(); !valid.ok()) return valid;
  return std::unique_ptr<ClusterWatcher>(
      new ClusterWatcher(std::make_unique<Shared>(std::move(options), std::move(on_change))));
}

ClusterWatcher::ClusterWatcher(std::unique_ptr<Shared> shared) : shared_(std::move(shared)) {}

ClusterWatcher::~ClusterWatcher() { Stop(); }

void ClusterWatcher::Start() {
  if (started_) return;
  started_ = true;
  {
    absl::MutexLock lock(&shared_->mu);
    if (shared_->stopping) return;
    shared_->threads_running = 2;
  }
  LogEvent(spdlog::level::info, {{"event", "kubernetes_watch_started"},
                                 {"api_server", shared_->options.Endpoint()},
                                 {"node", shared_->options.node_name}});
  pods_thread_ =
      std::thread(RunReflector<PodTraits>, std::ref(*shared_), std::ref(shared_->pods_client));
  namespaces_thread_ = std::thread(RunReflector<NamespaceTraits>, std::ref(*shared_),
                                   std::ref(shared_->namespaces_client));
}

void ClusterWatcher::Stop() {
  {
    absl::MutexLock lock(&shared_->mu);
    shared_->stopping = true;
  }
  // A request still connecting when it is cancelled misses the cancel: try
  // again until both threads are out.
  while (true) {
    shared_->pods_client.Cancel();
    shared_->namespaces_client.Cancel();
    absl::MutexLock lock(&shared_->mu);
    auto done = [this]() ABSL_SHARED_LOCKS_REQUIRED(shared_->mu) {
      return shared_->threads_running == 0;
    };
    if (shared_->mu.AwaitWithTimeout(absl::Condition(&done), absl::Milliseconds(50))) break;
  }
  if (pods_thread_.joinable()) pods_thread_.join();
  if (namespaces_thread_.joinable()) namespaces_thread_.join();
}

std::shared_ptr<const ClusterSnapshot> ClusterWatcher::Snapshot() const {
  absl::MutexLock lock(&shared_->mu);
  return shared_->snapshot;
}

ClusterWatcherStatus ClusterWatcher::Status() const {
  absl::MutexLock lock(&shared_->mu);
  return shared_->status;
}

bool ClusterWatcher::WaitUntil(const std::function<bool(const ClusterWatcherStatus&)>& condition,
                               absl::Duration timeout) const {
  absl::MutexLock lock(&shared_->mu);
  auto holds = [&]() ABSL_SHARED_LOCKS_REQUIRED(shared_->mu) { return condition(shared_->status); };
  return shared_->mu.AwaitWithTimeout(absl::Condition(&holds), timeout);
}

}  // namespace ktrust
