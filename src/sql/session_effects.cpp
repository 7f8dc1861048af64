#include "pgsluice/sql/session_effects.hpp"

#include <pg_query.h>

#include <algorithm>
#include <array>
#include <boost/json.hpp>
#include <cctype>
#include <cstdint>
#include <string>

namespace pgsluice::sql {

namespace json = boost::json;

namespace {

// SQL keywords are ASCII, and so is their case folding here (std::tolower is a call into the C
// library per character: may_have_session_effects runs on every statement a pooled client sends,
// and its scans of the text were 8 % of the relay's user CPU at pgbench -S).
constexpr char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  }
  return true;
}

bool icontains(std::string_view text, std::string_view needle) {
  if (needle.empty()) return true;
  if (needle.size() > text.size()) return false;
  const char first = ascii_lower(needle[0]);
  for (std::size_t i = 0; i + needle.size() <= text.size(); ++i) {
    if (ascii_lower(text[i]) == first && iequals(text.substr(i + 1, needle.size() - 1), needle.substr(1))) return true;
  }
  return false;
}

// The first keyword after white space, comments and opening parentheses.
std::string_view first_word(std::string_view text) {
  std::size_t i = 0;
  for (;;) {
    while (i < text.size() && (std::isspace(static_cast<unsigned char>(text[i])) || text[i] == '(')) ++i;
    if (text.substr(i, 2) == "--") {
      while (i < text.size() && text[i] != '\n') ++i;
    } else if (text.substr(i, 2) == "/*") {
      auto end = text.find("*/", i + 2);
      i = end == std::string_view::npos ? text.size() : end + 2;
    } else {
      break;
    }
  }
  std::size_t end = i;
  while (end < text.size() && std::isalpha(static_cast<unsigned char>(text[end]))) ++end;
  return text.substr(i, end - i);
}

// Statements that may change what a session carries; everything else (SELECT, INSERT, UPDATE,
// DELETE, WITH, VALUES, BEGIN, COMMIT, ...) never does on its own.
constexpr std::array<std::string_view, 13> kEffectKeywords = {
    "SET",  "RESET", "DISCARD", "LISTEN",  "UNLISTEN",   "DECLARE", "CREATE",
    "DROP", "CLOSE", "PREPARE", "EXECUTE", "DEALLOCATE", "EXPLAIN"};

// Token codes of libpg_query's scanner (pg_query.proto, enum Token).
constexpr int kTokenAll = 285;
constexpr int kTokenDeallocate = 371;
constexpr int kTokenExecute = 409;
constexpr int kTokenPrepare = 574;

struct ScanToken {
  std::size_t begin = 0;
  std::size_t end = 0;
  int token = 0;
};

// pg_query_scan's answer is a protobuf ScanResult { repeated ScanToken tokens = 2 } with ScanToken
// { int32 start = 1; int32 end = 2; Token token = 4; KeywordKind keyword_kind = 5 }: decoded here,
// varints and length-delimited fields only, which is all that message uses.
bool read_varint(const std::uint8_t*& at, const std::uint8_t* end, std::uint64_t& value) {
  value = 0;
  for (int shift = 0; at < end && shift < 64; shift += 7) {
    const std::uint8_t byte = *at++;
    value |= std::uint64_t{byte & 0x7fu} << shift;
    if ((byte & 0x80u) == 0) return true;
  }
  return false;
}

std::vector<ScanToken> scan_tokens(const std::string& text) {
  std::vector<ScanToken> tokens;
  PgQueryScanResult result = pg_query_scan(text.c_str());
  if (result.error == nullptr) {
    const auto* at = reinterpret_cast<const std::uint8_t*>(result.pbuf.data);
    const auto* end = at + result.pbuf.len;
    std::uint64_t key = 0;
    std::uint64_t value = 0;
    while (at < end && read_varint(at, end, key)) {
      if ((key & 7u) == 0) {  // a varint field of ScanResult (version)
        if (!read_varint(at, end, value)) break;
        continue;
      }
      if ((key & 7u) != 2 || !read_varint(at, end, value) || value > static_cast<std::uint64_t>(end - at)) break;
      const auto* field_end = at + value;
      if ((key >> 3) == 2) {
        ScanToken token;
        while (at < field_end && read_varint(at, field_end, key) && (key & 7u) == 0 && read_varint(at, field_end, value)) {
          switch (key >> 3) {
            case 1: token.begin = static_cast<std::size_t>(value); break;
            case 2: token.end = static_cast<std::size_t>(value); break;
            case 4: token.token = static_cast<int>(value); break;
            default: break;
          }
        }
        tokens.push_back(token);
      }
      at = field_end;
    }
  }
  pg_query_free_scan_result(result);
  return tokens;
}

