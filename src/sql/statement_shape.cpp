// Statement fingerprints and normalized texts from libpg_query (see statement_shape.hpp).
#include "pgsluice/sql/statement_shape.hpp"

#include <pg_query.h>

namespace pgsluice::sql {

std::optional<StatementShape> statement_shape(std::string_view text) {
  const std::string input(text.substr(0, text.find('\0')));
  PgQueryFingerprintResult fingerprint = pg_query_fingerprint(input.c_str());
  if (fingerprint.error != nullptr || fingerprint.fingerprint_str == nullptr) {
    pg_query_free_fingerprint_result(fingerprint);
    return std::nullopt;
  }
  StatementShape out;
  out.fingerprint = fingerprint.fingerprint_str;
  pg_query_free_fingerprint_result(fingerprint);
  PgQueryNormalizeResult normalized = pg_query_normalize(input.c_str());
  if (normalized.error != nullptr || normalized.normalized_query == nullptr) {
    pg_query_free_normalize_result(normalized);
    return std::nullopt;
  }
  out.normalized = normalized.normalized_query;
  pg_query_free_normalize_result(normalized);
  return out;
}

}  // namespace pgsluice::sql
