// libFuzzer target: the sql/ classifier over statement text as a client sends it in a Query or a
// Parse: the pre-parse screen (may_have_session_effects, starts_copy, highest_parameter), session
// effects (analyze, and Analyzer's cache in front of it), the statement shape (fingerprint and
// normalized text) and the coalescer's SELECT analysis with the batched statement built from it.
// The text goes to the Postgres parser (libpg_query) and its JSON tree is walked by our code: none
// may crash, leak or index the text outside itself.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz_check.hpp"
#include "pgsluice/sql/select_analysis.hpp"
#include "pgsluice/sql/session_effects.hpp"
#include "pgsluice/sql/statement_shape.hpp"

using namespace pgsluice::sql;

namespace {

void check_effects(std::string_view text, std::string_view parsed) {
  const auto effects = analyze(text);
  for (const auto& name : effects.prepared) {
    FUZZ_CHECK(name.name_begin <= name.name_end && name.name_end <= parsed.size());
    FUZZ_CHECK(name.statement_begin <= name.statement_end && name.statement_end <= parsed.size());
  }
  FUZZ_CHECK(effects.listens.size() <= effects.statements);
  // A small cache, so that eviction runs too.
  static Analyzer analyzer(8);
  (void)analyzer.effects_of(text);
}

void check_select(std::string_view text, std::string_view parsed) {
  static SelectAnalyzer analyzer(8);
  const auto analysis = analyzer.analysis_of(text);
  FUZZ_CHECK(analysis->statement_begin <= analysis->statement_end &&
             analysis->statement_end <= parsed.size());
  if (!analysis->eligible()) return;
  for (const auto& parameter : analysis->parameters) {
    FUZZ_CHECK(parameter.begin >= analysis->statement_begin && parameter.begin < parameter.end &&
               parameter.end <= analysis->statement_end);
  }
  (void)batched_statement(parsed, *analysis, analysis->highest_parameter);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  // What the parser sees: a Query's text ends at its NUL.
  const std::string_view parsed = text.substr(0, text.find('\0'));
  (void)may_have_session_effects(text);
  (void)starts_copy(text);
  FUZZ_CHECK(highest_parameter(text) >= 0);
  check_effects(text, parsed);
  (void)statement_shape(text);
  check_select(text, parsed);
  return 0;
}