// The statement's name token: the one after its `keyword` (DEALLOCATE takes an optional PREPARE).
void add_name_ref(PreparedNameRef::Kind kind, std::string_view name, int keyword, std::size_t begin,
                  std::size_t end, const std::vector<ScanToken>& tokens, SessionEffects& effects) {
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i].begin < begin || tokens[i].begin >= end || tokens[i].token != keyword) continue;
    std::size_t at = i + 1;
    if (kind == PreparedNameRef::Kind::deallocate && at < tokens.size() && tokens[at].token == kTokenPrepare) ++at;
    if (at >= tokens.size() || tokens[at].begin >= end || tokens[at].token == kTokenAll) return;
    effects.prepared.push_back({kind, std::string(name), tokens[at].begin, tokens[at].end, begin, end});
    return;
  }
}

constexpr std::array<std::string_view, 4> kAdvisoryLocks = {"pg_advisory_lock", "pg_advisory_lock_shared",
                                                            "pg_try_advisory_lock", "pg_try_advisory_lock_shared"};
constexpr std::array<std::string_view, 3> kAdvisoryUnlocks = {"pg_advisory_unlock", "pg_advisory_unlock_shared",
                                                              "pg_advisory_unlock_all"};

// DeclareCursorStmt options: CURSOR_OPT_HOLD (src/include/nodes/parsenodes.h).
constexpr std::int64_t kCursorOptHold = 0x0020;

std::string_view string_of(const json::object& node, std::string_view key) {
  auto it = node.find(key);
  if (it == node.end() || !it->value().is_string()) return {};
  const auto& s = it->value().get_string();
  return {s.data(), s.size()};
}

bool is_one_of(std::string_view name, const auto& names) {
  for (auto candidate : names) {
    if (name == candidate) return true;
  }
  return false;
}

// Anywhere in a statement: calls of advisory-lock functions and temporary relations.
void visit_tree(const json::value& value, SessionEffects& effects) {
  if (value.is_array()) {
    for (const auto& item : value.get_array()) visit_tree(item, effects);
    return;
  }
  if (!value.is_object()) return;
  const auto& object = value.get_object();
  for (const auto& [key, child] : object) {
    if (key == "relpersistence" && child.is_string() && child.get_string() == "t") effects.pins = true;
    if (key == "schemaname" && child.is_string() && child.get_string().starts_with("pg_temp")) effects.pins = true;
    if (key == "FuncCall" && child.is_object()) {
      const auto* names = child.get_object().if_contains("funcname");
      if (names && names->is_array() && !names->get_array().empty()) {
        const auto& last = names->get_array().back();
        std::string_view name;
        if (const auto* string = last.is_object() ? last.get_object().if_contains("String") : nullptr) {
          if (string->is_object()) name = string_of(string->get_object(), "sval");
        }
        if (is_one_of(name, kAdvisoryLocks)) effects.pins = true;
        if (is_one_of(name, kAdvisoryUnlocks)) effects.may_unpin = true;
      }
    }
    visit_tree(child, effects);
  }
}

std::string_view execute_name(const json::object& body) {
  const auto* query = body.if_contains("query");
  const auto* execute = query && query->is_object() ? query->get_object().if_contains("ExecuteStmt") : nullptr;
  return execute && execute->is_object() ? string_of(execute->get_object(), "name") : std::string_view();
}

