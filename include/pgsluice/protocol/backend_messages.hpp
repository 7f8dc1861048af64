#pragma once
// Typed views of the server messages the proxy acts on (docs §55.7). Each parse_* takes the payload
// of a message whose type byte the caller has already checked.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "pgsluice/protocol/builder.hpp"
#include "pgsluice/protocol/message.hpp"

namespace pgsluice::protocol {

// ErrorResponse / NoticeResponse fields (docs §55.8).
struct ErrorFields {
  std::string severity;  // 'V' (non-localized) when present, else 'S'
  std::string sqlstate;  // 'C'
  std::string message;   // 'M'
  std::string detail;    // 'D'
};
Result<ErrorFields> parse_error_response(Bytes payload);
// The same ErrorResponse (or NoticeResponse, `type`) with every `from` in its message field ('M')
// replaced by `to`, appended to `out`: an error about a statement under the name pgsluice gave it
// on the server reads as Postgres would have said it to the client.
void append_error_renamed(Buffer& out, char type, Bytes payload, std::string_view from, std::string_view to);

struct ParameterStatus {
  std::string_view name;
  std::string_view value;
};
Result<ParameterStatus> parse_parameter_status(Bytes payload);

struct BackendKeyData {
  std::uint32_t process_id = 0;
  std::uint32_t secret_key = 0;
};
Result<BackendKeyData> parse_backend_key_data(Bytes payload);

// ReadyForQuery's transaction status: 'I' idle, 'T' in a transaction, 'E' in a failed transaction.
Result<char> parse_ready_for_query(Bytes payload);

// What a RowDescription ('T') says about a statement's result, as Postgres compares it before it
// answers 0A000 "cached plan must not change result type": the column count and a fingerprint of
// each column's name, type and type modifier (format codes and the columns' origins left out).
// NoData ('n') is parse_row_shape of nothing: no columns, its own fingerprint. Never 0.
struct RowShape {
  std::int16_t columns = 0;
  std::uint64_t fingerprint = 0;
};
Result<RowShape> parse_row_shape(Bytes payload);
RowShape no_data_shape();

// The Authentication* family ('R'): the request code and what follows it.
enum class AuthRequest : std::int32_t {
  ok = 0,
  cleartext = 3,
  md5 = 5,
  sasl = 10,
  sasl_continue = 11,
  sasl_final = 12,
};
struct Authentication {
  std::int32_t code = 0;
  Bytes data;  // md5: 4-byte salt; sasl: NUL-terminated mechanism list; sasl_*: SASL data
};
Result<Authentication> parse_authentication(Bytes payload);
std::vector<std::string_view> sasl_mechanisms(Bytes data);

// Frontend messages the proxy reads during authentication.
struct SaslInitialResponse {
  std::string_view mechanism;
  std::string_view data;
};
Result<SaslInitialResponse> parse_sasl_initial_response(Bytes payload);
// PasswordMessage / SASLResponse payload: the bytes as sent (cleartext/md5 strings are NUL-terminated).
std::string_view password_message_text(Bytes payload);

}  // namespace pgsluice::protocol
