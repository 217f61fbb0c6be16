// How the live-agent commands print what the agent reports: pure functions
// from views to text, so tests need no agent. Empty fields print as "-".
#pragma once

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ktrust/control/methods.h"
#include "ktrust/control/views.h"

namespace ktrust::cli {

// Text a peer or the agent chose (SPIFFE IDs, reasons, names), made safe to
// print: C0 and C1 controls, DEL, bytes that are not UTF-8 and the Unicode
// bidirectional overrides become visible escapes ("\x1b", "\u009b",
// "\u202e"), so nothing can move the cursor, clear the screen, start a line
// of its own or reorder what follows. Everything else, '\' included (systemd
// names are full of "\x2d"), is kept. Every Render* function applies it to
// each value it prints; JSON output is escaped by the JSON writer instead.
std::string EscapeForTerminal(absl::string_view text);

// Columns padded to their widest cell, two spaces apart, no trailing blanks.
// Cells are escaped with EscapeForTerminal.
std::string RenderTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows);

std::string HumanBytes(uint64_t bytes);           // "512 B", "1.5 KiB", "3.0 GiB"
std::string HumanAge(double seconds);             // "42s", "4m12s", "2h05m", "3d04h"
std::string FormatUnixTime(double unix_seconds);  // "2026-01-02T03:04:05Z", "-" for 0
// "2026-...Z (in 45m)" or "2026-...Z (expired 3m ago)", "-" for 0.
std::string FormatExpiry(int64_t unix_seconds, absl::Time now);

// `now` makes "up 3h", "in 45m" and friends reproducible.
std::string RenderStatus(const control::StatusView& status, absl::Time now);
std::string RenderConnections(const std::vector<control::ConnectionView>& connections);
std::string RenderWorkloads(const std::vector<control::WorkloadView>& workloads, absl::Time now);
std::string RenderPolicyCheck(const control::PolicyCheckParams& query,
                              const control::PolicyCheckView& verdict);
std::string RenderDenials(const std::vector<control::DenialView>& denials);

}  // namespace ktrust::cli