// One top-level statement (a RawStmt's "stmt": {"NodeType": {...}}) at [begin, end) of the text.
void visit_statement(const json::object& statement, std::size_t begin, std::size_t end,
                     const std::vector<ScanToken>& tokens, SessionEffects& effects) {
  using Kind = PreparedNameRef::Kind;
  for (const auto& [type, body_value] : statement) {
    if (!body_value.is_object()) continue;
    const auto& body = body_value.get_object();
    if (type == "PrepareStmt") {
      const auto before = effects.prepared.size();
      add_name_ref(Kind::prepare, string_of(body, "name"), kTokenPrepare, begin, end, tokens, effects);
      const auto* types = body.if_contains("argtypes");
      if (effects.prepared.size() > before && types && types->is_array()) {
        effects.prepared.back().declared_types = static_cast<int>(types->get_array().size());
      }
    } else if (type == "ExecuteStmt") {
      add_name_ref(Kind::execute, string_of(body, "name"), kTokenExecute, begin, end, tokens, effects);
    } else if (type == "DeallocateStmt") {
      if (auto name = string_of(body, "name"); !name.empty()) {
        add_name_ref(Kind::deallocate, name, kTokenDeallocate, begin, end, tokens, effects);
      }
    } else if (type == "ExplainStmt" || type == "CreateTableAsStmt") {
      if (auto name = execute_name(body); !name.empty()) {
        add_name_ref(Kind::execute, name, kTokenExecute, begin, end, tokens, effects);
      }
    }
    if (type == "VariableSetStmt") {
      const auto* local = body.if_contains("is_local");
      if (local && local->is_bool() && local->get_bool()) continue;  // SET LOCAL ends with its transaction
      const auto kind = string_of(body, "kind");
      const auto name = string_of(body, "name");
      if (kind == "VAR_SET_VALUE" && !iequals(name, "DateStyle")) {  // DateStyle keeps half of what it had
        bool constants = true;
        if (const auto* args = body.if_contains("args"); args && args->is_array()) {
          for (const auto& arg : args->get_array()) {
            constants = constants && arg.is_object() && arg.get_object().contains("A_Const");
          }
        }
        if (constants) effects.literal = std::make_shared<SessionEffects::LiteralSetting>();
      }
      if (kind == "VAR_RESET_ALL") {
        effects.reset_all = true;
      } else if (kind == "VAR_SET_MULTI") {
        if (name == "SESSION CHARACTERISTICS") {
          for (const char* setting :
               {"default_transaction_isolation", "default_transaction_read_only", "default_transaction_deferrable"}) {
            effects.settings.emplace_back(setting);
          }
        }  // SET TRANSACTION ...: this transaction only
      } else if (!name.empty()) {
        effects.settings.emplace_back(name);
        if (kind == "VAR_RESET" || kind == "VAR_SET_DEFAULT") {
          effects.resets.emplace_back(name);
        } else {
          std::erase(effects.resets, name);  // set again after its RESET
        }
      }
    } else if (type == "DiscardStmt") {
      const auto target = string_of(body, "target");
      if (target == "DISCARD_ALL") effects.reset_all = effects.discard_all = true;
      if (target == "DISCARD_ALL" || target == "DISCARD_TEMP") effects.may_unpin = true;
    } else if (type == "ListenStmt") {
      effects.pins = true;
      effects.listens.push_back({true, std::string(string_of(body, "conditionname"))});
    } else if (type == "UnlistenStmt") {
      effects.may_unpin = true;
      effects.listens.push_back({false, std::string(string_of(body, "conditionname"))});
    } else if (type == "ClosePortalStmt" || type == "DropStmt") {
      effects.may_unpin = true;
    } else if (type == "DeclareCursorStmt") {
      const auto* options = body.if_contains("options");
      if (options && options->is_int64() && (options->get_int64() & kCursorOptHold) != 0) effects.pins = true;
    }
    visit_tree(body_value, effects);
  }
}

}  // namespace

bool may_have_session_effects(std::string_view text) {
  const auto word = first_word(text);
  for (auto keyword : kEffectKeywords) {
    if (iequals(word, keyword)) return true;
  }
  // Several statements: any of them may have effects (a ';' inside a literal only costs a parse).
  if (auto semicolon = text.find(';'); semicolon != std::string_view::npos) {
    for (std::size_t i = semicolon + 1; i < text.size(); ++i) {
      const char c = text[i];
      if (c != ';' && c != '\0' && !std::isspace(static_cast<unsigned char>(c))) return true;
    }
  }
  // SELECT ... INTO TEMP creates a temporary table, as CREATE TEMP TABLE ... AS does.
  if ((iequals(word, "SELECT") || iequals(word, "WITH")) && icontains(text, "into") && icontains(text, "temp")) {
    return true;
  }
  return icontains(text, "advisory");
}

