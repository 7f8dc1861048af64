// libFuzzer target: the typed messages a client sends (docs §55.7, "(F)"), cut with next_frame as the
// session cuts its read buffer: PasswordMessage / SASLInitialResponse / SASLResponse during login, then
// Parse, Bind (its well-formedness check and its result-format codes), Execute, Describe, Close and
// Query.
// None may crash, read out of bounds or allocate by an unchecked length. In transaction mode pgsluice
// re-encodes Parse, Bind, Describe and Close under the server's statement names and rewrites a Bind's
// result formats; what it builds from a decoded message must decode to the same fields.
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "fuzz_check.hpp"
#include "pgsluice/protocol/backend_messages.hpp"
#include "pgsluice/protocol/builder.hpp"
#include "pgsluice/protocol/frontend_messages.hpp"
#include "pgsluice/protocol/message.hpp"

using namespace pgsluice::protocol;

namespace {

// Larger than any input (-max_len), so that only a length field below 4 is malformed here, and small
// enough that a length field pointing past the input is "incomplete", as on a real socket.
constexpr std::size_t kMaxMessageSize = 1 << 20;

// The one message `out` holds, cut again.
MessageView recut(const Buffer& out, char type) {
  const auto frame = next_frame(out, kMaxMessageSize);
  FUZZ_CHECK(frame.status == FrameStatus::complete && frame.message.frame.size() == out.size());
  FUZZ_CHECK(frame.message.type == type);
  return frame.message;
}

bool same_bytes(Bytes a, Bytes b) {
  return std::ranges::equal(a, b);
}

void check_parse(Bytes payload) {
  auto parse = parse_parse(payload);
  if (!parse) return;
  FUZZ_CHECK(parse->parameter_types.size() == 2 + std::size_t{read_u16(parse->parameter_types.data())} * 4);
  Buffer out;
  append_parse(out, "pgsluice_1", parse->query, parse->parameter_types);
  auto again = parse_parse(recut(out, 'P').payload);
  FUZZ_CHECK(again && again->statement == "pgsluice_1" && again->query == parse->query);
  FUZZ_CHECK(same_bytes(again->parameter_types, parse->parameter_types));
}

void check_bind(Bytes payload) {
  const bool well_formed = bind_is_well_formed(payload);
  auto bind = parse_bind(payload);
  FUZZ_CHECK(bind || !well_formed);
  if (!bind) return;
  Buffer out;
  append_bind(out, bind->portal, "pgsluice_1", bind->rest);
  auto again = parse_bind(recut(out, 'B').payload);
  FUZZ_CHECK(again && again->portal == bind->portal && again->statement == "pgsluice_1");
  FUZZ_CHECK(same_bytes(again->rest, bind->rest));

  const auto formats = bind_result_formats(bind->rest);
  // The check pgsluice makes before relaying a Bind and the reading that rewrites its result
  // formats agree: a well-formed Bind ends with exactly its result-format codes.
  FUZZ_CHECK(formats || !well_formed);
  if (!formats) return;
  FUZZ_CHECK(formats->offset + 2 <= bind->rest.size() && formats->count >= 0);
  if (well_formed) FUZZ_CHECK(formats->offset + 2 + std::size_t(formats->count) * 2 == bind->rest.size());
  // pgsluice names one result format per column when a client's single code must be spread over
  // the columns a re-prepared statement returns; 1600 is Postgres's MaxTupleAttributeNumber.
  const int columns = std::min<int>(formats->count + 1, 1600);
  Buffer widened;
  append_bind_with_result_formats(widened, bind->portal, bind->statement, bind->rest.first(formats->offset),
                                  formats->first, columns);
  const auto rebound_payload = recut(widened, 'B').payload;
  auto rebound = parse_bind(rebound_payload);
  FUZZ_CHECK(rebound && rebound->statement == bind->statement);
  if (well_formed) FUZZ_CHECK(bind_is_well_formed(rebound_payload));
  const auto widened_formats = bind_result_formats(rebound->rest);
  FUZZ_CHECK(widened_formats && widened_formats->offset == formats->offset);
  FUZZ_CHECK(widened_formats->count == columns && widened_formats->first == formats->first);
}

void check_execute(Bytes payload) {
  auto execute = parse_execute(payload);
  if (!execute) return;
  Buffer out;
  append_execute(out, execute->portal, execute->max_rows);
  auto again = parse_execute(recut(out, 'E').payload);
  FUZZ_CHECK(again && again->portal == execute->portal && again->max_rows == execute->max_rows);
}

void check_describe_or_close(char type, Bytes payload) {
  auto target = parse_describe_or_close(payload);
  if (!target) return;
  FUZZ_CHECK(target->kind == 'S' || target->kind == 'P');
  Buffer out;
  if (type == 'D') {
    append_describe(out, target->kind, "pgsluice_1");
  } else {
    append_close(out, target->kind, "pgsluice_1");
  }
  auto again = parse_describe_or_close(recut(out, type).payload);
  FUZZ_CHECK(again && again->kind == target->kind && again->name == "pgsluice_1");
}

// 'p' is PasswordMessage, SASLInitialResponse or SASLResponse by what the server asked for; a
// client may send any of them, so all readings are tried.
void check_password_family(Bytes payload) {
  (void)password_message_text(payload);
  auto sasl = parse_sasl_initial_response(payload);
  if (!sasl) return;
  Buffer out;
  append_sasl_initial_response(out, sasl->mechanism, sasl->data);
  auto again = parse_sasl_initial_response(recut(out, 'p').payload);
  FUZZ_CHECK(again && again->mechanism == sasl->mechanism && again->data == sasl->data);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Bytes input(data, size);
  while (!input.empty()) {
    const auto frame = next_frame(input, kMaxMessageSize);
    if (frame.status == FrameStatus::malformed) {
      FUZZ_CHECK(frame.error().sqlstate == "08P01");
      break;
    }
    if (frame.status != FrameStatus::complete) break;
    const auto& message = frame.message;
    FUZZ_CHECK(message.frame.size() == kHeaderSize + message.payload.size());
    (void)is_frontend_message_type(message.type);
    switch (message.type) {
      case 'p':
        check_password_family(message.payload);
        break;
      case 'P':
        check_parse(message.payload);
        break;
      case 'B':
        check_bind(message.payload);
        break;
      case 'E':
        check_execute(message.payload);
        break;
      case 'D':
      case 'C':
        check_describe_or_close(message.type, message.payload);
        break;
      case 'Q':  // its text: fuzz_sql
        (void)as_string_view(message.payload);
        break;
      default:  // relayed as received
        break;
    }
    input = input.subspan(message.frame.size());
  }
  return 0;
}
