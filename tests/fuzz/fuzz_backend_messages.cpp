// libFuzzer target: the messages a server sends (docs §55.7, "(B)") that pgsluice decodes rather than
// relays: ErrorResponse / NoticeResponse (and the copy with a statement renamed), ParameterStatus,
// BackendKeyData, ReadyForQuery, the Authentication family with its SASL mechanism list and MD5 salt,
// RowDescription / NoData as a row shape; and the ones the session reads in place with a
// PayloadReader: NotificationResponse (listener_hub.cpp), DataRow (a probe's reply,
// statement_tracker.cpp), ParameterDescription and CommandComplete.
// A server is trusted less than it seems (a proxy in front of a compromised or buggy one): none may
// crash, read out of bounds or allocate by an unchecked length, and what pgsluice writes from a
// decoded message must decode to the same.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "pgsluice/protocol/backend_messages.hpp"
#include "pgsluice/protocol/builder.hpp"
#include "pgsluice/protocol/md5.hpp"
#include "pgsluice/protocol/message.hpp"

using namespace pgsluice::protocol;

namespace {

constexpr std::size_t kMaxMessageSize = 1 << 20;  // see fuzz_frontend_messages.cpp

MessageView recut(const Buffer& out, char type) {
  const auto frame = next_frame(out, kMaxMessageSize);
  FUZZ_CHECK(frame.status == FrameStatus::complete && frame.message.frame.size() == out.size());
  FUZZ_CHECK(frame.message.type == type);
  return frame.message;
}

void check_error(char type, Bytes payload) {
  auto fields = parse_error_response(payload);
  // An error about "pgsluice_1" (the server's name of a statement) as the client hears it ("S_1").
  Buffer renamed;
  append_error_renamed(renamed, type, payload, "pgsluice_1", "S_1");
  auto again = parse_error_response(recut(renamed, type).payload);
  FUZZ_CHECK(again.ok());
  if (fields) {
    FUZZ_CHECK(again->severity == fields->severity && again->sqlstate == fields->sqlstate);
    FUZZ_CHECK(again->detail == fields->detail);
    if (fields->message.find("pgsluice_1") == std::string::npos) {
      FUZZ_CHECK(again->message == fields->message);
    }
  }
  // A replacement that contains what it replaces must not be replaced again.
  Buffer grown;
  append_error_renamed(grown, type, payload, "a", "aa");
  FUZZ_CHECK(grown.size() <= kHeaderSize + 2 * payload.size() + 1);
}

void check_parameter_status(Bytes payload) {
  auto status = parse_parameter_status(payload);
  if (!status) return;
  Buffer out;
  append_parameter_status(out, status->name, status->value);
  auto again = parse_parameter_status(recut(out, 'S').payload);
  FUZZ_CHECK(again && again->name == status->name && again->value == status->value);
}

void check_backend_key_data(Bytes payload) {
  auto key = parse_backend_key_data(payload);
  if (!key) return;
  Buffer out;
  append_backend_key_data(out, key->process_id, key->secret_key);
  auto again = parse_backend_key_data(recut(out, 'K').payload);
  FUZZ_CHECK(again && again->process_id == key->process_id && again->secret_key == key->secret_key);
}

void check_ready_for_query(Bytes payload) {
  auto status = parse_ready_for_query(payload);
  if (!status) return;
  FUZZ_CHECK(*status == 'I' || *status == 'T' || *status == 'E');
  Buffer out;
  append_ready_for_query(out, *status);
  auto again = parse_ready_for_query(recut(out, 'Z').payload);
  FUZZ_CHECK(again && *again == *status);
}

void check_authentication(Bytes payload) {
  auto auth = parse_authentication(payload);
  if (!auth) return;
  switch (static_cast<AuthRequest>(auth->code)) {
    case AuthRequest::sasl: {
      const auto mechanisms = sasl_mechanisms(auth->data);
      Buffer out;
      append_authentication_sasl(out, mechanisms);
      auto again = parse_authentication(recut(out, 'R').payload);
      FUZZ_CHECK(again && again->code == auth->code && sasl_mechanisms(again->data) == mechanisms);
      break;
    }
    case AuthRequest::md5: {
      FUZZ_CHECK(auth->data.size() == 4);
      const md5::Salt salt{auth->data[0], auth->data[1], auth->data[2], auth->data[3]};
      FUZZ_CHECK(md5::salted_response("user", "pencil", salt).size() == 35);
      break;
    }
    default:  // SASLContinue / SASLFinal data: fuzz_scram
      break;
  }
}

void check_row_description(Bytes payload) {
  auto shape = parse_row_shape(payload);
  if (!shape) return;
  FUZZ_CHECK(shape->columns >= 0 && shape->fingerprint != 0);
  PayloadReader reader(payload);  // the column count the client was told (statement_tracker.cpp)
  FUZZ_CHECK(reader.int16() == shape->columns);
}

// listener_hub.cpp routes by the channel; client_session.cpp rewrites the pid.
void read_notification(Bytes payload) {
  PayloadReader reader(payload);
  (void)reader.int32();
  const std::string channel(reader.cstring());
  (void)reader.cstring();  // the notification's payload
}

// A probe's reply (statement_tracker.cpp): each column NULL (-1) or a value of its length.
void read_data_row(Bytes payload) {
  PayloadReader reader(payload);
  const auto columns = reader.int16();
  std::size_t bytes = 0;
  for (int i = 0; i < columns && reader.ok(); ++i) {
    const auto length = reader.int32();
    if (length >= 0) bytes += reader.bytes(static_cast<std::size_t>(length)).size();
  }
  FUZZ_CHECK(bytes <= payload.size());
}

void read_parameter_description(Bytes payload) {
  PayloadReader reader(payload);
  const auto count = reader.int16();
  for (int i = 0; i < count && reader.ok(); ++i) {
    (void)reader.int32();  // type OID
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Bytes input(data, size);
  while (!input.empty()) {
    const auto frame = next_frame(input, kMaxMessageSize);
    if (frame.status != FrameStatus::complete) break;
    const auto& message = frame.message;
    (void)is_backend_message_type(message.type);
    switch (message.type) {
      case 'E':
      case 'N':
        check_error(message.type, message.payload);
        break;
      case 'S':
        check_parameter_status(message.payload);
        break;
      case 'K':
        check_backend_key_data(message.payload);
        break;
      case 'Z':
        check_ready_for_query(message.payload);
        break;
      case 'R':
        check_authentication(message.payload);
        break;
      case 'T':
        check_row_description(message.payload);
        break;
      case 'n':
        FUZZ_CHECK(no_data_shape().fingerprint != 0);
        break;
      case 'A':
        read_notification(message.payload);
        break;
      case 'D':
        read_data_row(message.payload);
        break;
      case 't':
        read_parameter_description(message.payload);
        break;
      case 'C':
        (void)PayloadReader(message.payload).cstring();
        break;
      default:  // relayed as received
        break;
    }
    input = input.subspan(message.frame.size());
  }
  return 0;
}
