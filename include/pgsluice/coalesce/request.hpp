#pragma once
// The coalescer's requests and outcomes as bytes (DESIGN §4), with no sockets: a client's one
// statement as it sent it, what one execution of it gave, and the exact messages that client gets
// for it, as Postgres would have sent them had it run the statement alone. Unit-tested on bytes.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pgsluice/protocol/builder.hpp"
#include "pgsluice/protocol/message.hpp"

namespace pgsluice::coalesce {

inline protocol::Bytes bytes_of(std::string_view text) {
  return {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()};
}

// A Bind's formats, values and result formats (BindView::rest), split.
struct BindParts {
  std::vector<std::int16_t> parameter_formats;  // as sent: none (all text), one (for all) or one each
  std::vector<std::optional<std::string_view>> values;  // nullopt: NULL
  std::vector<std::int16_t> result_formats;     // as sent
  // The format of parameter i (0 text, 1 binary), as Postgres reads the codes.
  std::int16_t parameter_format(std::size_t i) const {
    if (parameter_formats.empty()) return 0;
    return parameter_formats.size() == 1 ? parameter_formats[0] : parameter_formats[i];
  }
};
// nullopt: not a well-formed Bind rest (the server will say why, not the coalescer).
std::optional<BindParts> split_bind(protocol::Bytes rest);

// What one statement gave when it ran alone: Parse? / Describe S / Bind / Execute / Sync of the
// canonical order, or, for a simple Query, its whole reply.
struct Outcome {
  enum class Stage : std::uint8_t { none, parse, bind, execute };
  Stage failed_at = Stage::none;
  std::string error;                  // the ErrorResponse frame (failed_at != none)
  std::string parameter_description;  // 't' frame
  std::string row_description;        // 'T' frame (format codes 0) or 'n' NoData
  std::string rows;                   // DataRow (and NoticeResponse) frames of the execution, in order
  std::string complete;               // 'C' frame
  std::string simple_reply;           // a simple Query's reply, up to its ReadyForQuery included
  std::uint64_t row_count = 0;        // DataRows in it
};

// What a client sent for its statement, in its order: 'P' Parse, 's' Describe statement, 'B' Bind,
// 'p' Describe portal, 'E' Execute (then Sync).
struct Steps {
  std::string order;
  std::vector<std::int16_t> result_formats;  // the Bind's, for a Describe portal's RowDescription
  std::string statement;  // the client's name for its statement (errors name it, not the unnamed one run)
};

// The client's reply for `outcome`: every message up to its ReadyForQuery, as Postgres sends them
// for its steps, stopping at the first error. False when the outcome cannot answer these steps
// (no row description where a Describe needs one), which the caller treats as a failed execution.
bool render(const Steps& steps, const Outcome& outcome, protocol::Buffer& out);

// RowDescription ('T' frame) with the format codes a Bind with `result_formats` gives its portal.
std::optional<std::string> with_result_formats(std::string_view row_description,
                                               const std::vector<std::int16_t>& result_formats);

// A one-dimensional array of `values` as the server reads an array parameter: text ({"a",NULL}) or
// binary (array_recv: element type `element_oid`).
std::string text_array(const std::vector<std::optional<std::string_view>>& values);
std::string binary_array(const std::vector<std::optional<std::string_view>>& values, std::uint32_t element_oid);

// A batched execution's DataRow: its first two columns (request ordinal, row number: int8, in text
// or binary) read and removed. nullopt: not such a row.
struct BatchRow {
  std::uint64_t ordinal = 0;
  std::string row;  // the DataRow frame without them
};
std::optional<BatchRow> split_batch_row(protocol::Bytes frame, bool text_numbers);

// "SELECT n".
std::string select_complete(std::uint64_t rows);

}  // namespace pgsluice::coalesce
