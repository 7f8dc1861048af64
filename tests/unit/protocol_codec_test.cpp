// Codec round trips: every message the proxy builds is parsed back by the matching decoder, and the
// framing rejects what DESIGN §8 says it must.
#include <catch.hpp>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "pgsluice/protocol/backend_messages.hpp"
#include "pgsluice/protocol/builder.hpp"
#include "pgsluice/protocol/frontend_messages.hpp"
#include "pgsluice/protocol/message.hpp"
#include "pgsluice/protocol/startup.hpp"

using namespace pgsluice::protocol;

namespace {

Bytes view(const Buffer& buffer) { return {buffer.data(), buffer.size()}; }

MessageView only_message(const Buffer& buffer) {
  auto frame = next_frame(view(buffer), 1 << 20);
  REQUIRE(frame.status == FrameStatus::complete);
  REQUIRE(frame.message.frame.size() == buffer.size());
  return frame.message;
}

}  // namespace

TEST_CASE("next_frame cuts whole messages and waits for incomplete ones", "[protocol][framing]") {
  Buffer buffer;
  append_query(buffer, "select 1");
  append_sync(buffer);
  auto first = next_frame(view(buffer), 1 << 20);
  REQUIRE(first.status == FrameStatus::complete);
  CHECK(first.message.type == 'Q');
  CHECK(as_string_view(first.message.payload) == std::string_view("select 1\0", 9));
  auto second = next_frame(view(buffer).subspan(first.message.frame.size()), 1 << 20);
  REQUIRE(second.status == FrameStatus::complete);
  CHECK(second.message.type == 'S');
  CHECK(second.message.payload.empty());

  for (std::size_t cut = 0; cut < first.message.frame.size(); ++cut) {
    auto partial = next_frame(view(buffer).first(cut), 1 << 20);
    CHECK(partial.status == FrameStatus::incomplete);
    if (cut >= kHeaderSize) CHECK(partial.needed == first.message.frame.size());
  }
}

TEST_CASE("a length field below 4 is malformed with 08P01", "[protocol][framing]") {
  const Buffer bad{'Q', 0, 0, 0, 3};
  auto frame = next_frame(view(bad), 1 << 20);
  CHECK(frame.status == FrameStatus::malformed);
  CHECK(frame.error().sqlstate == "08P01");
}

TEST_CASE("a length over max_message_size is malformed before the payload arrives", "[protocol][framing]") {
  const Buffer header{'Q', 0, 0x20, 0, 0};  // claims 2 MiB
  auto frame = next_frame(view(header), 1 << 20);
  CHECK(frame.status == FrameStatus::malformed);
  CHECK(frame.error().sqlstate == "08P01");
  CHECK(frame.error().message.find("max_message_size") != std::string::npos);
}

TEST_CASE("frontend and backend message type tables", "[protocol][framing]") {
  for (char type : std::string("BCcdDEfFHPpQSX")) CHECK(is_frontend_message_type(type));
  for (char type : std::string("aAzZ\x01 0")) CHECK_FALSE(is_frontend_message_type(type));
  for (char type : std::string("RK123CdcGHWDIEVnNAtSsTZv")) CHECK(is_backend_message_type(type));
  CHECK_FALSE(is_backend_message_type('Q'));
  CHECK_FALSE(is_backend_message_type('x'));
}

TEST_CASE("StartupMessage round trip keeps parameters in order", "[protocol][startup]") {
  Buffer buffer;
  append_startup_message(buffer, {{"user", "feed_service"}, {"database", "nova"}, {"application_name", "feed"}});
  auto frame = next_startup_frame(view(buffer));
  REQUIRE(frame.status == FrameStatus::complete);
  REQUIRE(frame.size == buffer.size());
  auto packet = parse_startup_packet(view(buffer));
  REQUIRE(packet.ok());
  auto& startup = std::get<StartupMessage>(*packet);
  CHECK(startup.protocol_version == kProtocolVersion30);
  REQUIRE(startup.parameters.size() == 3);
  CHECK(startup.parameters[0] == std::pair<std::string, std::string>{"user", "feed_service"});
  CHECK(*startup.find("application_name") == "feed");
  CHECK(startup.find("options") == nullptr);
}

