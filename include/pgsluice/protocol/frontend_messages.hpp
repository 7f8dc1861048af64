#pragma once
// Views and builders for the extended-protocol messages whose statement names the proxy rewrites in
// transaction mode (docs §55.7: Parse, Bind, Describe, Close) and the completions it answers itself.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "pgsluice/protocol/builder.hpp"
#include "pgsluice/protocol/message.hpp"

namespace pgsluice::protocol {

struct ParseView {
  std::string_view statement;
  std::string_view query;
  Bytes parameter_types;  // Int16 count + Int32 OIDs, as sent
};
Result<ParseView> parse_parse(Bytes payload);

struct BindView {
  std::string_view portal;
  std::string_view statement;
  Bytes rest;  // formats, parameters and result formats, as sent
};
Result<BindView> parse_bind(Bytes payload);
// A Bind whose counts and lengths agree with its bytes (docs §55.7): two names, parameter format
// codes (0, 1 or one per parameter), parameters (length -1 or 0..rest), result format codes, and
// nothing after them. What Postgres refuses with 08P01 at Bind, checked before it is relayed.
bool bind_is_well_formed(Bytes payload);
// The result-format codes at the end of a Bind's `rest`: where they start in it, how many there
// are, and the first (0 when there is none). nullopt when `rest` does not hold a whole Bind.
struct ResultFormats {
  std::size_t offset = 0;
  std::int16_t count = 0;
  std::int16_t first = 0;
};
std::optional<ResultFormats> bind_result_formats(Bytes rest);

struct ExecuteView {
  std::string_view portal;
  std::int32_t max_rows = 0;  // 0: all
};
Result<ExecuteView> parse_execute(Bytes payload);

// Describe and Close share a shape: 'S' (statement) or 'P' (portal), then a name.
struct TargetView {
  char kind = 'S';
  std::string_view name;
};
Result<TargetView> parse_describe_or_close(Bytes payload);

void append_parse(Buffer& out, std::string_view statement, std::string_view query, Bytes parameter_types);
void append_bind(Buffer& out, std::string_view portal, std::string_view statement, Bytes rest);
// A Bind of `rest_before_results` (a BindView::rest up to its ResultFormats::offset) that names one
// result format per column: `columns` times `code`.
void append_bind_with_result_formats(Buffer& out, std::string_view portal, std::string_view statement,
                                     Bytes rest_before_results, std::int16_t code, int columns);
void append_describe(Buffer& out, char kind, std::string_view name);
void append_close(Buffer& out, char kind, std::string_view name);
void append_parse_complete(Buffer& out);
void append_close_complete(Buffer& out);

}  // namespace pgsluice::protocol
