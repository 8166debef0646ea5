#include "gemini/host_pages.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace gemini {

#if defined(__linux__)
namespace {

constexpr size_t kHugePage = size_t(1) << 21;

// room to start on a huge-page boundary: requests of the same size map the same length
size_t mapped_length(size_t bytes) { return (bytes + kHugePage - 1) / kHugePage * kHugePage + kHugePage; }

void* huge_page_start(void* map) {
  return reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(map) + kHugePage - 1) & ~uintptr_t(kHugePage - 1));
}

size_t cache_limit() {
  const char* env = std::getenv("GEMINI_CPU_CACHE_MB");
  if (!env || !*env) return size_t(1024) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(env, &end, 10);
  if (*end != '\0' || mb < 0)
    throw std::invalid_argument(std::string("GEMINI_CPU_CACHE_MB: expected a whole number of megabytes >= 0, got '") +
                                env + "'");
  return static_cast<size_t>(mb) << 20;
}

struct Mapping {
  void* map;
  size_t length;
};

// Freed mappings, oldest first. Never destroyed: tensors on these pages
// may be freed during the interpreter's exit, after static destructors.
struct Cache {
  std::mutex mutex;
  std::vector<Mapping> kept;
  size_t bytes = 0;
  const size_t limit = cache_limit();

  // A kept mapping of at least `length` bytes and at most half as much
  // again, the smallest; {nullptr, 0} if none.
  Mapping take(size_t length) {
    std::lock_guard<std::mutex> lock(mutex);
    size_t best = kept.size();
    for (size_t i = 0; i < kept.size(); ++i)
      if (kept[i].length >= length && kept[i].length <= length + length / 2 &&
          (best == kept.size() || kept[i].length < kept[best].length))
        best = i;
    if (best == kept.size()) return {nullptr, 0};
    const Mapping m = kept[best];
    kept.erase(kept.begin() + static_cast<std::ptrdiff_t>(best));
    bytes -= m.length;
    return m;
  }

  // Keeps m, unmapping the oldest mappings beyond the limit (m itself if it
  // alone exceeds it).
  void give(Mapping m) {
    std::vector<Mapping> out;
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (m.length > limit) {
        out.push_back(m);
      } else {
        kept.push_back(m);
        bytes += m.length;
        size_t drop = 0;
        while (bytes > limit) bytes -= kept[drop++].length;
        out.assign(kept.begin(), kept.begin() + static_cast<std::ptrdiff_t>(drop));
        kept.erase(kept.begin(), kept.begin() + static_cast<std::ptrdiff_t>(drop));
      }
    }
    for (const Mapping& o : out) munmap(o.map, o.length);
  }

  size_t release() {
    std::vector<Mapping> out;
    size_t freed;
    {
      std::lock_guard<std::mutex> lock(mutex);
      out.swap(kept);
      freed = bytes;
      bytes = 0;
    }
    for (const Mapping& o : out) munmap(o.map, o.length);
    return freed;
  }
};

// A fork while another thread holds the lock (a tensor freed meanwhile)
// would leave the child's copy locked for good: the lock is taken around
// fork and released on both sides, as glibc does for malloc's.
Cache* made = nullptr;
void lock_cache() { made->mutex.lock(); }
void unlock_cache() { made->mutex.unlock(); }

Cache& cache() {
  static Cache* c = [] {
    made = new Cache();
    pthread_atfork(lock_cache, unlock_cache, unlock_cache);
    return made;
  }();
  return *c;
}

// Clears a reused buffer on the OpenMP threads, as the page faults of a
// fresh one are shared among the threads that first touch its pages.
void clear(void* start, size_t bytes) {
  char* p = static_cast<char*>(start);
  const int64_t chunks = static_cast<int64_t>((bytes + kHugePage - 1) / kHugePage);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < chunks; ++i) {
    const size_t at = static_cast<size_t>(i) * kHugePage;
    std::memset(p + at, 0, bytes - at < kHugePage ? bytes - at : kHugePage);
  }
}

}  // namespace
#endif

void* map_host_pages(size_t bytes, bool zeroed, void** map, size_t* length) {
  *map = nullptr;
  *length = 0;
#if defined(__linux__)
  if (bytes < kHostPagesFrom) return nullptr;
  const size_t len = mapped_length(bytes);
  Mapping m = cache().take(len);
  if (m.map) {
    if (zeroed) clear(huge_page_start(m.map), bytes);
  } else {
    m = {mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), len};
    if (m.map == MAP_FAILED) return nullptr;
    madvise(huge_page_start(m.map), len - kHugePage, MADV_HUGEPAGE);  // advice: where refused, 4 KiB pages
  }
  *map = m.map;
  *length = m.length;
  return huge_page_start(m.map);
#else
  (void)bytes;
  (void)zeroed;
  return nullptr;
#endif
}

void unmap_host_pages(void* map, size_t length) {
#if defined(__linux__)
  if (map) cache().give({map, length});
#else
  (void)map;
  (void)length;
#endif
}

size_t release_cached_host_pages() {
#if defined(__linux__)
  return cache().release();
#else
  return 0;
#endif
}

size_t cached_host_page_bytes() {
#if defined(__linux__)
  std::lock_guard<std::mutex> lock(cache().mutex);
  return cache().bytes;
#else
  return 0;
#endif
}

}  // namespace gemini
