// Small file helpers with the guarantees identity material needs: atomic
// replacement, explicit modes, and errors that name the path and keep errno.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ktrust/common/secret.h"

namespace ktrust {

absl::StatusOr<std::string> ReadFile(const std::string& path, size_t max_bytes = 1 << 20);
absl::StatusOr<Secret> ReadSecretFile(const std::string& path, size_t max_bytes = 1 << 20);
// A private key file: refused, with the fix in the message, when anyone but
// its owner could read or change it (the permission bits of the file opened,
// symlinks followed): others must have no access; the group none either,
// unless it is root's group (0640 root:root is fine, a Kubernetes Secret's
// default 0644 is not). The owner must be root or this process's user.
absl::StatusOr<Secret> ReadPrivateKeyFile(const std::string& path);

// Writes through a temporary file in the same directory and renames it into
// place, so readers see the old or the new content, never a torn file.
// `mode` is applied at creation: a key file is never readable by others, not
// even briefly.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view content, mode_t mode);

// Creates `path` (and missing parents) with `mode` if absent.
absl::Status EnsureDirectory(const std::string& path, mode_t mode);

bool PathExists(const std::string& path);

}  // namespace ktrust