TEST_CASE("SSLRequest, GSSENCRequest and CancelRequest decode", "[protocol][startup]") {
  Buffer ssl;
  MessageBuilder(ssl).begin_untyped().int32(static_cast<std::int32_t>(kSslRequestCode)).end();
  CHECK(std::holds_alternative<SslRequest>(*parse_startup_packet(view(ssl))));
  Buffer gss;
  MessageBuilder(gss).begin_untyped().int32(static_cast<std::int32_t>(kGssEncRequestCode)).end();
  CHECK(std::holds_alternative<GssEncRequest>(*parse_startup_packet(view(gss))));
  Buffer cancel;
  append_cancel_request(cancel, 1234, 0xdeadbeef);
  auto packet = parse_startup_packet(view(cancel));
  REQUIRE(packet.ok());
  auto& request = std::get<CancelRequest>(*packet);
  CHECK(request.process_id == 1234);
  CHECK(request.secret_key == 0xdeadbeef);
}

TEST_CASE("startup packets of bad length or version are refused", "[protocol][startup]") {
  Buffer huge{0, 0, 0x27, 0x11};  // 10001 bytes
  CHECK(next_startup_frame(view(huge)).status == FrameStatus::malformed);
  CHECK(next_startup_frame(view(huge)).error.sqlstate == "08P01");
  Buffer tiny{0, 0, 0, 7};
  CHECK(next_startup_frame(view(tiny)).status == FrameStatus::malformed);

  Buffer v2;
  MessageBuilder(v2).begin_untyped().int32(0x00020000).byte(0).end();
  auto packet = parse_startup_packet(view(v2));
  REQUIRE_FALSE(packet.ok());
  CHECK(packet.error().sqlstate == "0A000");

  Buffer unterminated;
  MessageBuilder(unterminated).begin_untyped().int32(static_cast<std::int32_t>(kProtocolVersion30)).bytes("user").end();
  auto bad = parse_startup_packet(view(unterminated));
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().sqlstate == "08P01");
}

TEST_CASE("ErrorResponse round trip", "[protocol][backend]") {
  Buffer buffer;
  append_error_response(buffer, Severity::fatal, "53300", "pgsluice: too many clients", "detail text");
  auto message = only_message(buffer);
  CHECK(message.type == 'E');
  auto fields = parse_error_response(message.payload);
  REQUIRE(fields.ok());
  CHECK(fields->severity == "FATAL");
  CHECK(fields->sqlstate == "53300");
  CHECK(fields->message == "pgsluice: too many clients");
  CHECK(fields->detail == "detail text");

  Buffer notice;
  append_error_response(notice, Severity::notice, "00000", "hello");
  CHECK(only_message(notice).type == 'N');
}

TEST_CASE("ParameterStatus, BackendKeyData and ReadyForQuery round trips", "[protocol][backend]") {
  Buffer buffer;
  append_parameter_status(buffer, "TimeZone", "Europe/Berlin");
  auto status = parse_parameter_status(only_message(buffer).payload);
  REQUIRE(status.ok());
  CHECK(status->name == "TimeZone");
  CHECK(status->value == "Europe/Berlin");

  Buffer key;
  append_backend_key_data(key, 0x7fffffff, 0x80000001);
  auto parsed = parse_backend_key_data(only_message(key).payload);
  REQUIRE(parsed.ok());
  CHECK(parsed->process_id == 0x7fffffff);
  CHECK(parsed->secret_key == 0x80000001);

  for (char s : std::string("ITE")) {
    Buffer ready;
    append_ready_for_query(ready, s);
    auto value = parse_ready_for_query(only_message(ready).payload);
    REQUIRE(value.ok());
    CHECK(*value == s);
  }
  Buffer bad_ready;
  append_ready_for_query(bad_ready, 'X');
  CHECK_FALSE(parse_ready_for_query(only_message(bad_ready).payload).ok());
}

TEST_CASE("Authentication request round trips", "[protocol][auth]") {
  Buffer ok;
  append_authentication_ok(ok);
  CHECK(parse_authentication(only_message(ok).payload)->code == 0);

  Buffer cleartext;
  append_authentication_cleartext(cleartext);
  CHECK(parse_authentication(only_message(cleartext).payload)->code == 3);

  Buffer md5;
  const std::uint8_t salt[4] = {1, 2, 3, 4};
  append_authentication_md5(md5, salt);
  auto md5_request = parse_authentication(only_message(md5).payload);
  REQUIRE(md5_request.ok());
  CHECK(md5_request->code == 5);
  CHECK(md5_request->data.size() == 4);
  CHECK(md5_request->data[3] == 4);

  Buffer sasl;
  append_authentication_sasl(sasl, {"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"});
  auto sasl_request = parse_authentication(only_message(sasl).payload);
  REQUIRE(sasl_request.ok());
  CHECK(sasl_request->code == 10);
  auto mechanisms = sasl_mechanisms(sasl_request->data);
  REQUIRE(mechanisms.size() == 2);
  CHECK(mechanisms[1] == "SCRAM-SHA-256");

  Buffer cont;
  append_authentication_sasl_continue(cont, "r=abc,s=def,i=4096");
  auto continue_request = parse_authentication(only_message(cont).payload);
  CHECK(continue_request->code == 11);
  CHECK(as_string_view(continue_request->data) == "r=abc,s=def,i=4096");

  Buffer fin;
  append_authentication_sasl_final(fin, "v=xyz");
  CHECK(parse_authentication(only_message(fin).payload)->code == 12);
}

