#pragma once
// Views and builders for the extended-protocol messages whose statement names the proxy rewrites in
// transaction mode (docs §55.7: Parse, Bind, Describe, Close) and the completions it answers itself.
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

// Describe and Close share a shape: 'S' (statement) or 'P' (portal), then a name.
struct TargetView {
  char kind = 'S';
  std::string_view name;
};
Result<TargetView> parse_describe_or_close(Bytes payload);

void append_parse(Buffer& out, std::string_view statement, std::string_view query, Bytes parameter_types);
void append_bind(Buffer& out, std::string_view portal, std::string_view statement, Bytes rest);
void append_describe(Buffer& out, char kind, std::string_view name);
void append_close(Buffer& out, char kind, std::string_view name);
void append_parse_complete(Buffer& out);
void append_close_complete(Buffer& out);

}  // namespace pgsluice::protocol
