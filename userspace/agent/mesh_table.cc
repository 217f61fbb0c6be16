#include "ktrust/agent/mesh_table.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ktrust {
namespace {

void AppendRules(const MeshEntry& entry, MeshAction action, std::vector<PortRule>& rules) {
  if (entry.ports.empty()) {
    rules.push_back({1, 65535, action});
    return;
  }
  for (const PortRange& r : entry.ports) rules.push_back({r.first, r.last, action});
}

}  // namespace

absl::StatusOr<MeshTable> BuildMeshTable(const Config& config) {
  std::vector<const MeshEntry*> bypass, mesh;
  for (const auto& e : config.bypass) bypass.push_back(&e);
  for (const auto& e : config.mesh) mesh.push_back(&e);
  auto longest_first = [](const MeshEntry* a, const MeshEntry* b) {
    return a->prefix.mapped_length() > b->prefix.mapped_length();
  };
  std::stable_sort(bypass.begin(), bypass.end(), longest_first);
  std::stable_sort(mesh.begin(), mesh.end(), longest_first);

  MeshTable table;
  for (const auto* group : {&bypass, &mesh}) {
    for (const MeshEntry* e : *group) {
      std::string key = e->prefix.ToString();
      if (table.count(key)) continue;
      std::vector<PortRule> rules;
      for (const MeshEntry* b : bypass) {
        if (b->prefix.Contains(e->prefix)) AppendRules(*b, MeshAction::kBypass, rules);
      }
      for (const MeshEntry* m : mesh) {
        if (m->prefix.Contains(e->prefix)) AppendRules(*m, MeshAction::kRedirect, rules);
      }
      if (rules.size() > KTRUST_MESH_RULES_PER_PREFIX) {
        return absl::InvalidArgumentError(
            absl::StrCat("mesh prefix ", key, " ends up with ", rules.size(),
                         " port rules (its own and those of the prefixes containing it); at most ",
                         KTRUST_MESH_RULES_PER_PREFIX, " fit"));
      }
      table.emplace(key, MeshTableEntry{e->prefix, std::move(rules)});
    }
  }
  return table;
}

std::optional<MeshAction> MeshActionOf(const MeshTable& table, const SocketAddress& destination) {
  auto host = IpPrefix::HostOf(destination);
  if (!host.ok()) return std::nullopt;
  const MeshTableEntry* longest = nullptr;
  for (const auto& [key, entry] : table) {
    if (entry.prefix.Contains(*host) &&
        (longest == nullptr || entry.prefix.mapped_length() > longest->prefix.mapped_length())) {
      longest = &entry;
    }
  }
  if (longest == nullptr) return std::nullopt;
  for (const PortRule& rule : longest->rules) {
    if (destination.port() >= rule.first_port && destination.port() <= rule.last_port) {
      return rule.action;
    }
  }
  return std::nullopt;
}

}  // namespace ktrust
