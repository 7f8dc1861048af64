#pragma once
// A statement's shape, without its values (DESIGN §6: logs never show a parameter value above
// debug): the Postgres parser's fingerprint (the same for texts that differ only in constants,
// spacing and case of keywords) and the text with every constant replaced by $n.
#include <optional>
#include <string>
#include <string_view>

namespace pgsluice::sql {

struct StatementShape {
  std::string fingerprint;  // 16 hex digits
  std::string normalized;   // constants as $1, $2, ...
};

// nullopt when the parser does not read `text` (not SQL).
std::optional<StatementShape> statement_shape(std::string_view text);

}  // namespace pgsluice::sql
