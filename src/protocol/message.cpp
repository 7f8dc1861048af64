#include "pgsluice/protocol/message.hpp"

#include <cstring>
#include <string>

namespace pgsluice::protocol {

Frame next_frame(Bytes buffer, std::size_t max_message_size) {
  Frame frame;
  if (buffer.size() < kHeaderSize) {
    frame.status = FrameStatus::incomplete;
    return frame;
  }
  const std::uint32_t length = read_u32(buffer.data() + 1);
  if (length < 4 || length > max_message_size) {
    frame.status = FrameStatus::malformed;
    frame.length = length;
    frame.limit = max_message_size;
    return frame;
  }
  const std::size_t total = std::size_t{length} + 1;
  if (buffer.size() < total) {
    frame.status = FrameStatus::incomplete;
    frame.needed = total;
    return frame;
  }
  frame.status = FrameStatus::complete;
  frame.message.type = static_cast<char>(buffer[0]);
  frame.message.frame = buffer.first(total);
  frame.message.payload = buffer.subspan(kHeaderSize, total - kHeaderSize);
  return frame;
}

ProtocolError Frame::error() const {
  if (length < 4) return protocol_violation("invalid message length " + std::to_string(length));
  return protocol_violation("message of " + std::to_string(length) + " bytes exceeds max_message_size " +
                            std::to_string(limit));
}

bool is_frontend_message_type(char type) {
  switch (type) {
    case 'B': case 'C': case 'c': case 'd': case 'D': case 'E': case 'f': case 'F':
    case 'H': case 'P': case 'p': case 'Q': case 'S': case 'X':
      return true;
    default:
      return false;
  }
}

bool is_backend_message_type(char type) {
  switch (type) {
    case 'R': case 'K': case '1': case '2': case '3': case 'C': case 'd': case 'c': case 'G':
    case 'H': case 'W': case 'D': case 'I': case 'E': case 'V': case 'n': case 'N': case 'A':
    case 't': case 'S': case 's': case 'T': case 'Z': case 'v':
      return true;
    default:
      return false;
  }
}

std::int32_t PayloadReader::int32() {
  if (remaining() < 4) {
    ok_ = false;
    pos_ = data_.size();
    return 0;
  }
  const auto value = static_cast<std::int32_t>(read_u32(data_.data() + pos_));
  pos_ += 4;
  return value;
}

std::int16_t PayloadReader::int16() {
  if (remaining() < 2) {
    ok_ = false;
    pos_ = data_.size();
    return 0;
  }
  const auto value = static_cast<std::int16_t>(read_u16(data_.data() + pos_));
  pos_ += 2;
  return value;
}

std::uint8_t PayloadReader::byte() {
  if (remaining() < 1) {
    ok_ = false;
    return 0;
  }
  return data_[pos_++];
}

std::string_view PayloadReader::cstring() {
  const auto* start = data_.data() + pos_;
  const void* nul = std::memchr(start, 0, remaining());
  if (nul == nullptr) {
    ok_ = false;
    pos_ = data_.size();
    return {};
  }
  const auto length = static_cast<std::size_t>(static_cast<const std::uint8_t*>(nul) - start);
  pos_ += length + 1;
  return {reinterpret_cast<const char*>(start), length};
}

Bytes PayloadReader::bytes(std::size_t count) {
  if (remaining() < count) {
    ok_ = false;
    pos_ = data_.size();
    return {};
  }
  auto out = data_.subspan(pos_, count);
  pos_ += count;
  return out;
}

Bytes PayloadReader::rest() {
  auto out = data_.subspan(pos_);
  pos_ = data_.size();
  return out;
}

}  // namespace pgsluice::protocol
