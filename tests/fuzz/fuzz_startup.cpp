// libFuzzer target: the untyped packets a client sends before login (docs §55.2.1, §55.7):
// SSLRequest, GSSENCRequest, CancelRequest and StartupMessage, cut with next_startup_frame one after
// another as ClientLogin reads them (an SSLRequest is followed by the StartupMessage).
// None may crash, read out of bounds or allocate by an unchecked length; what pgsluice would write
// from a decoded packet (a StartupMessage to the server, a CancelRequest) must decode to the same.
#include <cstddef>
#include <cstdint>
#include <variant>

#include "fuzz_check.hpp"
#include "pgsluice/protocol/builder.hpp"
#include "pgsluice/protocol/startup.hpp"

using namespace pgsluice::protocol;

namespace {

void check_startup_round_trip(const StartupMessage& startup) {
  (void)startup.find("user");
  (void)startup.find("database");
  Buffer rebuilt;
  append_startup_message(rebuilt, startup.parameters);
  const auto frame = next_startup_frame(rebuilt);
  FUZZ_CHECK(frame.status == FrameStatus::complete && frame.size == rebuilt.size());
  auto again = parse_startup_packet(rebuilt);
  FUZZ_CHECK(again.ok() && std::holds_alternative<StartupMessage>(*again));
  FUZZ_CHECK(std::get<StartupMessage>(*again).parameters == startup.parameters);
}

void check_cancel_round_trip(const CancelRequest& cancel) {
  Buffer rebuilt;
  append_cancel_request(rebuilt, cancel.process_id, cancel.secret_key);
  auto again = parse_startup_packet(rebuilt);
  FUZZ_CHECK(again.ok() && std::holds_alternative<CancelRequest>(*again));
  FUZZ_CHECK(std::get<CancelRequest>(*again).process_id == cancel.process_id);
  FUZZ_CHECK(std::get<CancelRequest>(*again).secret_key == cancel.secret_key);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Bytes input(data, size);
  while (!input.empty()) {
    const auto frame = next_startup_frame(input);
    if (frame.status != FrameStatus::complete) break;
    FUZZ_CHECK(frame.size >= 8 && frame.size <= kMaxStartupPacketSize && frame.size <= input.size());
    auto packet = parse_startup_packet(input.first(frame.size));
    if (packet) {
      if (const auto* startup = std::get_if<StartupMessage>(&*packet)) check_startup_round_trip(*startup);
      if (const auto* cancel = std::get_if<CancelRequest>(&*packet)) check_cancel_round_trip(*cancel);
    } else {
      FUZZ_CHECK(!packet.error().sqlstate.empty());
    }
    input = input.subspan(frame.size);
  }
  return 0;
}
