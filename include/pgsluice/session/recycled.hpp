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
  static void give(void* block) noexcept {
    auto* store = of_thread();
    if (store != nullptr && store->blocks_.size() < kKeep) {
      store->blocks_.push_back(block);  // capacity reserved: does not allocate
      return;
    }
    ::operator delete(block);
  }

 private:
  BlockStore() { blocks_.reserve(kKeep); }
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
