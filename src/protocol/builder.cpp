#include "pgsluice/protocol/builder.hpp"
#include "pgsluice/protocol/startup.hpp"

namespace pgsluice::protocol {

MessageBuilder& MessageBuilder::begin(char type) {
  // An empty buffer starts with room for a few small messages, not 1, 2, 4 ... bytes.
  if (out_.capacity() == 0) out_.reserve(256);
  out_.push_back(static_cast<std::uint8_t>(type));
  start_ = out_.size();
  out_.insert(out_.end(), 4, 0);
  return *this;
}

MessageBuilder& MessageBuilder::begin_untyped() {
  start_ = out_.size();
  out_.insert(out_.end(), 4, 0);
  return *this;
}

MessageBuilder& MessageBuilder::int32(std::int32_t value) {
  const auto v = static_cast<std::uint32_t>(value);
  out_.push_back(static_cast<std::uint8_t>(v >> 24));
  out_.push_back(static_cast<std::uint8_t>(v >> 16));
  out_.push_back(static_cast<std::uint8_t>(v >> 8));
  out_.push_back(static_cast<std::uint8_t>(v));
  return *this;
}

MessageBuilder& MessageBuilder::int16(std::int16_t value) {
  const auto v = static_cast<std::uint16_t>(value);
  out_.push_back(static_cast<std::uint8_t>(v >> 8));
  out_.push_back(static_cast<std::uint8_t>(v));
  return *this;
}

MessageBuilder& MessageBuilder::byte(std::uint8_t value) {
  out_.push_back(value);
  return *this;
}

MessageBuilder& MessageBuilder::cstring(std::string_view value) {
  out_.insert(out_.end(), value.begin(), value.end());
  out_.push_back(0);
  return *this;
}

MessageBuilder& MessageBuilder::bytes(std::string_view value) {
  out_.insert(out_.end(), value.begin(), value.end());
  return *this;
}

void MessageBuilder::end() {
  const auto length = static_cast<std::uint32_t>(out_.size() - start_);
  out_[start_] = static_cast<std::uint8_t>(length >> 24);
  out_[start_ + 1] = static_cast<std::uint8_t>(length >> 16);
  out_[start_ + 2] = static_cast<std::uint8_t>(length >> 8);
  out_[start_ + 3] = static_cast<std::uint8_t>(length);
}

namespace {
std::string_view severity_text(Severity severity) {
  switch (severity) {
    case Severity::error: return "ERROR";
    case Severity::fatal: return "FATAL";
    case Severity::notice: return "NOTICE";
  }
  return "ERROR";
}
}  // namespace

void append_error_response(Buffer& out, Severity severity, std::string_view sqlstate, std::string_view message,
                           std::string_view detail, std::string_view hint, std::string_view routine) {
  MessageBuilder b(out);
  b.begin(severity == Severity::notice ? 'N' : 'E');
  b.byte('S').cstring(severity_text(severity));
  b.byte('V').cstring(severity_text(severity));
  b.byte('C').cstring(sqlstate);
  b.byte('M').cstring(message);
  if (!detail.empty()) b.byte('D').cstring(detail);
  if (!hint.empty()) b.byte('H').cstring(hint);
  if (!routine.empty()) b.byte('R').cstring(routine);
  b.byte(0);
  b.end();
}

void append_ready_for_query(Buffer& out, char status) {
  MessageBuilder(out).begin('Z').byte(static_cast<std::uint8_t>(status)).end();
}

void append_parameter_status(Buffer& out, std::string_view name, std::string_view value) {
  MessageBuilder(out).begin('S').cstring(name).cstring(value).end();
}

void append_backend_key_data(Buffer& out, std::uint32_t process_id, std::uint32_t secret_key) {
  MessageBuilder(out)
      .begin('K')
      .int32(static_cast<std::int32_t>(process_id))
      .int32(static_cast<std::int32_t>(secret_key))
      .end();
}

void append_authentication_ok(Buffer& out) { MessageBuilder(out).begin('R').int32(0).end(); }

void append_authentication_cleartext(Buffer& out) { MessageBuilder(out).begin('R').int32(3).end(); }

void append_authentication_md5(Buffer& out, const std::uint8_t (&salt)[4]) {
  MessageBuilder(out).begin('R').int32(5).byte(salt[0]).byte(salt[1]).byte(salt[2]).byte(salt[3]).end();
}

void append_authentication_sasl(Buffer& out, const std::vector<std::string_view>& mechanisms) {
  MessageBuilder b(out);
  b.begin('R').int32(10);
  for (auto mechanism : mechanisms) b.cstring(mechanism);
  b.byte(0).end();
}

void append_authentication_sasl_continue(Buffer& out, std::string_view data) {
  MessageBuilder(out).begin('R').int32(11).bytes(data).end();
}

void append_authentication_sasl_final(Buffer& out, std::string_view data) {
  MessageBuilder(out).begin('R').int32(12).bytes(data).end();
}

void append_negotiate_protocol_version(Buffer& out, std::int32_t newest_minor,
                                       const std::vector<std::string>& unrecognized_options) {
  MessageBuilder b(out);
  b.begin('v').int32(newest_minor).int32(static_cast<std::int32_t>(unrecognized_options.size()));
  for (const auto& option : unrecognized_options) b.cstring(option);
  b.end();
}

void append_startup_message(Buffer& out, const std::vector<std::pair<std::string, std::string>>& parameters) {
  MessageBuilder b(out);
  b.begin_untyped().int32(196608);
  for (const auto& [name, value] : parameters) b.cstring(name).cstring(value);
  b.byte(0).end();
}

void append_cancel_request(Buffer& out, std::uint32_t process_id, std::uint32_t secret_key) {
  MessageBuilder(out)
      .begin_untyped()
      .int32(80877102)
      .int32(static_cast<std::int32_t>(process_id))
      .int32(static_cast<std::int32_t>(secret_key))
      .end();
}

void append_ssl_request(Buffer& out) {
  MessageBuilder(out).begin_untyped().int32(static_cast<std::int32_t>(kSslRequestCode)).end();
}

void append_password_message(Buffer& out, std::string_view password) {
  MessageBuilder(out).begin('p').cstring(password).end();
}

void append_sasl_initial_response(Buffer& out, std::string_view mechanism, std::string_view data) {
  MessageBuilder(out)
      .begin('p')
      .cstring(mechanism)
      .int32(static_cast<std::int32_t>(data.size()))
      .bytes(data)
      .end();
}

void append_sasl_response(Buffer& out, std::string_view data) { MessageBuilder(out).begin('p').bytes(data).end(); }

void append_query(Buffer& out, std::string_view sql) { MessageBuilder(out).begin('Q').cstring(sql).end(); }

void append_terminate(Buffer& out) { MessageBuilder(out).begin('X').end(); }

void append_sync(Buffer& out) { MessageBuilder(out).begin('S').end(); }
void append_flush(Buffer& out) { MessageBuilder(out).begin('H').end(); }

void append_parse(Buffer& out, std::string_view statement, std::string_view sql) {
  MessageBuilder(out).begin('P').cstring(statement).cstring(sql).int16(0).end();
}

void append_bind_text(Buffer& out, std::string_view portal, std::string_view statement,
                      const std::vector<std::string_view>& parameters) {
  MessageBuilder b(out);
  b.begin('B').cstring(portal).cstring(statement).int16(0);  // no format codes: all text
  b.int16(static_cast<std::int16_t>(parameters.size()));
  for (auto parameter : parameters) {
    b.int32(static_cast<std::int32_t>(parameter.size())).bytes(parameter);
  }
  b.int16(0);  // result columns: all text
  b.end();
}

void append_execute(Buffer& out, std::string_view portal, std::int32_t max_rows) {
  MessageBuilder(out).begin('E').cstring(portal).int32(max_rows).end();
}

std::string quote_literal(std::string_view value) {
  // E'' with both quote and backslash escaped reads the same under either standard_conforming_strings.
  std::string out = "E'";
  for (char c : value) {
    if (c == '\'' || c == '\\') out.push_back(c);
    out.push_back(c);
  }
  out.push_back('\'');
  return out;
}

}  // namespace pgsluice::protocol
