#pragma once
// A reusable byte buffer with a read cursor: sockets read into its free tail, the relay cuts whole
// messages off its front and writes them on unchanged (DESIGN §1: no per-message allocation).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace pgsluice::net {

class MessageBuffer {
 public:
  explicit MessageBuffer(std::size_t initial_capacity = 16 * 1024) : data_(initial_capacity) {}

  // Bytes received and not yet consumed.
  std::span<const std::uint8_t> readable() const { return {data_.data() + begin_, end_ - begin_}; }
  std::size_t size() const { return end_ - begin_; }
  bool empty() const { return begin_ == end_; }

  // Free space to read into, at least `min_free` bytes (moves unread bytes to the front or grows).
  std::span<std::uint8_t> writable(std::size_t min_free = 4096) {
    if (data_.size() - end_ < min_free) {
      if (begin_ > 0) {
        std::memmove(data_.data(), data_.data() + begin_, end_ - begin_);
        end_ -= begin_;
        begin_ = 0;
      }
      if (data_.size() - end_ < min_free) data_.resize(std::max(data_.size() * 2, end_ + min_free));
    }
    return {data_.data() + end_, data_.size() - end_};
  }
  void commit(std::size_t count) { end_ += count; }
  void consume(std::size_t count) {
    begin_ += count;
    if (begin_ == end_) begin_ = end_ = 0;
  }
  // Gives memory back after a large message went through (the steady state keeps the initial size).
  void shrink_if_idle(std::size_t keep = 64 * 1024) {
    if (empty() && data_.size() > keep) {
      data_.resize(keep);
      data_.shrink_to_fit();
    }
  }

 private:
  std::vector<std::uint8_t> data_;
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
};

}  // namespace pgsluice::net
