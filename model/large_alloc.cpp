// Large allocations of the meshcap commands on huge pages. A legacy
// iptables table with 10,000 rules is a 1.5 MB blob, read from the kernel,
// kept in an image, and copied into the buffer that replaces it; filling a
// fresh 1.5 MB of ordinary pages costs a page fault per 4 KB, 4.3 ms here
// (a virtual machine, where each fault is dear), against 0.2 ms for the
// same bytes on one 2 MB transparent huge page. So every C++ allocation of
// 1 MiB or more is its own mapping, 2 MB aligned and marked MADV_HUGEPAGE
// (the kernel's "madvise" mode; with "never" it is ordinary pages, as
// before). Smaller ones, and the C library's own, are malloc's.
//
// Compiled into each command (meshcap_command() in CMakeLists.txt), where it
// replaces the global operator new and delete. The live large mappings are
// kept in a fixed table of atomics, no lock, so a child forked while another
// thread allocates never waits on one.
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace {

constexpr size_t kLarge = size_t{1} << 20;
constexpr size_t kHuge = size_t{2} << 20;
constexpr int kSlots = 64;

struct Slot {
  std::atomic<bool> claimed{false};
  std::atomic<uintptr_t> ptr{0};
  void* map = nullptr;
  size_t len = 0;
};

Slot slots[kSlots];
std::atomic<int> live{0};

// A mapping for `n` bytes on 2 MB pages, or nullptr (then malloc serves).
void* large_alloc(size_t n) {
  const size_t len = (n + kHuge - 1) / kHuge * kHuge + kHuge;
  void* map = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) return nullptr;
  const uintptr_t at = (reinterpret_cast<uintptr_t>(map) + kHuge - 1) & ~(uintptr_t{kHuge} - 1);
  ::madvise(reinterpret_cast<void*>(at), len - (at - reinterpret_cast<uintptr_t>(map)), MADV_HUGEPAGE);
  for (auto& s : slots) {
    bool expected = false;
    if (!s.claimed.compare_exchange_strong(expected, true, std::memory_order_acquire)) continue;
    s.map = map;
    s.len = len;
    s.ptr.store(at, std::memory_order_release);
    live.fetch_add(1, std::memory_order_relaxed);
    return reinterpret_cast<void*>(at);
  }
  ::munmap(map, len);  // every slot taken: malloc serves this one
  return nullptr;
}

// True when `p` was a large mapping (now gone).
bool large_free(void* p) {
  if (live.load(std::memory_order_relaxed) == 0) return false;
  const auto at = reinterpret_cast<uintptr_t>(p);
  for (auto& s : slots) {
    if (s.ptr.load(std::memory_order_acquire) != at) continue;
    void* map = s.map;
    const size_t len = s.len;
    s.ptr.store(0, std::memory_order_relaxed);
    s.claimed.store(false, std::memory_order_release);
    live.fetch_sub(1, std::memory_order_relaxed);
    ::munmap(map, len);
    return true;
  }
  return false;
}

}  // namespace

void* operator new(size_t n) {
  if (n >= kLarge)
    if (void* p = large_alloc(n)) return p;
  if (void* p = std::malloc(n != 0 ? n : 1)) return p;
  throw std::bad_alloc();
}

void* operator new[](size_t n) { return ::operator new(n); }

void operator delete(void* p) noexcept {
  if (p != nullptr && !large_free(p)) std::free(p);
}

void operator delete[](void* p) noexcept { ::operator delete(p); }
void operator delete(void* p, size_t) noexcept { ::operator delete(p); }
void operator delete[](void* p, size_t) noexcept { ::operator delete(p); }
