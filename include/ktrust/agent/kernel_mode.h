// The one conversion from a workload's configured mode to what the kernel
// enforces. `off` never reaches the kernel as a mode: such a cgroup is
// classified not enrolled (KTRUST_MODE_NOT_ENROLLED, see cgroup_enrolment.h).
#pragma once

#include "ktrust/bpf/interception_maps.h"
#include "ktrust/config/config.h"

namespace ktrust {

inline EnforcementMode KernelMode(WorkloadMode mode) {
  return mode == WorkloadMode::kPermissive ? EnforcementMode::kPermissive
                                           : EnforcementMode::kEnforce;
}

}  // namespace ktrust