bool starts_copy(std::string_view text) { return iequals(first_word(text), "COPY"); }

int highest_parameter(std::string_view text) {
  constexpr int kTokenParam = 267;  // $n
  const std::string input(text.data(), text.find('\0') == std::string_view::npos ? text.size() : text.find('\0'));
  if (input.find('$') == std::string::npos) return 0;
  int highest = 0;
  for (const auto& token : scan_tokens(input)) {
    if (token.token != kTokenParam || token.end > input.size() || token.end <= token.begin + 1) continue;
    int number = 0;
    for (std::size_t i = token.begin + 1; i < token.end && number < 100000; ++i) {
      if (!std::isdigit(static_cast<unsigned char>(input[i]))) break;
      number = number * 10 + (input[i] - '0');
    }
    highest = std::max(highest, number);
  }
  return highest;
}

SessionEffects analyze(std::string_view text) {
  SessionEffects effects;
  const std::string input(text.data(), text.find('\0') == std::string_view::npos ? text.size() : text.find('\0'));
  PgQueryParseResult result = pg_query_parse(input.c_str());
  if (result.error != nullptr || result.parse_tree == nullptr) {
    effects.valid = false;
    pg_query_free_parse_result(result);
    return effects;
  }
  json::error_code ec;
  const auto tree = json::parse(result.parse_tree, ec);
  pg_query_free_parse_result(result);
  if (ec || !tree.is_object()) {
    effects.valid = false;
    return effects;
  }
  std::vector<ScanToken> tokens;
  if (icontains(input, "PREPARE") || icontains(input, "EXECUTE") || icontains(input, "DEALLOCATE")) {
    tokens = scan_tokens(input);
  }
  if (const auto* statements = tree.get_object().if_contains("stmts"); statements && statements->is_array()) {
    for (const auto& raw : statements->get_array()) {
      if (!raw.is_object()) continue;
      const auto& raw_statement = raw.get_object();
      auto offset = [&](std::string_view key) -> std::size_t {
        const auto* value = raw_statement.if_contains(key);
        return value && value->is_int64() ? static_cast<std::size_t>(value->get_int64()) : 0;
      };
      const std::size_t begin = offset("stmt_location");
      const std::size_t length = offset("stmt_len");  // 0: to the end of the text
      const std::size_t end = length == 0 ? input.size() : std::min(input.size(), begin + length);
      ++effects.statements;
      if (const auto* statement = raw_statement.if_contains("stmt"); statement && statement->is_object()) {
        visit_statement(statement->get_object(), begin, end, tokens, effects);
      }
    }
  }
  if (effects.statements != 1 || effects.settings.size() != 1 || effects.reset_all || effects.pins ||
      effects.may_unpin || !effects.prepared.empty()) {
    effects.literal.reset();
  }
  return effects;
}

std::shared_ptr<const SessionEffects> Analyzer::effects_of(std::string_view text) {
  if (!may_have_session_effects(text)) return nullptr;
  {
    std::lock_guard lock(mutex_);
    if (auto it = cache_.find(text); it != cache_.end()) {
      order_.splice(order_.begin(), order_, it->second.at);
      return it->second.effects->any() ? it->second.effects : nullptr;
    }
  }
  auto effects = std::make_shared<const SessionEffects>(analyze(text));  // outside the lock: the parse is the cost
  std::lock_guard lock(mutex_);
  if (!cache_.contains(text)) {
    order_.emplace_front(text);
    cache_.emplace(std::string_view(order_.front()), Entry{order_.begin(), effects});
    while (cache_.size() > capacity_) {
      cache_.erase(std::string_view(order_.back()));
      order_.pop_back();
    }
  }
  return effects->any() ? effects : nullptr;
}

}  // namespace pgsluice::sql
