#include "pgsluice/protocol/backend_messages.hpp"

namespace pgsluice::protocol {

Result<ErrorFields> parse_error_response(Bytes payload) {
  PayloadReader reader(payload);
  ErrorFields fields;
  std::string localized_severity;
  for (;;) {
    const std::uint8_t code = reader.byte();
    if (!reader.ok()) return protocol_violation("ErrorResponse without terminator");
    if (code == 0) break;
    const std::string_view value = reader.cstring();
    if (!reader.ok()) return protocol_violation("ErrorResponse field without terminator");
    switch (code) {
      case 'S': localized_severity = value; break;
      case 'V': fields.severity = value; break;
      case 'C': fields.sqlstate = value; break;
      case 'M': fields.message = value; break;
      case 'D': fields.detail = value; break;
      default: break;
    }
  }
  if (fields.severity.empty()) fields.severity = localized_severity;
  return fields;
}

Result<ParameterStatus> parse_parameter_status(Bytes payload) {
  PayloadReader reader(payload);
  ParameterStatus status;
  status.name = reader.cstring();
  status.value = reader.cstring();
  if (!reader.ok()) return protocol_violation("malformed ParameterStatus");
  return status;
}

Result<BackendKeyData> parse_backend_key_data(Bytes payload) {
  PayloadReader reader(payload);
  BackendKeyData key;
  key.process_id = static_cast<std::uint32_t>(reader.int32());
  key.secret_key = static_cast<std::uint32_t>(reader.int32());
  if (!reader.ok()) return protocol_violation("malformed BackendKeyData");
  return key;
}

Result<char> parse_ready_for_query(Bytes payload) {
  if (payload.size() != 1) return protocol_violation("malformed ReadyForQuery");
  const char status = static_cast<char>(payload[0]);
  if (status != 'I' && status != 'T' && status != 'E') return protocol_violation("malformed ReadyForQuery");
  return status;
}

namespace {

// FNV-1a, 64 bits.
class Fingerprint {
 public:
  void mix(std::string_view bytes) {
    for (unsigned char c : bytes) {
      hash_ ^= c;
      hash_ *= 1099511628211ull;
    }
  }
  void mix_int(std::int64_t value) {
    for (int shift = 0; shift < 64; shift += 8) {
      hash_ ^= static_cast<std::uint8_t>(value >> shift);
      hash_ *= 1099511628211ull;
    }
  }
  std::uint64_t value() const { return hash_ == 0 ? 1 : hash_; }

 private:
  std::uint64_t hash_ = 1469598103934665603ull;
};

}  // namespace

Result<RowShape> parse_row_shape(Bytes payload) {
  PayloadReader reader(payload);
  const std::int16_t columns = reader.int16();
  if (!reader.ok() || columns < 0) return protocol_violation("malformed RowDescription");
  Fingerprint fingerprint;
  fingerprint.mix_int(columns);
  for (std::int16_t i = 0; i < columns; ++i) {
    const std::string_view name = reader.cstring();
    reader.int32();  // table OID
    reader.int16();  // column number
    const std::int32_t type = reader.int32();
    reader.int16();  // type size
    const std::int32_t modifier = reader.int32();
    reader.int16();  // format code
    if (!reader.ok()) return protocol_violation("malformed RowDescription");
    fingerprint.mix(name);
    fingerprint.mix(std::string_view("\0", 1));
    fingerprint.mix_int(type);
    fingerprint.mix_int(modifier);
  }
  if (!reader.at_end()) return protocol_violation("malformed RowDescription");
  return RowShape{columns, fingerprint.value()};
}

RowShape no_data_shape() {
  Fingerprint fingerprint;
  fingerprint.mix("NoData");
  return RowShape{0, fingerprint.value()};
}

Result<Authentication> parse_authentication(Bytes payload) {
  PayloadReader reader(payload);
  Authentication auth;
  auth.code = reader.int32();
  if (!reader.ok()) return protocol_violation("malformed authentication request");
  auth.data = reader.rest();
  if (auth.code == static_cast<std::int32_t>(AuthRequest::md5) && auth.data.size() != 4) {
    return protocol_violation("malformed AuthenticationMD5Password");
  }
  return auth;
}

std::vector<std::string_view> sasl_mechanisms(Bytes data) {
  std::vector<std::string_view> out;
  PayloadReader reader(data);
  while (reader.ok() && !reader.at_end()) {
    const std::string_view name = reader.cstring();
    if (!reader.ok() || name.empty()) break;
    out.push_back(name);
  }
  return out;
}

Result<SaslInitialResponse> parse_sasl_initial_response(Bytes payload) {
  PayloadReader reader(payload);
  SaslInitialResponse response;
  response.mechanism = reader.cstring();
  const std::int32_t length = reader.int32();
  if (!reader.ok()) return protocol_violation("malformed SASLInitialResponse");
  if (length == -1) {
    response.data = {};
  } else {
    if (length < 0 || static_cast<std::size_t>(length) != reader.remaining()) {
      return protocol_violation("malformed SASLInitialResponse");
    }
    response.data = as_string_view(reader.rest());
  }
  return response;
}

std::string_view password_message_text(Bytes payload) {
  std::string_view text = as_string_view(payload);
  if (!text.empty() && text.back() == '\0') text.remove_suffix(1);
  return text;
}

}  // namespace pgsluice::protocol

namespace pgsluice::protocol {

void append_error_renamed(Buffer& out, char type, Bytes payload, std::string_view from, std::string_view to) {
  MessageBuilder builder(out);
  builder.begin(type);
  PayloadReader reader(payload);
  while (reader.ok() && !reader.at_end()) {
    const auto code = static_cast<char>(reader.byte());
    if (code == '\0') break;
    std::string value(reader.cstring());
    if (code == 'M' && !from.empty()) {
      for (auto at = value.find(from); at != std::string::npos; at = value.find(from, at + to.size())) {
        value.replace(at, from.size(), to);
      }
    }
    builder.byte(static_cast<std::uint8_t>(code)).cstring(value);
  }
  builder.byte(0).end();
}

}  // namespace pgsluice::protocol
