#include "unit/kubernetes/fake_api_server.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace ktrust::testing {

using nlohmann::json;

namespace {

// The object a kind's watch events carry and a list's kind, per resource.
std::string KindOf(const std::string& resource) { return resource == "pods" ? "Pod" : "Namespace"; }

}  // namespace

FakeApiServer::FakeApiServer(const KeyAndCert& identity, std::string token)
    : server_(identity.cert.get(), identity.key.get()), token_(std::move(token)) {
  EXPECT_TRUE(server_.is_valid());
  for (const std::string resource : {"pods", "namespaces"}) {
    server_.Get("/api/v1/" + resource, [this, resource](const httplib::Request& req,
                                                        httplib::Response& res) {
      Request seen{req.path, {}, req.get_header_value("Authorization")};
      for (const auto& [name, value] : req.params) seen.params.emplace(name, value);
      Failure failure;
      uint64_t generation = 0;
      {
        std::lock_guard<std::mutex> lock(mu_);
        requests_.push_back(seen);
        // From the moment a watch is seen it is the current one (a test
        // that saw it may script its stream at once).
        if (seen.watch()) generation = ++watch_generation_[resource];
        changed_.notify_all();
        if (seen.authorization != "Bearer " + token_) {
          res.status = 401;
          res.set_content(StatusObject(401, "Unauthorized", "Unauthorized").dump(),
                          "application/json");
          return;
        }
        Failure& planned = failures_[resource];
        if (planned.count > 0 && planned.watches == seen.watch()) {
          --planned.count;
          failure = planned;
        }
      }
      if (failure.status != 0) {
        res.status = failure.status;
        res.set_content(
            StatusObject(failure.status, failure.status == 410 ? "Expired" : "Failure",
                         failure.status == 410 ? "too old resource version" : "planned failure")
                .dump(),
            "application/json");
        return;
      }
      if (seen.watch()) {
        HandleWatch(resource, generation, res);
      } else {
        HandleList(resource, req, res);
      }
    });
  }
  port_ = server_.bind_to_any_port("127.0.0.1");
  EXPECT_GT(port_, 0);
  thread_ = std::thread([this] {
    server_.listen_after_bind();
    finished_ = true;
  });
}

FakeApiServer::~FakeApiServer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    changed_.notify_all();
  }
  // stop() does nothing until the accept loop has started: repeat it until
  // the loop has ended.
  while (!finished_) {
    server_.stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  thread_.join();
}

void FakeApiServer::SetToken(std::string token) {
  std::lock_guard<std::mutex> lock(mu_);
  token_ = std::move(token);
}

std::string FakeApiServer::KeyOf(const std::string& resource, const json& object) {
  return object["metadata"][resource == "pods" ? "uid" : "name"].get<std::string>();
}

std::string FakeApiServer::StampLocked(json& object) {
  std::string version = std::to_string(++resource_version_);
  object["metadata"]["resourceVersion"] = version;
  return version;
}

void FakeApiServer::PushLocked(const std::string& resource, Step step) {
  streams_[resource].push_back(std::move(step));
  changed_.notify_all();
}

void FakeApiServer::SetObjects(const std::string& resource, std::vector<json> objects) {
  std::lock_guard<std::mutex> lock(mu_);
  for (json& object : objects) StampLocked(object);
  objects_[resource] = std::move(objects);
}

std::string FakeApiServer::Add(const std::string& resource, json object) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string version = StampLocked(object);
  objects_[resource].push_back(object);
  // Watch events carry kind and apiVersion, list items do not.
  object["kind"] = KindOf(resource);
  object["apiVersion"] = "v1";
  PushLocked(resource, {Step::kLine, json{{"type", "ADDED"}, {"object", object}}.dump()});
  return version;
}

std::string FakeApiServer::Modify(const std::string& resource, json object) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string version = StampLocked(object);
  for (json& existing : objects_[resource]) {
    if (KeyOf(resource, existing) == KeyOf(resource, object)) existing = object;
  }
  object["kind"] = KindOf(resource);
  object["apiVersion"] = "v1";
  PushLocked(resource, {Step::kLine, json{{"type", "MODIFIED"}, {"object", object}}.dump()});
  return version;
}

std::string FakeApiServer::Delete(const std::string& resource, const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& objects = objects_[resource];
  auto it = std::find_if(objects.begin(), objects.end(),
                         [&](const json& o) { return KeyOf(resource, o) == key; });
  EXPECT_NE(it, objects.end()) << key;
  if (it == objects.end()) return "";
  json object = *it;
  objects.erase(it);
  // A deleted object comes with the resourceVersion of its deletion.
  std::string version = StampLocked(object);
  object["kind"] = KindOf(resource);
  object["apiVersion"] = "v1";
  PushLocked(resource, {Step::kLine, json{{"type", "DELETED"}, {"object", object}}.dump()});
  return version;
}

