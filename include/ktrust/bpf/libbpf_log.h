// libbpf's diagnostics, including the verifier's log when a program is
// refused, go to the project logger as {"event":"libbpf",...} lines.
#pragma once

namespace ktrust {

// libbpf warnings become warn, its info lines debug, its debug lines trace.
// Process-wide and idempotent.
void RouteLibbpfLogsToSpdlog();

}  // namespace ktrust
