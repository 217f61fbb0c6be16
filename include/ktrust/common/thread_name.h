// Names the calling thread (top -H, ps -L, perf, gdb show it): an operator
// asking which part of the agent uses the CPU gets an answer in words.
#pragma once

#include <pthread.h>

namespace ktrust {

// name: at most 15 characters (the kernel's limit); longer is cut.
inline void NameThisThread(const char* name) {
  char cut[16] = {};
  for (int i = 0; i < 15 && name[i] != '\0'; ++i) cut[i] = name[i];
  pthread_setname_np(pthread_self(), cut);
}

}  // namespace ktrust
