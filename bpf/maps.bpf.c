// Defines the maps every other ktrust program refers to (lib/maps.h).
#define KTRUST_DEFINE_MAPS
#include "lib/maps.h"

// GPL-compatible, so the verifier offers every helper.
char LICENSE[] SEC("license") = "Dual BSD/GPL";