TEST_CASE("SASLInitialResponse and PasswordMessage round trips", "[protocol][auth]") {
  Buffer initial;
  append_sasl_initial_response(initial, "SCRAM-SHA-256", "n,,n=,r=nonce");
  auto message = only_message(initial);
  CHECK(message.type == 'p');
  auto parsed = parse_sasl_initial_response(message.payload);
  REQUIRE(parsed.ok());
  CHECK(parsed->mechanism == "SCRAM-SHA-256");
  CHECK(parsed->data == "n,,n=,r=nonce");

  Buffer truncated;
  MessageBuilder(truncated).begin('p').cstring("SCRAM-SHA-256").int32(100).bytes("short").end();
  CHECK_FALSE(parse_sasl_initial_response(only_message(truncated).payload).ok());

  Buffer password;
  append_password_message(password, "md5abcdef");
  CHECK(password_message_text(only_message(password).payload) == "md5abcdef");
  Buffer response;
  append_sasl_response(response, "c=biws,r=x,p=y");
  CHECK(password_message_text(only_message(response).payload) == "c=biws,r=x,p=y");
}

TEST_CASE("Parse, Bind, Execute and Query are framed as Postgres expects", "[protocol][frontend]") {
  Buffer buffer;
  append_parse(buffer, "", "SELECT pg_catalog.set_config($1, $2, false)");
  append_bind_text(buffer, "", "", {"TimeZone", "UTC"});
  append_execute(buffer, "");
  append_sync(buffer);
  std::string types;
  std::size_t offset = 0;
  while (offset < buffer.size()) {
    auto frame = next_frame(view(buffer).subspan(offset), 1 << 20);
    REQUIRE(frame.status == FrameStatus::complete);
    types.push_back(frame.message.type);
    if (frame.message.type == 'B') {
      PayloadReader reader(frame.message.payload);
      CHECK(reader.cstring().empty());          // portal
      CHECK(reader.cstring().empty());          // statement
      CHECK(reader.int16() == 0);               // format codes
      CHECK(reader.int16() == 2);               // parameters
      CHECK(reader.int32() == 8);
      CHECK(as_string_view(reader.bytes(8)) == "TimeZone");
      CHECK(reader.int32() == 3);
      CHECK(as_string_view(reader.bytes(3)) == "UTC");
      CHECK(reader.int16() == 0);
      CHECK(reader.at_end());
      CHECK(reader.ok());
    }
    offset += frame.message.frame.size();
  }
  CHECK(types == "PBES");
}

TEST_CASE("NegotiateProtocolVersion lists the unrecognized options", "[protocol][startup]") {
  Buffer buffer;
  append_negotiate_protocol_version(buffer, 0, {"_pq_.compression"});
  auto message = only_message(buffer);
  CHECK(message.type == 'v');
  PayloadReader reader(message.payload);
  CHECK(reader.int32() == 0);
  CHECK(reader.int32() == 1);
  CHECK(reader.cstring() == "_pq_.compression");
  CHECK(reader.at_end());
}

TEST_CASE("PayloadReader never reads past the end", "[protocol][reader]") {
  const Buffer bytes{0, 1, 'a'};
  PayloadReader reader(view(bytes));
  CHECK(reader.int16() == 1);
  CHECK(reader.cstring().empty());
  CHECK_FALSE(reader.ok());
  PayloadReader short_reader(view(bytes));
  short_reader.int32();
  CHECK_FALSE(short_reader.ok());
}

TEST_CASE("quote_literal escapes quotes and backslashes", "[protocol][builder]") {
  CHECK(quote_literal("it's") == "E'it''s'");
  CHECK(quote_literal("a\\b") == "E'a\\\\b'");
}

