#pragma once
// A reusable byte buffer with a read cursor: sockets read into its free tail, the relay cuts whole
// messages off its front and writes them on unchanged (DESIGN §1: no per-message allocation).
// Its storage is not zero-filled: pages a read never reached cost no memory (an idle client, or one
// that declared a large message and sent little of it).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

namespace pgsluice::net {

// The free space the next read asks for when the message at the front needs `needed` bytes in all
// and `have` are there: at least a page's worth, and never the whole declared length up front, so
// that the buffer grows with the bytes that actually arrive (DESIGN §8: a length field alone must
// not make pgsluice allocate).
inline constexpr std::size_t kMaxReadAhead = 64 * 1024;
inline std::size_t read_size_for(std::size_t needed, std::size_t have) {
  const std::size_t missing = needed > have ? needed - have : 0;
  return std::clamp<std::size_t>(missing, 4096, kMaxReadAhead);
}

namespace detail {
// Storage of the standard size, kept per thread for the next buffer that needs some: a buffer holds
// storage only while bytes pass through it (an idle client or server connection holds none), and
// taking it back costs no malloc. Each worker is one thread, so nothing here is shared.
inline constexpr std::size_t kBlockSize = 16 * 1024;
struct BlockCache {
  static constexpr std::size_t kKeep = 256;
  std::vector<std::unique_ptr<std::uint8_t[]>> blocks;
};
inline thread_local BlockCache block_cache;
}  // namespace detail

// Frees the calling thread's cached blocks beyond `keep` (after a storm of clients has left: up to
// kKeep blocks, 4 MiB, would otherwise stay for good).
inline void trim_block_cache(std::size_t keep) {
  auto& blocks = detail::block_cache.blocks;
  if (blocks.size() > keep) blocks.resize(keep);
}

class MessageBuffer {
 public:
  explicit MessageBuffer(std::size_t initial_capacity = detail::kBlockSize) : initial_capacity_(initial_capacity) {}
  ~MessageBuffer() { give_back(); }
  MessageBuffer(const MessageBuffer&) = delete;
  MessageBuffer& operator=(const MessageBuffer&) = delete;

  // Bytes received and not yet consumed.
  std::span<const std::uint8_t> readable() const { return {data_.get() + begin_, end_ - begin_}; }
  std::size_t size() const { return end_ - begin_; }
  bool empty() const { return begin_ == end_; }
  std::size_t capacity() const { return capacity_; }

  // Free space to read into, at least `min_free` bytes (moves unread bytes to the front or grows).
  std::span<std::uint8_t> writable(std::size_t min_free = 4096) {
    if (capacity_ - end_ < min_free) {
      if (begin_ > 0) {
        std::memmove(data_.get(), data_.get() + begin_, end_ - begin_);
        end_ -= begin_;
        begin_ = 0;
      }
      if (capacity_ - end_ < min_free) {
        reallocate(std::max({capacity_ * 2, end_ + min_free, initial_capacity_}));
      }
    }
    return {data_.get() + end_, capacity_ - end_};
  }
  void commit(std::size_t count) { end_ += count; }
  void consume(std::size_t count) {
    begin_ += count;
    if (begin_ == end_) begin_ = end_ = 0;
  }
  // Gives memory back after a large message went through (the steady state keeps the initial size).
  void shrink_if_idle(std::size_t keep = 64 * 1024) {
    if (empty() && capacity_ > keep) give_back();
  }
  // Nothing unread: the storage goes back to the thread's cache until the next read needs some.
  void release_if_empty() {
    if (empty()) give_back();
  }

 private:
  void reallocate(std::size_t capacity) {
    std::unique_ptr<std::uint8_t[]> grown;
    auto& cache = detail::block_cache.blocks;
    if (capacity == detail::kBlockSize && !cache.empty()) {
      grown = std::move(cache.back());
      cache.pop_back();
    } else {
      grown.reset(new std::uint8_t[capacity]);  // default-initialised: pages not touched
    }
    if (end_ > begin_) std::memcpy(grown.get(), data_.get() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
    give_storage(std::move(data_), capacity_);
    data_ = std::move(grown);
    capacity_ = capacity;
  }
  void give_back() {
    give_storage(std::move(data_), capacity_);
    capacity_ = 0;
    begin_ = end_ = 0;
  }
  static void give_storage(std::unique_ptr<std::uint8_t[]> storage, std::size_t capacity) {
    auto& cache = detail::block_cache.blocks;
    if (storage && capacity == detail::kBlockSize && cache.size() < detail::BlockCache::kKeep) {
      cache.push_back(std::move(storage));
    }
  }

  std::unique_ptr<std::uint8_t[]> data_;
  std::size_t capacity_ = 0;  // allocated on the first read
  std::size_t initial_capacity_;
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
};

}  // namespace pgsluice::net
