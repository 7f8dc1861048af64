#include "pgsluice/protocol/startup.hpp"

#include <string>

namespace pgsluice::protocol {

const std::string* StartupMessage::find(std::string_view name) const {
  for (const auto& [key, value] : parameters) {
    if (key == name) return &value;
  }
  return nullptr;
}

StartupFrame next_startup_frame(Bytes buffer) {
  StartupFrame frame;
  if (buffer.size() < 4) return frame;
  const std::uint32_t length = read_u32(buffer.data());
  if (length < 8 || length > kMaxStartupPacketSize) {
    frame.status = FrameStatus::malformed;
    frame.error = protocol_violation("invalid length of startup packet");
    return frame;
  }
  if (buffer.size() < length) return frame;
  frame.status = FrameStatus::complete;
  frame.size = length;
  return frame;
}

Result<StartupPacket> parse_startup_packet(Bytes packet) {
  PayloadReader reader(packet);
  const auto length = static_cast<std::uint32_t>(reader.int32());
  const auto code = static_cast<std::uint32_t>(reader.int32());
  if (!reader.ok() || length != packet.size()) return protocol_violation("invalid length of startup packet");

  if (code == kSslRequestCode) return StartupPacket{SslRequest{}};
  if (code == kGssEncRequestCode) return StartupPacket{GssEncRequest{}};
  if (code == kCancelRequestCode) {
    CancelRequest cancel;
    cancel.process_id = static_cast<std::uint32_t>(reader.int32());
    cancel.secret_key = static_cast<std::uint32_t>(reader.int32());
    if (!reader.ok()) return protocol_violation("invalid length of cancel request");
    return StartupPacket{cancel};
  }
  if ((code >> 16) != 3) {
    // Postgres: FATAL 0A000 "unsupported frontend protocol %u.%u: server supports 3.0 to 3.0".
    return ProtocolError{"0A000", "unsupported frontend protocol " + std::to_string(code >> 16) + "." +
                                      std::to_string(code & 0xffff) + ": server supports 3.0 to 3.0"};
  }
  StartupMessage startup;
  startup.protocol_version = code;
  startup.parameters.reserve(8);  // drivers send 2 to 8
  for (;;) {
    const std::string_view name = reader.cstring();
    if (!reader.ok()) return protocol_violation("invalid startup packet layout: expected terminator as last byte");
    if (name.empty()) break;
    const std::string_view value = reader.cstring();
    if (!reader.ok()) return protocol_violation("invalid startup packet layout: expected terminator as last byte");
    startup.parameters.emplace_back(std::string(name), std::string(value));
  }
  if (!reader.at_end()) return protocol_violation("invalid startup packet layout: expected terminator as last byte");
  return StartupPacket{std::move(startup)};
}

}  // namespace pgsluice::protocol
