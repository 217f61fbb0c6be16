// RAII owners for libbpf objects (the skeleton's owner lives in
// bpf_loader.cc, next to the generated type).
#pragma once

#include <bpf/libbpf.h>

#include <memory>

namespace ktrust {

template <auto FreeFn>
struct LibbpfDeleter {
  template <typename T>
  void operator()(T* p) const {
    FreeFn(p);
  }
};

// Destroying a link closes its fd; a pinned link stays attached until its
// pin is removed.
inline void DestroyBpfLink(bpf_link* link) { bpf_link__destroy(link); }
using BpfLinkPtr = std::unique_ptr<bpf_link, LibbpfDeleter<DestroyBpfLink>>;
using RingBufferPtr = std::unique_ptr<ring_buffer, LibbpfDeleter<ring_buffer__free>>;

}  // namespace ktrust