TEST_CASE("a RowDescription's shape is its columns' names, types and modifiers", "[protocol][backend]") {
  auto shape_of = [](std::vector<std::tuple<std::string, std::int32_t, std::int32_t, std::int16_t>> columns,
                     std::int32_t table = 16384) {
    Buffer out;
    MessageBuilder b(out);
    b.begin('T').int16(static_cast<std::int16_t>(columns.size()));
    std::int16_t number = 0;
    for (const auto& [name, type, modifier, format] : columns) {
      b.cstring(name).int32(table).int16(++number).int32(type).int16(-1).int32(modifier).int16(format);
    }
    b.end();
    auto shape = parse_row_shape(Bytes(out).subspan(5));
    REQUIRE(shape);
    return *shape;
  };
  const auto base = shape_of({{"id", 23, -1, 0}, {"a", 25, -1, 0}});
  CHECK(base.columns == 2);
  CHECK(base.fingerprint != 0);
  // What a Describe of the statement and of its portal may differ in, or a table made again alike.
  CHECK(shape_of({{"id", 23, -1, 1}, {"a", 25, -1, 1}}).fingerprint == base.fingerprint);
  CHECK(shape_of({{"id", 23, -1, 0}, {"a", 25, -1, 0}}, 99999).fingerprint == base.fingerprint);
  // What Postgres calls a changed result type.
  CHECK(shape_of({{"id", 23, -1, 0}, {"b", 25, -1, 0}}).fingerprint != base.fingerprint);
  CHECK(shape_of({{"id", 23, -1, 0}, {"a", 23, -1, 0}}).fingerprint != base.fingerprint);
  CHECK(shape_of({{"id", 23, -1, 0}, {"a", 1043, 14, 0}}).fingerprint !=
        shape_of({{"id", 23, -1, 0}, {"a", 1043, 24, 0}}).fingerprint);
  CHECK(shape_of({{"id", 23, -1, 0}}).fingerprint != base.fingerprint);
  CHECK(no_data_shape().fingerprint != shape_of({}).fingerprint);
  // Cut short or with bytes left over: malformed.
  Buffer cut;
  MessageBuilder(cut).begin('T').int16(2).cstring("id").int32(0).end();
  CHECK_FALSE(parse_row_shape(Bytes(cut).subspan(5)));
  Buffer extra;
  MessageBuilder(extra).begin('T').int16(0).int16(7).end();
  CHECK_FALSE(parse_row_shape(Bytes(extra).subspan(5)));
}

namespace {

// A Bind payload: names, format codes, parameters (nullopt: NULL), result codes, then `extra`.
Buffer bind_payload(std::vector<std::int16_t> formats, std::vector<std::optional<std::string>> parameters,
                    std::vector<std::int16_t> results, std::string extra = {}, std::optional<std::int32_t> lie = {}) {
  Buffer out;
  MessageBuilder b(out);
  b.begin('B').cstring("portal").cstring("stmt").int16(static_cast<std::int16_t>(formats.size()));
  for (auto f : formats) b.int16(f);
  b.int16(static_cast<std::int16_t>(parameters.size()));
  for (const auto& p : parameters) {
    if (!p) {
      b.int32(-1);
    } else {
      b.int32(lie.value_or(static_cast<std::int32_t>(p->size()))).bytes(*p);
    }
  }
  b.int16(static_cast<std::int16_t>(results.size()));
  for (auto r : results) b.int16(r);
  b.bytes(extra).end();
  return Buffer(out.begin() + 5, out.end());  // the payload, after type and length
}

}  // namespace

TEST_CASE("bind_is_well_formed accepts what drivers send and refuses counts that disagree", "[protocol][bind]") {
  CHECK(bind_is_well_formed(bind_payload({}, {}, {})));
  CHECK(bind_is_well_formed(bind_payload({1}, {std::string("abcd"), std::nullopt}, {1})));
  CHECK(bind_is_well_formed(bind_payload({0, 1}, {std::string("1"), std::string("")}, {0, 1, 1})));
  CHECK_FALSE(bind_is_well_formed(bind_payload({0, 1}, {std::string("1")}, {})));       // 2 formats, 1 parameter
  CHECK_FALSE(bind_is_well_formed(bind_payload({}, {std::string("abc")}, {}, "", 400)));  // length past the end
  CHECK_FALSE(bind_is_well_formed(bind_payload({}, {std::string("abc")}, {}, "", -2)));   // negative length
  CHECK_FALSE(bind_is_well_formed(bind_payload({}, {}, {}, "trailing")));                 // bytes after the codes
  auto cut = bind_payload({}, {std::string("abc")}, {0});
  cut.pop_back();
  CHECK_FALSE(bind_is_well_formed(cut));  // a result code cut short
  Buffer negative;
  MessageBuilder(negative).begin('B').cstring("").cstring("").int16(-1).end();
  CHECK_FALSE(bind_is_well_formed(Buffer(negative.begin() + 5, negative.end())));
}
