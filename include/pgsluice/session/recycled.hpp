#pragma once
// An allocator that keeps freed blocks on the thread that freed them, for the next object of the
// same type made there. For the objects made and freed once per client (the session, its statement
// tracker): both are over 1 KiB, above glibc's per-thread cache (tcache: up to 1032 bytes), so each
// login took malloc's slow path (bins, splitting and coalescing chunks) for them. Each thread keeps
// at most kKeep blocks per type; the rest go back to malloc.
#include <cstddef>
#include <memory>
#include <new>
#include <utility>
#include <vector>

namespace pgsluice::session {

namespace detail {

// The trim functions of the stores the calling thread has made (one per block size).
inline std::vector<void (*)(std::size_t)>& thread_trims() {
  thread_local std::vector<void (*)(std::size_t)> trims;
  return trims;
}

template <std::size_t Size>
class BlockStore {
 public:
  static constexpr std::size_t kKeep = 256;

  static void* take() {
    auto* store = of_thread();
    if (store != nullptr && !store->blocks_.empty()) {
      void* block = store->blocks_.back();
      store->blocks_.pop_back();
      return block;
    }
    return ::operator new(Size);
  }
  // Frees the calling thread's blocks beyond `keep`.
  static void trim(std::size_t keep) {
    auto* store = of_thread();
    if (store == nullptr) return;
    while (store->blocks_.size() > keep) {
      ::operator delete(store->blocks_.back());
      store->blocks_.pop_back();
    }
  }
  static void give(void* block) noexcept {
    auto* store = of_thread();
    if (store != nullptr && store->blocks_.size() < kKeep) {
      store->blocks_.push_back(block);  // capacity reserved: does not allocate
      return;
    }
    ::operator delete(block);
  }

 private:
  BlockStore() {
    blocks_.reserve(kKeep);
    thread_trims().push_back(&BlockStore::trim);
  }
  ~BlockStore() {
    gone_ = true;
    for (void* block : blocks_) ::operator delete(block);
  }
  // Null once the thread's store is destroyed (an object freed later in the thread's exit goes
  // straight back to malloc).
  static BlockStore* of_thread() {
    if (gone_) return nullptr;
    thread_local BlockStore store;
    return &store;
  }

  std::vector<void*> blocks_;
  static inline thread_local bool gone_ = false;
};

}  // namespace detail

// Frees the calling thread's kept blocks beyond `keep` per type (after a storm of clients has left).
inline void trim_recycled(std::size_t keep) {
  for (auto trim : detail::thread_trims()) trim(keep);
}

template <class T>
struct Recycled {
  static_assert(alignof(T) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__);
  using value_type = T;

  Recycled() = default;
  template <class U>
  Recycled(const Recycled<U>&) noexcept {}

  T* allocate(std::size_t n) {
    if (n == 1) return static_cast<T*>(detail::BlockStore<sizeof(T)>::take());
    return static_cast<T*>(::operator new(n * sizeof(T)));
  }
  void deallocate(T* block, std::size_t n) noexcept {
    if (n == 1) return detail::BlockStore<sizeof(T)>::give(block);
    ::operator delete(block);
  }
  template <class U>
  bool operator==(const Recycled<U>&) const noexcept {
    return true;
  }
};

// unique_ptr's deleter for objects made by make_recycled.
template <class T>
struct RecycledDelete {
  void operator()(T* object) const noexcept {
    object->~T();
    detail::BlockStore<sizeof(T)>::give(object);
  }
};

template <class T>
using RecycledPtr = std::unique_ptr<T, RecycledDelete<T>>;

template <class T, class... Args>
RecycledPtr<T> make_recycled(Args&&... args) {
  void* block = detail::BlockStore<sizeof(T)>::take();
  try {
    return RecycledPtr<T>(new (block) T(std::forward<Args>(args)...));
  } catch (...) {
    detail::BlockStore<sizeof(T)>::give(block);
    throw;
  }
}

}  // namespace pgsluice::session