std::string FakeApiServer::Bookmark(const std::string& resource) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string version = std::to_string(++resource_version_);
  json object = {{"kind", KindOf(resource)},
                 {"apiVersion", "v1"},
                 {"metadata", {{"resourceVersion", version}}}};
  PushLocked(resource, {Step::kLine, json{{"type", "BOOKMARK"}, {"object", object}}.dump()});
  return version;
}

void FakeApiServer::SendLine(const std::string& resource, std::string line) {
  std::lock_guard<std::mutex> lock(mu_);
  PushLocked(resource, {Step::kLine, std::move(line)});
}

void FakeApiServer::SendExpired(const std::string& resource) {
  std::lock_guard<std::mutex> lock(mu_);
  json status = StatusObject(410, "Expired", "too old resource version");
  PushLocked(resource, {Step::kLine, json{{"type", "ERROR"}, {"object", status}}.dump()});
}

void FakeApiServer::EndWatch(const std::string& resource) {
  std::lock_guard<std::mutex> lock(mu_);
  PushLocked(resource, {Step::kEnd, ""});
}

void FakeApiServer::DropWatch(const std::string& resource) {
  std::lock_guard<std::mutex> lock(mu_);
  PushLocked(resource, {Step::kDrop, ""});
}

void FakeApiServer::FailRequests(const std::string& resource, bool watches, int http_status,
                                 int count) {
  std::lock_guard<std::mutex> lock(mu_);
  failures_[resource] = {watches, http_status, count};
}

void FakeApiServer::ServeListBody(const std::string& resource, std::string body, int count) {
  std::lock_guard<std::mutex> lock(mu_);
  list_bodies_[resource] = {std::move(body), count};
}

void FakeApiServer::HoldLists(const std::string& resource) {
  std::lock_guard<std::mutex> lock(mu_);
  held_lists_[resource] = true;
}

void FakeApiServer::ReleaseLists() {
  std::lock_guard<std::mutex> lock(mu_);
  held_lists_.clear();
  changed_.notify_all();
}

std::vector<FakeApiServer::Request> FakeApiServer::Requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

bool FakeApiServer::WaitForRequests(
    const std::function<bool(const std::vector<Request>&)>& condition,
    std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return changed_.wait_for(lock, timeout, [&] { return condition(requests_); });
}

json FakeApiServer::StatusObject(int code, const std::string& reason, const std::string& message) {
  return {{"kind", "Status"},    {"apiVersion", "v1"}, {"metadata", json::object()},
          {"status", "Failure"}, {"message", message}, {"reason", reason},
          {"code", code}};
}

void FakeApiServer::HandleList(const std::string& resource, const httplib::Request& req,
                               httplib::Response& res) {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait(lock, [&] { return stopping_ || !held_lists_[resource]; });
  if (auto& [body, count] = list_bodies_[resource]; count > 0) {
    --count;
    res.set_content(body, "application/json");
    return;
  }
  const std::vector<json>& objects = objects_[resource];
  size_t offset = 0;
  if (req.has_param("continue")) offset = std::stoul(req.get_param_value("continue"));
  size_t limit = objects.size();
  if (req.has_param("limit")) limit = std::stoul(req.get_param_value("limit"));
  json items = json::array();
  for (size_t i = offset; i < objects.size() && i < offset + limit; ++i) {
    json item = objects[i];
    item.erase("kind");
    item.erase("apiVersion");
    items.push_back(std::move(item));
  }
  json metadata = {{"resourceVersion", std::to_string(resource_version_)}};
  if (offset + limit < objects.size()) metadata["continue"] = std::to_string(offset + limit);
  json list = {{"kind", KindOf(resource) + "List"},
               {"apiVersion", "v1"},
               {"metadata", metadata},
               {"items", items}};
  res.set_content(list.dump(), "application/json");
}

void FakeApiServer::HandleWatch(const std::string& resource, uint64_t generation,
                                httplib::Response& res) {
  res.set_chunked_content_provider(
      "application/json", [this, resource, generation](size_t, httplib::DataSink& sink) {
        std::unique_lock<std::mutex> lock(mu_);
        // A client watches once at a time: an older stream is one it left
        // (a peer's close is not seen until a write fails), and must not
        // take the steps meant for the current one.
        if (generation != watch_generation_[resource]) return false;
        auto& stream = streams_[resource];
        // Idle: called again; a client that went away ends the stream.
        if (!changed_.wait_for(lock, std::chrono::milliseconds(50), [&] {
              return stopping_ || !stream.empty() || generation != watch_generation_[resource];
            })) {
          return sink.is_writable();
        }
        if (stopping_ || generation != watch_generation_[resource]) return false;
        Step step = stream.front();
        stream.pop_front();
        lock.unlock();
        switch (step.kind) {
          case Step::kLine:
            step.line += '\n';
            return sink.write(step.line.data(), step.line.size());
          case Step::kEnd:
            sink.done();
            return true;
          case Step::kDrop:
            return false;
        }
        return false;
      });
}

}  // namespace ktrust::testing
