#include "gemini/zero_pages.h"

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace gemini {

void* map_zero_pages(size_t bytes, void** map, size_t* length) {
  *map = nullptr;
  *length = 0;
#if defined(__linux__)
  if (bytes < kZeroPagesFrom) return nullptr;
  constexpr size_t kHugePage = size_t(1) << 21;
  const size_t len = bytes + kHugePage;  // room to start on a huge-page boundary
  void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  const uintptr_t start = (reinterpret_cast<uintptr_t>(m) + kHugePage - 1) & ~uintptr_t(kHugePage - 1);
  madvise(reinterpret_cast<void*>(start), bytes, MADV_HUGEPAGE);  // advice: where refused, 4 KiB pages
  *map = m;
  *length = len;
  return reinterpret_cast<void*>(start);
#else
  (void)bytes;
  return nullptr;
#endif
}

void unmap_zero_pages(void* map, size_t length) {
#if defined(__linux__)
  if (map) munmap(map, length);
#else
  (void)map;
  (void)length;
#endif
}

}  // namespace gemini
