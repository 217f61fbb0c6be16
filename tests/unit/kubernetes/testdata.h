// The recorded API objects of tests/testdata/kubernetes (README there).
#pragma once

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

namespace ktrust::testing {

inline nlohmann::json LoadRecorded(const std::string& file) {
  std::ifstream in(std::string(KTRUST_K8S_TESTDATA) + "/" + file);
  EXPECT_TRUE(in) << file;
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

// The item of a recorded list whose metadata.name is `name`.
inline nlohmann::json RecordedItem(const std::string& file, const std::string& name) {
  const nlohmann::json list = LoadRecorded(file);
  for (const auto& item : list["items"]) {
    if (item["metadata"]["name"] == name) return item;
  }
  ADD_FAILURE() << "no " << name << " in " << file;
  return nlohmann::json::object();
}

// The SPIRE recording's pods, all on node k8s-node-1.
inline constexpr char kSpirePods[] = "spire_pod_list.json";
inline constexpr char kRecordedNode[] = "k8s-node-1";
inline constexpr char kBlogPod[] = "blog-24ck7";
inline constexpr char kBlogPodUid[] = "2c48913c-b29f-11e7-9350-020968147796";
inline constexpr char kRegistryProxyPod[] = "kube-registry-proxy-z41lj";
inline constexpr char kFlannelPod[] = "kube-flannel-ds-gp1g9";
inline constexpr char kMinikubePods[] = "kuard_minikube_pod_list.json";
inline constexpr char kNamespaces[] = "docker_desktop_namespaces.json";

}  // namespace ktrust::testing
