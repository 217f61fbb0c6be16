// Addresses in the ABI's one form: 16 bytes, IPv4 mapped to ::ffff:a.b.c.d.
#pragma once

#include "lib/common.h"

// ip4 is in network order, as the kernel hands it over.
static __always_inline void ktrust_addr_from_ip4(__u8 out[16], __u32 ip4) {
  __u32 words[4] = {0, 0, bpf_htonl(0x0000ffff), ip4};
  __builtin_memcpy(out, words, 16);
}

static __always_inline void ktrust_addr_from_ip6(__u8 out[16], const __u32 ip6[4]) {
  __u32 words[4] = {ip6[0], ip6[1], ip6[2], ip6[3]};
  __builtin_memcpy(out, words, 16);
}

static __always_inline bool ktrust_addr_is_v4_mapped(const __u8 addr[16]) {
  __u32 words[4];
  __builtin_memcpy(words, addr, 16);
  return words[0] == 0 && words[1] == 0 && words[2] == bpf_htonl(0x0000ffff);
}

// The IPv4 part of a mapped address, network order.
static __always_inline __u32 ktrust_addr_ip4(const __u8 addr[16]) {
  __u32 words[4];
  __builtin_memcpy(words, addr, 16);
  return words[3];
}

static __always_inline bool ktrust_addr_equal(const __u8 a[16], const __u8 b[16]) {
  __u64 x[2], y[2];
  __builtin_memcpy(x, a, 16);
  __builtin_memcpy(y, b, 16);
  return x[0] == y[0] && x[1] == y[1];
}

static __always_inline bool ktrust_addr_is_zero(const __u8 addr[16]) {
  __u64 x[2];
  __builtin_memcpy(x, addr, 16);
  return (x[0] | x[1]) == 0;
}

// 127.0.0.0/8 (mapped) or ::1.
static __always_inline bool ktrust_addr_is_loopback(const __u8 addr[16]) {
  if (ktrust_addr_is_v4_mapped(addr)) return addr[12] == 127;
  __u32 words[4];
  __builtin_memcpy(words, addr, 16);
  return words[0] == 0 && words[1] == 0 && words[2] == 0 && words[3] == bpf_htonl(1);
}
