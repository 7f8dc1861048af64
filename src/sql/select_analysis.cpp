// A statement's facts for the coalescer, from libpg_query's parse tree (see select_analysis.hpp).
#include "pgsluice/sql/select_analysis.hpp"

#include "pgsluice/sql/statement_shape.hpp"

#include <pg_query.h>

#include <algorithm>
#include <stdexcept>
#include <boost/json.hpp>
#include <cctype>

namespace pgsluice::sql {

namespace json = boost::json;

namespace {

std::string_view string_of(const json::object& node, std::string_view key) {
  auto it = node.find(key);
  if (it == node.end() || !it->value().is_string()) return {};
  const auto& s = it->value().get_string();
  return {s.data(), s.size()};
}

// The sval of a list's last String node ([{"String": {"sval": "count"}}]).
std::string_view last_name(const json::value* names) {
  if (!names || !names->is_array() || names->get_array().empty()) return {};
  const auto& last = names->get_array().back();
  const auto* string = last.is_object() ? last.get_object().if_contains("String") : nullptr;
  return string && string->is_object() ? string_of(string->get_object(), "sval") : std::string_view();
}

void add_unique(std::vector<std::string>& names, std::string_view name) {
  if (name.empty() || std::find(names.begin(), names.end(), name) != names.end()) return;
  names.emplace_back(name);
}

bool contains_reserved(std::string_view text) {
  constexpr std::string_view kReserved = "pgsluice_";
  if (text.size() < kReserved.size()) return false;
  for (std::size_t i = 0; i + kReserved.size() <= text.size(); ++i) {
    std::size_t j = 0;
    while (j < kReserved.size() && std::tolower(static_cast<unsigned char>(text[i + j])) == kReserved[j]) ++j;
    if (j == kReserved.size()) return true;
  }
  return false;
}

// Holds only constants and parameters (sets has_param when it holds a parameter): an expression
// the planner evaluates with the values of an unnamed statement's Bind.
bool constant_only(const json::value& value, bool& has_param) {
  if (value.is_array()) {
    for (const auto& item : value.get_array()) {
      if (!constant_only(item, has_param)) return false;
    }
    return true;
  }
  if (!value.is_object()) return true;
  for (const auto& [key, child] : value.get_object()) {
    if (key == "ColumnRef" || key == "SubLink" || key == "A_Star" || key == "RangeVar" || key == "SelectStmt" ||
        key == "GroupingFunc" || key == "over" || key == "agg_star" || key == "agg_filter" || key == "agg_order" ||
        key == "SetToDefault" || key == "SQLValueFunction") {
      return false;
    }
    if (key == "ParamRef") has_param = true;
    if (!constant_only(child, has_param)) return false;
  }
  return true;
}

bool is_expression(std::string_view key) {
  return key == "A_Expr" || key == "FuncCall" || key == "TypeCast" || key == "CaseExpr" || key == "CoalesceExpr" ||
         key == "MinMaxExpr" || key == "A_ArrayExpr" || key == "A_Indirection" || key == "BoolExpr" ||
         key == "BooleanTest" || key == "CollateClause" || key == "RowExpr" || key == "XmlExpr";
}

void visit(const json::value& value, SelectAnalysis& analysis, std::string_view text) {
  if (value.is_array()) {
    for (const auto& item : value.get_array()) visit(item, analysis, text);
    return;
  }
  if (!value.is_object()) return;
  for (const auto& [key, child] : value.get_object()) {
    if (key == "lockingClause") {
      if (analysis.ineligible.empty()) analysis.ineligible = "locking";
    } else if (key == "intoClause") {
      if (analysis.ineligible.empty()) analysis.ineligible = "into";
    } else if (key == "InsertStmt" || key == "UpdateStmt" || key == "DeleteStmt" || key == "MergeStmt") {
      if (analysis.ineligible.empty()) analysis.ineligible = "modifying_cte";
    } else if (key == "RangeTableSample") {
      if (analysis.ineligible.empty()) analysis.ineligible = "tablesample";
    } else if (child.is_object()) {
      const auto& node = child.get_object();
      if (is_expression(key) && !analysis.computed_parameters) {
        bool has_param = false;
        if (constant_only(child, has_param) && has_param) {
          const auto* arg = node.if_contains("arg");
          const auto* type = node.if_contains("typeName");
          const json::object* param = arg && arg->is_object() ? arg->get_object().if_contains("ParamRef") != nullptr
                                                                    ? &arg->get_object().at("ParamRef").get_object()
                                                                    : nullptr
                                                              : nullptr;
          const bool typmods = type && type->is_object() && type->get_object().contains("typmods");
          if (key == "TypeCast" && param && !typmods) {
            if (const auto* number = param->if_contains("number"); number && number->is_int64()) {
              analysis.cast_parameters.push_back(static_cast<int>(number->get_int64()));
            }
          } else {
            analysis.computed_parameters = true;
          }
        }
      }
      if (key == "FuncCall") {
        add_unique(analysis.functions, last_name(node.if_contains("funcname")));
      } else if (key == "A_Expr") {
        add_unique(analysis.operators, last_name(node.if_contains("name")));
      } else if (key == "RangeVar") {
        SelectAnalysis::Relation relation{std::string(string_of(node, "schemaname")),
                                          std::string(string_of(node, "relname"))};
        const bool known = std::any_of(analysis.relations.begin(), analysis.relations.end(), [&](const auto& r) {
          return r.schema == relation.schema && r.name == relation.name;
        });
        if (!known && !relation.name.empty()) analysis.relations.push_back(std::move(relation));
      } else if (key == "CommonTableExpr") {
        add_unique(analysis.ctes, string_of(node, "ctename"));
      } else if (key == "ParamRef") {
        const auto* number = node.if_contains("number");
        const auto* location = node.if_contains("location");
        if (number && number->is_int64() && location && location->is_int64() && location->get_int64() >= 0) {
          const auto begin = static_cast<std::size_t>(location->get_int64());
          std::size_t end = begin + 1;
          while (end < text.size() && std::isdigit(static_cast<unsigned char>(text[end]))) ++end;
          // A Bind carries at most 65 535 values, so a larger $n can never be bound (the parser
          // keeps the low 32 bits of a longer number); such a statement is not batched.
          constexpr std::int64_t kMaxBindParameters = 65535;
          if (number->get_int64() < 1 || number->get_int64() > kMaxBindParameters) {
            if (analysis.ineligible.empty()) analysis.ineligible = "invalid";
          } else if (begin < text.size() && text[begin] == '$' && end > begin + 1) {
            const int n = static_cast<int>(number->get_int64());
            analysis.parameters.push_back({begin, end, n});
            analysis.highest_parameter = std::max(analysis.highest_parameter, n);
          } else if (analysis.ineligible.empty()) {
            analysis.ineligible = "invalid";  // a parameter not spelled $n where the parser says
          }
        }
      }
    }
    visit(child, analysis, text);
  }
}

}  // namespace

SelectAnalysis analyze_select(std::string_view text) {
  SelectAnalysis analysis;
  const std::string input(text.data(), text.find('\0') == std::string_view::npos ? text.size() : text.find('\0'));
  if (contains_reserved(input)) {
    analysis.ineligible = "reserved_name";
    return analysis;
  }
  PgQueryParseResult result = pg_query_parse(input.c_str());
  if (result.error != nullptr || result.parse_tree == nullptr) {
    pg_query_free_parse_result(result);
    analysis.ineligible = "invalid";
    return analysis;
  }
  json::error_code ec;
  const auto tree = json::parse(result.parse_tree, ec);
  pg_query_free_parse_result(result);
  const json::array* statements = nullptr;
  if (!ec && tree.is_object()) {
    if (const auto* found = tree.get_object().if_contains("stmts"); found && found->is_array()) {
      statements = &found->get_array();
    }
  }
  if (!statements || statements->empty()) {
    analysis.ineligible = statements ? "not_select" : "invalid";
    return analysis;
  }
  if (statements->size() != 1) {
    analysis.ineligible = "several_statements";
    return analysis;
  }
  const auto& raw = (*statements)[0];
  const auto* statement = raw.is_object() ? raw.get_object().if_contains("stmt") : nullptr;
  const auto* select = statement && statement->is_object() ? statement->get_object().if_contains("SelectStmt") : nullptr;
  if (auto shape = statement_shape(input)) {
    analysis.fingerprint = std::move(shape->fingerprint);
    analysis.normalized = std::move(shape->normalized);
  }
  if (!select) {
    analysis.ineligible = "not_select";
    return analysis;
  }
  auto offset = [&](std::string_view key) -> std::size_t {
    const auto* value = raw.get_object().if_contains(key);
    return value && value->is_int64() ? static_cast<std::size_t>(value->get_int64()) : 0;
  };
  analysis.statement_begin = std::min(offset("stmt_location"), input.size());
  const std::size_t length = offset("stmt_len");  // 0: to the end of the text
  analysis.statement_end = length == 0 ? input.size() : std::min(input.size(), analysis.statement_begin + length);
  visit(*select, analysis, input);
  std::sort(analysis.parameters.begin(), analysis.parameters.end(),
            [](const auto& a, const auto& b) { return a.begin < b.begin; });
  for (const auto& parameter : analysis.parameters) {
    if (parameter.begin < analysis.statement_begin || parameter.end > analysis.statement_end) {
      analysis.ineligible = "invalid";
    }
  }
  return analysis;
}

std::string batched_statement(std::string_view text, const SelectAnalysis& analysis, int parameters) {
  if (parameters < 0 || parameters > 65535) throw std::invalid_argument("batched_statement: parameter count out of range");
  std::string out = "SELECT pgsluice_k.pgsluice_ord, pgsluice_s.* FROM unnest(";
  for (int i = 1; i <= parameters; ++i) out += (i > 1 ? ", $" : "$") + std::to_string(i);
  out += ") WITH ORDINALITY AS pgsluice_k(";
  for (int i = 1; i <= parameters; ++i) out += "pgsluice_p" + std::to_string(i) + ", ";
  out += "pgsluice_ord) CROSS JOIN LATERAL (SELECT row_number() OVER () AS pgsluice_rn, pgsluice_q.* FROM (\n";
  // The original, each $i the unnested column (new lines around it: a trailing -- comment ends).
  std::size_t at = analysis.statement_begin;
  for (const auto& parameter : analysis.parameters) {
    out.append(text.substr(at, parameter.begin - at));
    out += "pgsluice_k.pgsluice_p" + std::to_string(parameter.number);
    at = parameter.end;
  }
  out.append(text.substr(at, analysis.statement_end - at));
  out += "\n) AS pgsluice_q) AS pgsluice_s ORDER BY pgsluice_k.pgsluice_ord, pgsluice_s.pgsluice_rn";
  return out;
}

std::shared_ptr<const SelectAnalysis> SelectAnalyzer::analysis_of(std::string_view text) {
  {
    std::lock_guard lock(mutex_);
    if (auto it = cache_.find(text); it != cache_.end()) {
      order_.splice(order_.begin(), order_, it->second.at);
      return it->second.analysis;
    }
  }
  auto analysis = std::make_shared<const SelectAnalysis>(analyze_select(text));  // outside the lock
  std::lock_guard lock(mutex_);
  if (!cache_.contains(text)) {
    order_.emplace_front(text);
    cache_.emplace(std::string_view(order_.front()), Entry{order_.begin(), analysis});
    while (cache_.size() > capacity_) {
      cache_.erase(std::string_view(order_.back()));
      order_.pop_back();
    }
  }
  return analysis;
}

}  // namespace pgsluice::sql
