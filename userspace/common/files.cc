#include "ktrust/common/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"

namespace ktrust {
namespace {

absl::Status ErrnoError(absl::string_view operation, const std::string& path, int err) {
  return absl::ErrnoToStatus(err, absl::StrCat(operation, " ", path));
}

// Reads at most max_bytes into `out`; a bigger file is refused rather than
// truncated, so a wrong path (say, /dev/zero) cannot exhaust memory.
absl::Status ReadInto(const std::string& path, size_t max_bytes, std::string& out,
                      bool private_key = false) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open", path, errno);
  absl::Cleanup close_fd = [fd] { close(fd); };
  if (private_key) {
    // fstat of what was opened: no window between the check and the read.
    struct stat st {};
    if (fstat(fd, &st) != 0) return ErrnoError("stat", path, errno);
    mode_t mode = st.st_mode & 07777;
    bool others = (mode & 0007) != 0;
    bool group = (mode & 0070) != 0 && st.st_gid != 0;
    if (others || group) {
      char octal[8];
      snprintf(octal, sizeof(octal), "%04o", static_cast<unsigned>(mode));
      return absl::PermissionDeniedError(
          absl::StrCat("refusing private key ", path, ": mode ", octal, " lets ",
                       others ? "other users" : "its group (gid " + std::to_string(st.st_gid) + ")",
                       " access it; run `chmod 600 ", path,
                       "` (in Kubernetes, set the Secret volume's defaultMode: 0400)"));
    }
    if (st.st_uid != 0 && st.st_uid != geteuid()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "refusing private key ", path, ": it is owned by uid ", st.st_uid,
          ", who could replace it; it must belong to root or to this process's user (uid ",
          geteuid(), ")"));
    }
  }
  char buf[16384];
  while (true) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read", path, errno);
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > max_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " is larger than the ", max_bytes, "-byte limit"));
    }
    out.append(buf, static_cast<size_t>(n));
  }
  OPENSSL_cleanse(buf, sizeof(buf));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> ReadFile(const std::string& path, size_t max_bytes) {
  std::string out;
  if (auto st = ReadInto(path, max_bytes, out); !st.ok()) return st;
  return out;
}

namespace {

absl::StatusOr<Secret> ReadSecret(const std::string& path, size_t max_bytes, bool private_key) {
  std::string out;
  out.reserve(max_bytes < 65536 ? max_bytes : 65536);
  auto st = ReadInto(path, max_bytes, out, private_key);
  Secret secret(std::move(out));  // wiped on destruction, on errors too
  if (!st.ok()) return st;
  return secret;
}

}  // namespace

absl::StatusOr<Secret> ReadSecretFile(const std::string& path, size_t max_bytes) {
  return ReadSecret(path, max_bytes, /*private_key=*/false);
}

absl::StatusOr<Secret> ReadPrivateKeyFile(const std::string& path) {
  return ReadSecret(path, 1 << 20, /*private_key=*/true);
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view content, mode_t mode) {
  std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return ErrnoError("create", tmp, errno);
  bool renamed = false;
  absl::Cleanup cleanup = [&] {
    if (fd >= 0) close(fd);
    if (!renamed) unlink(tmp.c_str());
  };
  // open() honours the umask; set the exact mode the caller asked for.
  if (fchmod(fd, mode) != 0) return ErrnoError("chmod", tmp, errno);
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = write(fd, content.data() + off, content.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write", tmp, errno);
    }
    off += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) return ErrnoError("fsync", tmp, errno);
  if (close(fd) != 0) {
    fd = -1;
    return ErrnoError("close", tmp, errno);
  }
  fd = -1;
  if (rename(tmp.c_str(), path.c_str()) != 0) return ErrnoError("rename into", path, errno);
  renamed = true;
  return absl::OkStatus();
}

absl::Status EnsureDirectory(const std::string& path, mode_t mode) {
  std::error_code ec;
  std::filesystem::path p(path);
  if (p.has_parent_path() && !std::filesystem::exists(p.parent_path(), ec)) {
    std::filesystem::create_directories(p.parent_path(), ec);
    if (ec) return ErrnoError("create directory", p.parent_path().string(), ec.value());
  }
  if (mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    return ErrnoError("create directory", path, errno);
  }
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return ErrnoError("stat", path, errno);
  if (!S_ISDIR(st.st_mode)) return absl::FailedPreconditionError(path + " is not a directory");
  return absl::OkStatus();
}

bool PathExists(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0;
}

}  // namespace ktrust
