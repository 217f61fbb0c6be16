// What the agent compares to decide a reload: file times, and the part of
// the configuration a reload cannot change in place.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "ktrust/config/config.h"

namespace ktrust {

// InfinitePast when the file cannot be stat'ed.
absl::Time ModificationTime(const std::string& path);

using FileTimes = std::vector<std::pair<std::string, absl::Time>>;
// The trust bundle and CRL files the configuration names, and the embedded
// CA's files (identity.ca_dir), with their times. Symlinks are followed, so
// a Kubernetes Secret volume's update (a new `..data`) is a change.
// Taken before the files are read: a write landing during the read changes
// the time again, and the next Maintain() reloads.
FileTimes TrustInputTimes(const Config& config);
bool AnyFileChanged(const FileTimes& seen);

// The workloads with inbound listeners: those that serve ports and are not
// `mode: off`, in configuration order.
std::vector<const WorkloadConfig*> ServingWorkloads(const Config& config);

// What a reload cannot change in place: sockets bound at start, the BPF
// setup, logging and the identity source. A difference means a restart.
std::string RestartOnlyShape(const Config& config);

}  // namespace ktrust
