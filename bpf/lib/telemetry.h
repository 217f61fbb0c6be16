// Counters and events: every decision about enrolled traffic is counted by
// reason, and the ones an operator asks about are also reported as events.
#pragma once

#include "lib/maps.h"

static __always_inline void ktrust_count(__u32 reason) {
  __u64* counter = bpf_map_lookup_elem(&ktrust_counters, &reason);
  // Per-CPU slot, and BPF programs are not preempted on one: no atomics.
  if (counter) *counter += 1;
}

static __always_inline void ktrust_emit(struct ktrust_event* event) {
  if (bpf_ringbuf_output(&ktrust_events, event, sizeof(*event), 0) != 0) {
    ktrust_count(KTRUST_REASON_EVENTS_LOST);
  }
}
