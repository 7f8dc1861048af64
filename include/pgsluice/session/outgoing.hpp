#pragma once
// A run of bytes to write with one gathered write: spans of received messages passed on unchanged,
// and messages built by the proxy (kept alive here until the write is done). Reused run after run:
// clear() keeps the memory, so the steady state allocates nothing.
#include <vector>

#include "pgsluice/protocol/builder.hpp"
#include "pgsluice/protocol/message.hpp"

namespace pgsluice::session {

class Outgoing {
 public:
  void append(protocol::Bytes bytes) {
    if (bytes.empty()) return;
    if (!pieces_.empty() && !last_owned_ && pieces_.back().data() + pieces_.back().size() == bytes.data()) {
      pieces_.back() = protocol::Bytes(pieces_.back().data(), pieces_.back().size() + bytes.size());
      return;
    }
    pieces_.push_back(bytes);
    last_owned_ = false;
  }
  // A buffer to build one or more messages into; it joins the run at this position. The reference
  // is good until the next call to build().
  protocol::Buffer& build() {
    if (last_owned_) return storage_[used_ - 1];
    if (used_ == storage_.size()) storage_.emplace_back();
    storage_[used_].clear();
    owned_slots_.push_back(pieces_.size());
    pieces_.emplace_back();  // filled in by pieces()
    last_owned_ = true;
    return storage_[used_++];
  }
  // The pieces in order (owned buffers may have grown since they were added: take views now).
  const std::vector<protocol::Bytes>& pieces() {
    for (std::size_t i = 0; i < owned_slots_.size(); ++i) {
      pieces_[owned_slots_[i]] = protocol::Bytes(storage_[i].data(), storage_[i].size());
    }
    return pieces_;
  }
  bool empty() const { return pieces_.empty(); }
  void clear() {
    pieces_.clear();
    owned_slots_.clear();
    used_ = 0;
    last_owned_ = false;
  }

 private:
  std::vector<protocol::Bytes> pieces_;
  std::vector<protocol::Buffer> storage_;
  std::size_t used_ = 0;
  std::vector<std::size_t> owned_slots_;
  bool last_owned_ = false;
};

}  // namespace pgsluice::session
