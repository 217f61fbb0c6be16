// A fake API server replaying recorded objects. It serves GET /api/v1/pods
// and /api/v1/namespaces over HTTPS (a test CA's certificate for 127.0.0.1)
// and checks the bearer token, in the shapes the Kubernetes API concepts
// describe (https://kubernetes.io/docs/reference/using-api/api-concepts/):
// lists (paged with limit/continue) carry metadata.resourceVersion; a watch
// (watch=1) streams one JSON event per line over chunked encoding; errors
// are Status objects. The objects are recorded ones (tests/testdata/
// kubernetes); a test scripts what happens to them, and the server stamps
// resourceVersions from one counter, as the API server does with etcd's.
// It does not select by field: tests give it this node's pods only.
#pragma once

#include <httplib.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "unit/test_pki.h"

namespace ktrust::testing {

class FakeApiServer {
 public:
  struct Request {
    std::string path;
    std::multimap<std::string, std::string> params;
    std::string authorization;
    bool watch() const { return params.count("watch") > 0; }
    std::string param(const std::string& name) const {
      auto it = params.find(name);
      return it == params.end() ? "" : it->second;
    }
  };

  // Serves with `identity` (its certificate must name 127.0.0.1) and
  // accepts "Bearer <token>" only.
  FakeApiServer(const KeyAndCert& identity, std::string token);
  ~FakeApiServer();

  int port() const { return port_; }
  void SetToken(std::string token);

  // The objects a list returns ("pods" or "namespaces"), each stamped with a
  // new resourceVersion, without a watch event: what a watcher misses while
  // it is away.
  void SetObjects(const std::string& resource, std::vector<nlohmann::json> objects);
  // Changes a watch streams: ADDED, MODIFIED (the object replaces the one of
  // the same key) and DELETED (by key: uid for pods, name for namespaces).
  // Each returns the resourceVersion it stamped.
  std::string Add(const std::string& resource, nlohmann::json object);
  std::string Modify(const std::string& resource, nlohmann::json object);
  std::string Delete(const std::string& resource, const std::string& key);
  // A BOOKMARK at a new resourceVersion, which it returns.
  std::string Bookmark(const std::string& resource);
  // A line as is (for malformed events).
  void SendLine(const std::string& resource, std::string line);
  // An ERROR event whose Status is 410 Expired.
  void SendExpired(const std::string& resource);
  // Ends the current watch cleanly (as its timeoutSeconds does).
  void EndWatch(const std::string& resource);
  // Cuts the current watch's connection in the middle of the stream.
  void DropWatch(const std::string& resource);
  // The next `count` requests for `resource` (list or watch, as `watches`
  // says) get `http_status` and a Status body.
  void FailRequests(const std::string& resource, bool watches, int http_status, int count);
  // The next `count` lists of `resource` answer 200 with `body` as is.
  void ServeListBody(const std::string& resource, std::string body, int count);
  // Holds list requests for `resource` until ReleaseLists().
  void HoldLists(const std::string& resource);
  void ReleaseLists();

  std::vector<Request> Requests() const;
  // Waits until `condition` holds for the requests received so far.
  bool WaitForRequests(const std::function<bool(const std::vector<Request>&)>& condition,
                       std::chrono::milliseconds timeout) const;

  static std::string KeyOf(const std::string& resource, const nlohmann::json& object);

 private:
  struct Step {
    enum Kind { kLine, kEnd, kDrop } kind = kLine;
    std::string line;
  };
  struct Failure {
    bool watches = false;
    int status = 0;
    int count = 0;
  };

  std::string StampLocked(nlohmann::json& object);
  void PushLocked(const std::string& resource, Step step);
  void HandleList(const std::string& resource, const httplib::Request& req, httplib::Response& res);
  void HandleWatch(const std::string& resource, uint64_t generation, httplib::Response& res);
  static nlohmann::json StatusObject(int code, const std::string& reason,
                                     const std::string& message);

  httplib::SSLServer server_;
  std::thread thread_;
  std::atomic<bool> finished_{false};
  int port_ = 0;

  mutable std::mutex mu_;
  mutable std::condition_variable changed_;
  bool stopping_ = false;
  std::string token_;
  uint64_t resource_version_ = 1000;
  std::map<std::string, std::vector<nlohmann::json>> objects_;
  std::map<std::string, std::deque<Step>> streams_;
  std::map<std::string, uint64_t> watch_generation_;  // of the newest watch per resource
  std::map<std::string, Failure> failures_;
  std::map<std::string, bool> held_lists_;
  std::map<std::string, std::pair<std::string, int>> list_bodies_;
  std::vector<Request> requests_;
};

}  // namespace ktrust::testing
