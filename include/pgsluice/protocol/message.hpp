#pragma once
// Message framing for the Postgres v3 protocol (docs §55.7 "Message Formats"): a type byte, then an
// Int32 length that counts itself and the payload. Views only: nothing here copies a payload.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "pgsluice/protocol/result.hpp"

namespace pgsluice::protocol {

using Bytes = std::span<const std::uint8_t>;

inline constexpr std::size_t kHeaderSize = 5;  // type byte + Int32 length

struct MessageView {
  char type = 0;
  Bytes payload;  // after the length field
  Bytes frame;    // the whole message, header included: what the relay writes on unchanged
};

enum class FrameStatus { complete, incomplete, malformed };

struct Frame {
  FrameStatus status = FrameStatus::incomplete;
  MessageView message;          // valid when complete
  std::size_t needed = 0;       // when incomplete: total bytes the frame needs, if known (else 0)
  std::uint32_t length = 0;     // when malformed: the length field it had ...
  std::size_t limit = 0;        // ... and max_message_size
  // When malformed, what the client is told. Made on demand: a frame is cut several times per
  // message on the hot path, and two strings in every one cost more than the cut.
  [[nodiscard]] ProtocolError error() const;
};

// Cuts the first message off `buffer`. A length below 4 or above `max_message_size` is malformed
// and is reported before any allocation could be sized by it (DESIGN §8).
Frame next_frame(Bytes buffer, std::size_t max_message_size);

// Message types a client may send after startup (docs §55.7, "(F)" messages).
bool is_frontend_message_type(char type);
// Message types a server may send (docs §55.7, "(B)" messages).
bool is_backend_message_type(char type);

inline std::uint32_t read_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}
inline std::uint16_t read_u16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>((p[0] << 8) | p[1]);
}

// Sequential reader over a payload; every read is bounds-checked and sets ok() false on overrun.
class PayloadReader {
 public:
  explicit PayloadReader(Bytes payload) : data_(payload) {}
  std::int32_t int32();
  std::int16_t int16();
  std::uint8_t byte();
  std::string_view cstring();  // up to (not including) the NUL
  Bytes bytes(std::size_t count);
  Bytes rest();
  [[nodiscard]] bool ok() const { return ok_; }
  [[nodiscard]] bool at_end() const { return pos_ == data_.size(); }
  [[nodiscard]] std::size_t remaining() const { return data_.size() - pos_; }

 private:
  Bytes data_;
  std::size_t pos_ = 0;
  bool ok_ = true;
};

inline std::string_view as_string_view(Bytes bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

}  // namespace pgsluice::protocol
