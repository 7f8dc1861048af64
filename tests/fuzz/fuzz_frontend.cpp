// libFuzzer target: everything a client can send before and after login goes through these
// decoders. None may crash, read out of bounds, or allocate by an unchecked length.
#include <cstddef>
#include <cstdint>

#include "pgsluice/protocol/backend_messages.hpp"
#include "pgsluice/protocol/message.hpp"
#include "pgsluice/protocol/scram.hpp"
#include "pgsluice/protocol/startup.hpp"

using namespace pgsluice::protocol;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const Bytes input(data, size);

  if (auto frame = next_startup_frame(input); frame.status == FrameStatus::complete) {
    (void)parse_startup_packet(input.first(frame.size));
  }

  std::size_t offset = 0;
  while (offset < input.size()) {
    auto frame = next_frame(input.subspan(offset), 1 << 16);
    if (frame.status != FrameStatus::complete) break;
    const auto payload = frame.message.payload;
    switch (frame.message.type) {
      case 'p': (void)parse_sasl_initial_response(payload); (void)password_message_text(payload); break;
      case 'E': case 'N': (void)parse_error_response(payload); break;
      case 'S': (void)parse_parameter_status(payload); break;
      case 'K': (void)parse_backend_key_data(payload); break;
      case 'Z': (void)parse_ready_for_query(payload); break;
      case 'R':
        if (auto auth = parse_authentication(payload)) (void)sasl_mechanisms(auth->data);
        break;
      default: break;
    }
    offset += frame.message.frame.size();
  }

  // The SCRAM server side reads two client messages; split the input between them.
  static const auto verifier = scram::make_verifier("pencil", "0123456789abcdef", 16);
  scram::ServerExchange exchange(verifier, "fixed-server-nonce");
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto split = text.find('\n');
  if (exchange.handle_client_first(text.substr(0, split)) && split != std::string_view::npos) {
    (void)exchange.handle_client_final(text.substr(split + 1));
  }
  (void)scram::parse_verifier(text);
  (void)scram::base64_decode(text);
  return 0;
}
