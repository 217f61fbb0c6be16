// What the kernel offers for the zero-hop data path, each with a reason in
// words when missing, so status output can say why a workload is served in
// proxy mode instead.
#pragma once

#include <string>

namespace ktrust::zerohop {

struct ZeroHopFeature {
  bool available = false;
  // Why not, or what works, in words.
  std::string reason;
};

struct ZeroHopFeatures {
  // SECCOMP_RET_USER_NOTIF and a filter with a listener (Linux 5.0).
  ZeroHopFeature user_notif;
  // SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (5.19): needed for outbound.
  ZeroHopFeature wait_killable_recv;
  // SECCOMP_IOCTL_NOTIF_ADDFD with SECCOMP_ADDFD_FLAG_SEND (5.14): needed
  // for inbound.
  ZeroHopFeature addfd_send;
  // pidfd_open (5.3) and pidfd_getfd (5.6): taking the workload's socket.
  ZeroHopFeature pidfd_getfd;
  // Kernel TLS, TX and RX, for every suite ktrust negotiates (ProbeKtls).
  ZeroHopFeature ktls;

  // Outbound: the agent handshakes on the workload's own connecting socket.
  bool outbound() const {
    return user_notif.available && wait_killable_recv.available && pidfd_getfd.available &&
           ktls.available;
  }
  // Inbound: the agent hands authenticated sockets to the workload's accept.
  bool inbound() const {
    return user_notif.available && addfd_send.available && pidfd_getfd.available && ktls.available;
  }
  // Why not, in words: the reason of the first missing feature; empty when
  // the direction is available.
  std::string outbound_missing() const;
  std::string inbound_missing() const;
};

// Probes in a forked child, which installs a filter and exits, so the
// calling process gains no filter and no no_new_privs; the kTLS probe opens
// and closes loopback connections. Takes a few milliseconds; call it once.
ZeroHopFeatures ProbeZeroHopFeatures();

}  // namespace ktrust::zerohop
