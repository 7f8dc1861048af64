#include "pgsluice/protocol/frontend_messages.hpp"

namespace pgsluice::protocol {

Result<ParseView> parse_parse(Bytes payload) {
  PayloadReader reader(payload);
  ParseView view;
  view.statement = reader.cstring();
  view.query = reader.cstring();
  view.parameter_types = reader.rest();
  if (!reader.ok() || view.parameter_types.size() < 2) return protocol_violation("malformed Parse message");
  const auto count = read_u16(view.parameter_types.data());
  if (view.parameter_types.size() != 2 + std::size_t{count} * 4) return protocol_violation("malformed Parse message");
  return view;
}

Result<BindView> parse_bind(Bytes payload) {
  PayloadReader reader(payload);
  BindView view;
  view.portal = reader.cstring();
  view.statement = reader.cstring();
  view.rest = reader.rest();
  if (!reader.ok()) return protocol_violation("malformed Bind message");
  return view;
}

bool bind_is_well_formed(Bytes payload) {
  PayloadReader reader(payload);
  reader.cstring();
  reader.cstring();
  const auto formats = reader.int16();
  if (!reader.ok() || formats < 0 || reader.remaining() < static_cast<std::size_t>(formats) * 2) return false;
  reader.bytes(static_cast<std::size_t>(formats) * 2);
  const auto parameters = reader.int16();
  if (!reader.ok() || parameters < 0 || (formats > 1 && formats != parameters)) return false;
  for (int i = 0; i < parameters; ++i) {
    const auto length = reader.int32();
    if (!reader.ok() || length < -1 || (length > 0 && reader.remaining() < static_cast<std::size_t>(length))) {
      return false;
    }
    if (length > 0) reader.bytes(static_cast<std::size_t>(length));
  }
  const auto results = reader.int16();
  if (!reader.ok() || results < 0 || reader.remaining() != static_cast<std::size_t>(results) * 2) return false;
  return true;
}

Result<ExecuteView> parse_execute(Bytes payload) {
  PayloadReader reader(payload);
  ExecuteView view;
  view.portal = reader.cstring();
  view.max_rows = reader.int32();
  if (!reader.ok() || !reader.at_end()) return protocol_violation("malformed Execute message");
  return view;
}

Result<TargetView> parse_describe_or_close(Bytes payload) {
  PayloadReader reader(payload);
  TargetView view;
  view.kind = static_cast<char>(reader.byte());
  view.name = reader.cstring();
  if (!reader.ok() || !reader.at_end() || (view.kind != 'S' && view.kind != 'P')) {
    return protocol_violation("malformed Describe or Close message");
  }
  return view;
}

void append_parse(Buffer& out, std::string_view statement, std::string_view query, Bytes parameter_types) {
  MessageBuilder(out).begin('P').cstring(statement).cstring(query).bytes(as_string_view(parameter_types)).end();
}

void append_bind(Buffer& out, std::string_view portal, std::string_view statement, Bytes rest) {
  MessageBuilder(out).begin('B').cstring(portal).cstring(statement).bytes(as_string_view(rest)).end();
}

std::optional<ResultFormats> bind_result_formats(Bytes rest) {
  PayloadReader reader(rest);
  const auto parameter_formats = reader.int16();
  if (parameter_formats < 0) return std::nullopt;
  reader.bytes(static_cast<std::size_t>(parameter_formats) * 2);
  const auto parameters = reader.int16();
  if (parameters < 0) return std::nullopt;
  for (int i = 0; i < parameters && reader.ok(); ++i) {
    const auto length = reader.int32();
    if (length > 0) reader.bytes(static_cast<std::size_t>(length));
  }
  ResultFormats formats;
  formats.offset = rest.size() - reader.remaining();
  formats.count = reader.int16();
  if (formats.count > 0) formats.first = reader.int16();
  if (!reader.ok() || formats.count < 0) return std::nullopt;
  return formats;
}

void append_bind_with_result_formats(Buffer& out, std::string_view portal, std::string_view statement,
                                     Bytes rest_before_results, std::int16_t code, int columns) {
  MessageBuilder b(out);
  b.begin('B').cstring(portal).cstring(statement).bytes(as_string_view(rest_before_results));
  b.int16(static_cast<std::int16_t>(columns));
  for (int i = 0; i < columns; ++i) b.int16(code);
  b.end();
}

void append_describe(Buffer& out, char kind, std::string_view name) {
  MessageBuilder(out).begin('D').byte(static_cast<std::uint8_t>(kind)).cstring(name).end();
}

void append_close(Buffer& out, char kind, std::string_view name) {
  MessageBuilder(out).begin('C').byte(static_cast<std::uint8_t>(kind)).cstring(name).end();
}

void append_parse_complete(Buffer& out) { MessageBuilder(out).begin('1').end(); }

void append_close_complete(Buffer& out) { MessageBuilder(out).begin('3').end(); }

}  // namespace pgsluice::protocol
