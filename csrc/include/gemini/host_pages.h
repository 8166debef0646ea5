// Host memory for large buffers: anonymous mappings advised into
// transparent huge pages on Linux, kept for reuse once freed. A 4 KiB page
// costs about 1.6 us to fault in on the machines measured (a 56 MB buffer:
// 22 ms), a 2 MiB page about what clearing it takes (56 MB: 5 ms). Fresh
// pages every call still cost: integrate(7) + warp forward+backward at
// 128^3 maps about 350 MB, and right after other large frees (MONAI's ops
// on the same inputs) the kernel compacted memory for the huge pages: a
// median of 230-350 ms of system time in a call that takes about 200 ms
// without it (benchmarks/RESULTS.md). Freed mappings are therefore kept (the
// cache) up to GEMINI_CPU_CACHE_MB megabytes (default 1024; 0 keeps none)
// and handed out again to requests of about their size, cleared only where
// the caller asks for zeros. gemini_ops.empty_cache() unmaps them.
// Used for the CPU ops' outputs (ops_impl.h) and the kernels' own buffers
// (cpu/parallel.h). Plain functions compiled once, without the instruction
// sets of the kernels (csrc/cpu/kernels.h): callable from every one of them.
#pragma once

#include <cstddef>

namespace gemini {

// Buffers from this size on are mapped (smaller ones: the caller's allocator).
constexpr size_t kHostPagesFrom = size_t(1) << 22;

// `bytes` bytes starting on a huge-page boundary, zeroed when `zeroed`, or
// null (too small, not Linux, or no mapping to be had); *map and *length
// are what unmap_host_pages takes back.
void* map_host_pages(size_t bytes, bool zeroed, void** map, size_t* length);
// Takes a mapping back: into the cache, or unmapped where it does not fit.
void unmap_host_pages(void* map, size_t length);
// Unmaps the cached mappings; returns their bytes.
size_t release_cached_host_pages();
// The bytes the cache holds.
size_t cached_host_page_bytes();

}  // namespace gemini
