// Requests, outcomes and replies as bytes (see request.hpp).
#include "pgsluice/coalesce/request.hpp"

#include "pgsluice/protocol/backend_messages.hpp"
#include "pgsluice/protocol/frontend_messages.hpp"

#include <cstring>

namespace pgsluice::coalesce {

namespace {

struct Reader {
  protocol::Bytes bytes;
  std::size_t at = 0;
  bool ok = true;
  std::int32_t i32() {
    if (at + 4 > bytes.size()) return ok = false, 0;
    auto value = static_cast<std::int32_t>(protocol::read_u32(bytes.data() + at));
    at += 4;
    return value;
  }
  std::int16_t i16() {
    if (at + 2 > bytes.size()) return ok = false, 0;
    auto value = static_cast<std::int16_t>(protocol::read_u16(bytes.data() + at));
    at += 2;
    return value;
  }
  std::string_view take(std::size_t n) {
    if (at + n > bytes.size()) return ok = false, std::string_view();
    auto view = protocol::as_string_view(bytes.subspan(at, n));
    at += n;
    return view;
  }
};

void put_u32(std::string& out, std::uint32_t value) {
  const char bytes[4] = {static_cast<char>(value >> 24), static_cast<char>(value >> 16), static_cast<char>(value >> 8),
                         static_cast<char>(value)};
  out.append(bytes, 4);
}

void append(protocol::Buffer& out, std::string_view bytes) { out.insert(out.end(), bytes.begin(), bytes.end()); }

// An error as the client's own statement would have got it: the coalescer ran it as the unnamed
// statement, which Postgres names "" (bind message supplies 2 parameters, but prepared statement
// "" requires 1).
void append_error(protocol::Buffer& out, std::string_view error, const Steps& steps) {
  if (steps.statement.empty() || error.size() < 5) return append(out, error);
  protocol::append_error_renamed(out, error[0],
                                 protocol::Bytes(reinterpret_cast<const std::uint8_t*>(error.data()) + 5, error.size() - 5),
                                 "prepared statement \"\"", "prepared statement \"" + steps.statement + "\"");
}

}  // namespace

std::optional<BindParts> split_bind(protocol::Bytes rest) {
  Reader in{rest};
  BindParts parts;
  const auto formats = in.i16();
  for (int i = 0; in.ok && i < formats; ++i) parts.parameter_formats.push_back(in.i16());
  const auto count = in.i16();
  if (!in.ok || formats < 0 || count < 0 || (formats > 1 && formats != count)) return std::nullopt;
  for (int i = 0; in.ok && i < count; ++i) {
    const auto length = in.i32();
    if (length < 0) {
      parts.values.emplace_back(std::nullopt);
    } else {
      parts.values.emplace_back(in.take(static_cast<std::size_t>(length)));
    }
  }
  const auto results = in.i16();
  for (int i = 0; in.ok && i < results; ++i) parts.result_formats.push_back(in.i16());
  if (!in.ok || results < 0 || in.at != rest.size()) return std::nullopt;
  return parts;
}

std::optional<std::string> with_result_formats(std::string_view row_description,
                                               const std::vector<std::int16_t>& result_formats) {
  if (row_description.size() < 7 || row_description[0] != 'T') return std::nullopt;
  std::string out(row_description);
  auto* data = reinterpret_cast<std::uint8_t*>(out.data());
  const auto columns = static_cast<std::size_t>(protocol::read_u16(data + 5));
  if (result_formats.size() > 1 && result_formats.size() != columns) return std::nullopt;
  std::size_t at = 7;
  for (std::size_t i = 0; i < columns; ++i) {
    const auto nul = out.find('\0', at);
    if (nul == std::string::npos || nul + 1 + 18 > out.size()) return std::nullopt;
    at = nul + 1 + 16;  // table OID, attnum, type OID, typlen, typmod: then the format code
    const std::int16_t code = result_formats.empty() ? 0 : result_formats.size() == 1 ? result_formats[0] : result_formats[i];
    data[at] = static_cast<std::uint8_t>(static_cast<std::uint16_t>(code) >> 8);
    data[at + 1] = static_cast<std::uint8_t>(code);
    at += 2;
  }
  return out;
}

bool render(const Steps& steps, const Outcome& outcome, protocol::Buffer& out) {
  if (!outcome.simple_reply.empty()) {
    append(out, outcome.simple_reply);
    return true;
  }
  bool failed = false;
  for (char step : steps.order) {
    switch (step) {
      case 'P':
        if (outcome.failed_at == Outcome::Stage::parse) {
          append_error(out, outcome.error, steps);
          failed = true;
        } else {
          protocol::append_parse_complete(out);
        }
        break;
      case 's':
        if (outcome.parameter_description.empty() || outcome.row_description.empty()) return false;
        append(out, outcome.parameter_description);
        append(out, outcome.row_description);
        break;
      case 'B':
        // A statement the client parsed before (no 'P' here) that fails to parse now fails its Bind.
        if (outcome.failed_at == Outcome::Stage::parse || outcome.failed_at == Outcome::Stage::bind) {
          append_error(out, outcome.error, steps);
          failed = true;
        } else {
          protocol::MessageBuilder(out).begin('2').end();
        }
        break;
      case 'p':
        if (outcome.row_description.empty()) return false;
        if (outcome.row_description[0] == 'n') {
          append(out, outcome.row_description);
        } else {
          auto described = with_result_formats(outcome.row_description, steps.result_formats);
          if (!described) return false;
          append(out, *described);
        }
        break;
      case 'E':
        append(out, outcome.rows);
        if (outcome.failed_at != Outcome::Stage::none) {
          append_error(out, outcome.error, steps);
          failed = true;
        } else {
          append(out, outcome.complete);
        }
        break;
      default: return false;
    }
    if (failed) break;
  }
  protocol::append_ready_for_query(out, 'I');
  return true;
}

std::string text_array(const std::vector<std::optional<std::string_view>>& values) {
  std::string out = "{";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += ',';
    if (!values[i]) {
      out += "NULL";
      continue;
    }
    out += '"';
    for (char c : *values[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  out += '}';
  return out;
}

std::string binary_array(const std::vector<std::optional<std::string_view>>& values, std::uint32_t element_oid) {
  std::string out;
  bool nulls = false;
  for (const auto& value : values) nulls = nulls || !value;
  put_u32(out, 1);  // dimensions
  put_u32(out, nulls ? 1 : 0);
  put_u32(out, element_oid);
  put_u32(out, static_cast<std::uint32_t>(values.size()));
  put_u32(out, 1);  // lower bound
  for (const auto& value : values) {
    if (!value) {
      put_u32(out, 0xffffffffu);
      continue;
    }
    put_u32(out, static_cast<std::uint32_t>(value->size()));
    out.append(*value);
  }
  return out;
}

std::optional<BatchRow> split_batch_row(protocol::Bytes frame, bool text_numbers) {
  if (frame.size() < 7 || frame[0] != 'D') return std::nullopt;
  Reader in{frame.subspan(5)};
  const auto columns = in.i16();
  if (!in.ok || columns < 2) return std::nullopt;
  std::uint64_t numbers[2] = {0, 0};
  for (auto& number : numbers) {
    const auto length = in.i32();
    if (length <= 0 || length > 20 || (!text_numbers && length != 8)) return std::nullopt;
    auto bytes = in.take(static_cast<std::size_t>(length));
    if (!in.ok) return std::nullopt;
    for (char c : bytes) {
      if (!text_numbers) {
        number = (number << 8) | static_cast<std::uint8_t>(c);
      } else if (c >= '0' && c <= '9') {
        number = number * 10 + static_cast<std::uint64_t>(c - '0');
      } else {
        return std::nullopt;
      }
    }
  }
  BatchRow row;
  row.ordinal = numbers[0];
  const auto rest = frame.subspan(5 + in.at);
  protocol::Buffer built;
  protocol::MessageBuilder(built).begin('D').int16(static_cast<std::int16_t>(columns - 2)).bytes(protocol::as_string_view(rest)).end();
  row.row.assign(built.begin(), built.end());
  return row;
}

std::string select_complete(std::uint64_t rows) {
  protocol::Buffer built;
  protocol::MessageBuilder(built).begin('C').cstring("SELECT " + std::to_string(rows)).end();
  return std::string(built.begin(), built.end());
}

}  // namespace pgsluice::coalesce
