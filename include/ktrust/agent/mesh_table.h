// The mesh destinations as the kernel's trie holds them: a pure function of
// the configuration, written by the agent at start and at every reload.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ktrust/bpf/interception_maps.h"
#include "ktrust/common/socket_address.h"
#include "ktrust/config/config.h"

namespace ktrust {

struct MeshTableEntry {
  IpPrefix prefix;
  std::vector<PortRule> rules;  // bypass rules first, then mesh rules
};

// By the prefix's text.
using MeshTable = std::map<std::string, MeshTableEntry>;

// The trie holds one entry per configured prefix, and the kernel consults
// only the longest match: each entry carries the bypass rules and then the
// mesh rules of every configured prefix that contains it, longest first. A
// prefix that ends up with more than KTRUST_MESH_RULES_PER_PREFIX rules is
// an error naming it.
absl::StatusOr<MeshTable> BuildMeshTable(const Config& config);

// What the kernel's trie says about a destination, for the zero-hop
// supervisor, which decides in userspace which connects it takes: the longest
// prefix holding the address, then its first rule holding the port. nullopt:
// not a mesh destination (no prefix, no rule, or not IPv4/IPv6).
std::optional<MeshAction> MeshActionOf(const MeshTable& table, const SocketAddress& destination);

}  // namespace ktrust
