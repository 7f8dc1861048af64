#pragma once
// Builders for the few messages the proxy writes itself (errors, authentication, startup, the
// statements it injects). Relayed traffic is never re-encoded: it is written on as received.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pgsluice/protocol/message.hpp"

namespace pgsluice::protocol {

using Buffer = std::vector<std::uint8_t>;

// Appends one message to a buffer: begin(type), add fields, end() patches the length.
class MessageBuilder {
 public:
  explicit MessageBuilder(Buffer& out) : out_(out) {}
  MessageBuilder& begin(char type);        // typed message
  MessageBuilder& begin_untyped();         // startup-phase packet (no type byte)
  MessageBuilder& int32(std::int32_t value);
  MessageBuilder& int16(std::int16_t value);
  MessageBuilder& byte(std::uint8_t value);
  MessageBuilder& cstring(std::string_view value);
  MessageBuilder& bytes(std::string_view value);
  void end();

 private:
  Buffer& out_;
  std::size_t start_ = 0;
};

// Severity for ErrorResponse/NoticeResponse (docs §55.8): the localized 'S' and non-localized 'V'.
enum class Severity { error, fatal, notice };

// `routine` is the 'R' field: some drivers read it (pgjdbc and postgres.js heal a stale plan on
// 0A000 from RevalidateCachedQuery).
void append_error_response(Buffer& out, Severity severity, std::string_view sqlstate, std::string_view message,
                           std::string_view detail = {}, std::string_view hint = {},
                           std::string_view routine = {});
void append_ready_for_query(Buffer& out, char status);
void append_parameter_status(Buffer& out, std::string_view name, std::string_view value);
void append_backend_key_data(Buffer& out, std::uint32_t process_id, std::uint32_t secret_key);
void append_authentication_ok(Buffer& out);
void append_authentication_cleartext(Buffer& out);
void append_authentication_md5(Buffer& out, const std::uint8_t (&salt)[4]);
void append_authentication_sasl(Buffer& out, const std::vector<std::string_view>& mechanisms);
void append_authentication_sasl_continue(Buffer& out, std::string_view data);
void append_authentication_sasl_final(Buffer& out, std::string_view data);
void append_negotiate_protocol_version(Buffer& out, std::int32_t newest_minor,
                                       const std::vector<std::string>& unrecognized_options);

void append_startup_message(Buffer& out, const std::vector<std::pair<std::string, std::string>>& parameters);
void append_cancel_request(Buffer& out, std::uint32_t process_id, std::uint32_t secret_key);
// SSLRequest (docs §55.2.10): asks the server for TLS; it answers one byte, 'S' or 'N'.
void append_ssl_request(Buffer& out);
void append_password_message(Buffer& out, std::string_view password);  // cleartext or md5 response
void append_sasl_initial_response(Buffer& out, std::string_view mechanism, std::string_view data);
void append_sasl_response(Buffer& out, std::string_view data);
void append_query(Buffer& out, std::string_view sql);
void append_terminate(Buffer& out);
void append_sync(Buffer& out);
void append_flush(Buffer& out);
// Parse/Bind/Execute of the unnamed statement with text parameters, no result columns requested
// in any particular format. Used for statements pgsluice injects (set_config).
void append_parse(Buffer& out, std::string_view statement, std::string_view sql);
void append_bind_text(Buffer& out, std::string_view portal, std::string_view statement,
                      const std::vector<std::string_view>& parameters);
void append_execute(Buffer& out, std::string_view portal, std::int32_t max_rows = 0);

// Quotes a string as an SQL literal that reads the same whatever standard_conforming_strings says.
std::string quote_literal(std::string_view value);

}  // namespace pgsluice::protocol
