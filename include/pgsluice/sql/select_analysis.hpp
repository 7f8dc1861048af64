#pragma once
// What the coalescer (DESIGN §4) needs to know about a statement text, from the Postgres 15 parser
// (libpg_query), once per distinct text: whether it is one read-only SELECT by its syntax, the
// functions, operators and relations it names (whose volatility and kind only the server's catalog
// can tell), and where its $n parameters are, to write the batched form of it.
#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace pgsluice::sql {

struct SelectAnalysis {
  // Not a single read-only SELECT by its syntax: why, as a metric label (empty: it is one).
  //   not_select, several_statements, invalid, locking, into, modifying_cte, tablesample,
  //   reserved_name (it names something pgsluice_..., which the batched form uses)
  std::string ineligible;
  std::vector<std::string> functions;  // function names called (the last part, as the parser folds it)
  std::vector<std::string> operators;  // operator names (=, ~~, ...)
  struct Relation {
    std::string schema;  // empty: found through search_path
    std::string name;
  };
  std::vector<Relation> relations;  // tables and views it reads (not its CTEs)
  std::vector<std::string> ctes;    // names of WITH queries (an unqualified relation of that name is one)
  struct Parameter {
    std::size_t begin = 0;  // the $n token in the text
    std::size_t end = 0;
    int number = 0;
  };
  std::vector<Parameter> parameters;  // in text order
  int highest_parameter = 0;
  // Postgres plans an unnamed statement with its values as constants and evaluates expressions of
  // constants and parameters alone while planning (1000 / $2 fails with 22012 at Bind even when no
  // row matches); in the batched form they are evaluated per row, so such a statement is shared
  // between equal values only, never batched. A parameter that is only cast ($1::int, no type
  // modifier) is the exception when the client declared no type for it (the cast is its type).
  bool computed_parameters = false;
  std::vector<int> cast_parameters;  // numbers of parameters that appear under such a bare cast
  std::string fingerprint;  // libpg_query's (16 hex digits): the same for texts that differ in constants
  std::string normalized;   // the text with its constants as $n (for logs and SHOW STATEMENTS)
  std::size_t statement_begin = 0;  // the statement in the text, without a trailing semicolon
  std::size_t statement_end = 0;

  bool eligible() const { return ineligible.empty(); }
};

SelectAnalysis analyze_select(std::string_view text);

// The batched form of an eligible statement taking `parameters` parameters: every request's values
// as one array per parameter ($1 ... $n, arrays of the original's parameter types), unnested WITH
// ORDINALITY and joined LATERAL to the original, whose $i become the unnested columns. Its columns:
// the request's ordinal (int8), the row's number within that request (int8), then the original's
// columns; its rows ordered by both, so each request's rows come in the original's order.
std::string batched_statement(std::string_view text, const SelectAnalysis& analysis, int parameters);

// analyze_select with a bounded cache of distinct texts, shared by every session (thread-safe).
class SelectAnalyzer {
 public:
  explicit SelectAnalyzer(std::size_t capacity = 4096) : capacity_(capacity) {}
  std::shared_ptr<const SelectAnalysis> analysis_of(std::string_view text);

 private:
  std::size_t capacity_;
  std::mutex mutex_;
  std::list<std::string> order_;  // most recently used first
  struct Entry {
    std::list<std::string>::iterator at;
    std::shared_ptr<const SelectAnalysis> analysis;
  };
  std::unordered_map<std::string_view, Entry> cache_;
};

}  // namespace pgsluice::sql
