// Zero-filled host memory for large buffers: fresh anonymous mappings,
// advised into transparent huge pages on Linux. A 4 KiB page costs about
// 1.6 us to fault in on the machines measured (a 56 MB buffer: 22 ms), a
// 2 MiB page about what clearing it takes (56 MB: 5 ms); and the pages come
// zeroed, so a zero-initialised buffer needs no fill. Used for the CPU ops'
// outputs (ops_impl.h) and the kernels' own buffers (cpu/parallel.h).
// Plain functions compiled once, without the instruction sets of the
// kernels (csrc/cpu/kernels.h): callable from every one of them.
#pragma once

#include <cstddef>

namespace gemini {

// Buffers from this size on are mapped (smaller ones: the caller's allocator).
constexpr size_t kZeroPagesFrom = size_t(1) << 24;

// `bytes` zeroed bytes starting on a huge-page boundary, or null (too small,
// not Linux, or no mapping to be had); *map and *length are what
// unmap_zero_pages takes back.
void* map_zero_pages(size_t bytes, void** map, size_t* length);
void unmap_zero_pages(void* map, size_t length);

}  // namespace gemini
