#pragma once
// The untyped packets a client sends first (docs §55.2.1, §55.7): SSLRequest, GSSENCRequest,
// CancelRequest and StartupMessage. They have a length but no type byte.
#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "pgsluice/protocol/message.hpp"

namespace pgsluice::protocol {

inline constexpr std::size_t kMaxStartupPacketSize = 10000;  // Postgres's MAX_STARTUP_PACKET_LENGTH
inline constexpr std::uint32_t kProtocolVersion30 = 196608;  // 3.0
inline constexpr std::uint32_t kSslRequestCode = 80877103;
inline constexpr std::uint32_t kGssEncRequestCode = 80877104;
inline constexpr std::uint32_t kCancelRequestCode = 80877102;

struct SslRequest {};
struct GssEncRequest {};
struct CancelRequest {
  std::uint32_t process_id = 0;
  std::uint32_t secret_key = 0;
};
struct StartupMessage {
  std::uint32_t protocol_version = kProtocolVersion30;
  std::vector<std::pair<std::string, std::string>> parameters;  // in the order sent
  const std::string* find(std::string_view name) const;
};

using StartupPacket = std::variant<SslRequest, GssEncRequest, CancelRequest, StartupMessage>;

struct StartupFrame {
  FrameStatus status = FrameStatus::incomplete;
  std::size_t size = 0;  // bytes consumed when complete
  ProtocolError error;
};

// Is a whole startup packet at the front of `buffer`? Lengths < 8 or > 10 000 are malformed.
StartupFrame next_startup_frame(Bytes buffer);
// Decodes one whole startup packet (as cut by next_startup_frame). Protocol versions other than 3.x
// are 0A000 like Postgres ("unsupported frontend protocol"); 3.x minor versions above 0 and `_pq_.`
// options are accepted and answered with NegotiateProtocolVersion by the caller.
Result<StartupPacket> parse_startup_packet(Bytes packet);

}  // namespace pgsluice::protocol
