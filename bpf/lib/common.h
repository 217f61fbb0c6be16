// Included first by every ktrust BPF source: kernel types (CO-RE), libbpf's
// helpers, the shared ABI, and the few UAPI macros BTF cannot carry.
#pragma once

// clang-format off: vmlinux.h must precede the libbpf headers.
#include "vmlinux.h"
// clang-format on

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "ktrust/bpf/abi.h"

// #defines are not in BTF, so vmlinux.h lacks them.
#define AF_INET 2
#define AF_INET6 10
#define TC_ACT_OK 0

// What a cgroup sock_addr program returns: 1 lets the call proceed, 0 makes
// it fail with EPERM.
#define KTRUST_SYSCALL_ALLOW 1
#define KTRUST_SYSCALL_REFUSE 0

// Pins a value in a register so clang cannot sink the load that produced it
// into branches and merge them into arithmetic on the context pointer, which
// the verifier rejects ("dereference of modified ctx ptr").
#define ktrust_barrier_var(var) asm volatile("" : "+r"(var))
