#include "pgsluice/session/statement_tracker.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <fmt/format.h>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "pgsluice/protocol/backend_messages.hpp"
#include "pgsluice/protocol/builder.hpp"
#include "pgsluice/protocol/frontend_messages.hpp"
#include "pgsluice/server/parameter_map.hpp"

namespace pgsluice::session {

using protocol::Buffer;
using protocol::Bytes;

namespace {

Bytes bytes_of(const std::string& text) { return {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()}; }

// Case-insensitive keyword match at the front of `text`, after white space; advances past it.
bool take_keyword(std::string_view& text, std::string_view keyword) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.remove_prefix(1);
  if (text.size() < keyword.size()) return false;
  for (std::size_t i = 0; i < keyword.size(); ++i) {
    // ASCII folding inline (keywords are ASCII): std::toupper is a C library call, and every Query
    // of a pooled client is looked at for DEALLOCATE and DISCARD ALL.
    const char c = text[i];
    if ((c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c) != keyword[i]) return false;
  }
  if (text.size() > keyword.size()) {
    const char next = text[keyword.size()];
    if (std::isalnum(static_cast<unsigned char>(next)) || next == '_') return false;
  }
  text.remove_prefix(keyword.size());
  return true;
}

// An identifier as DEALLOCATE takes it: bare (folded to lower case) or double-quoted.
std::optional<std::string> take_identifier(std::string_view& text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.remove_prefix(1);
  std::string name;
  if (!text.empty() && text.front() == '"') {
    std::size_t i = 1;
    for (; i < text.size(); ++i) {
      if (text[i] == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          name.push_back('"');
          ++i;
          continue;
        }
        break;
      }
      name.push_back(text[i]);
    }
    if (i >= text.size()) return std::nullopt;
    text.remove_prefix(i + 1);
    return name;
  }
  std::size_t i = 0;
  while (i < text.size() && (std::isalnum(static_cast<unsigned char>(text[i])) || text[i] == '_' || text[i] == '$')) {
    name.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(text[i]))));
    ++i;
  }
  if (name.empty()) return std::nullopt;
  text.remove_prefix(i);
  return name;
}

bool only_terminator_left(std::string_view text) {
  for (char c : text) {
    if (c != ';' && c != '\0' && !std::isspace(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// "DEALLOCATE [PREPARE] name|ALL [;]": the name ("" for ALL), or nothing for any other statement.
std::optional<std::string> deallocate_target(std::string_view text) {
  if (!text.empty() && text.back() == '\0') text.remove_suffix(1);
  if (!take_keyword(text, "DEALLOCATE")) return std::nullopt;
  take_keyword(text, "PREPARE");
  std::string_view all = text;
  if (take_keyword(all, "ALL") && only_terminator_left(all)) return std::string();
  auto name = take_identifier(text);
  if (!name || name->empty() || !only_terminator_left(text)) return std::nullopt;
  return name;
}

// What Describes of shared server statements showed, for every session: a statement missing from
// a connection in a failed transaction is described (and its Bind checked) from it, where pgsluice
// can no longer parse it there. Keyed by server name (text and types); bounded, dropped when full.
class Descriptions {
 public:
  struct Described {
    std::string parameters;  // ParameterDescription's payload (empty: not seen)
    std::int8_t returns_rows = -1;
  };
  static Descriptions& instance() {
    static Descriptions descriptions;
    return descriptions;
  }
  void set_parameters(const std::string& server_name, std::string_view payload) {
    std::lock_guard lock(mutex_);
    make_room();
    map_[server_name].parameters.assign(payload);
  }
  void set_returns_rows(const std::string& server_name, bool rows) {
    std::lock_guard lock(mutex_);
    make_room();
    map_[server_name].returns_rows = rows ? 1 : 0;
  }
  Described find(const std::string& server_name) {
    std::lock_guard lock(mutex_);
    auto it = map_.find(server_name);
    return it == map_.end() ? Described{} : it->second;
  }

 private:
  void make_room() {
    if (map_.size() >= 8192) map_.clear();
  }
  std::mutex mutex_;
  std::unordered_map<std::string, Described> map_;
};

// Tokens of client Parses of the unnamed statement, unique in the process (ServerStatements keeps
// the one whose statement a connection holds; 0 and 1 mean unknown and none).
std::uint64_t next_unnamed_token() {
  static std::atomic<std::uint64_t> next{2};
  return next.fetch_add(1, std::memory_order_relaxed);
}

// DEALLOCATE ALL or DISCARD ALL alone: it drops every named statement of the session when it runs.
bool drops_all_statements(std::string_view text) {
  if (!text.empty() && text.back() == '\0') text.remove_suffix(1);
  if (auto target = deallocate_target(text); target && target->empty()) return true;
  return take_keyword(text, "DISCARD") && take_keyword(text, "ALL") && only_terminator_left(text);
}

}  // namespace

std::string StatementTracker::server_name(std::string_view query, Bytes parameter_types) {
  // FNV-1a, 64 bits: stable across processes and versions, unlike std::hash.
  std::uint64_t hash = 1469598103934665603ull;
  auto mix = [&hash](std::string_view bytes) {
    for (unsigned char c : bytes) {
      hash ^= c;
      hash *= 1099511628211ull;
    }
  };
  mix(query);
  mix(std::string_view("\0", 1));
  mix(protocol::as_string_view(parameter_types));
  return fmt::format("pgsluice_{:016x}", hash);
}

void StatementTracker::expect_fake(Buffer reply) {
  auto& expectation = queue_.emplace_back(Kind::parse);
  expectation.fake = true;
  queue_.detail(expectation).reply = std::move(reply);
}

void StatementTracker::ensure_on_server(const Statement& statement, server::ServerStatements& server,
                                        Outgoing& to_server) {
  if (server.contains(statement.server_name)) {
    server.touch(statement.server_name);
    return;
  }
  if (!statement.sql_prepare.empty()) {
    // An SQL PREPARE's statement: re-created by its own text (it has no Parse form).
    inject_statement(statement, server, to_server, /*in_batch=*/true);
    return;
  }
  send_parse(statement, server, to_server, /*client_name=*/{});
}

void StatementTracker::send_parse(const Statement& statement, server::ServerStatements& server,
                                  Outgoing& to_server, std::string client_name) {
  const bool replaces_copy = close_if_stale(statement.server_name, server, to_server);
  if (auto victim = server.evict_if_full()) {
    protocol::append_close(to_server.build(), 'S', *victim);
    auto& close = queue_.emplace_back(Kind::close);
    close.swallow = true;
    close.eviction = true;
    queue_.detail(close).server_name = std::move(*victim);
  }
  server.add(statement.server_name);
  protocol::append_parse(to_server.build(), statement.server_name, statement.query, bytes_of(statement.parameter_types));
  // The client's own Parse is answered to it; one pgsluice injects (no client name) is swallowed.
  auto& parse = queue_.emplace_back(Kind::parse);
  parse.swallow = client_name.empty();
  auto& detail = queue_.detail(parse);
  detail.server_name = statement.server_name;
  detail.serial = statement.serial;
  detail.keeps_copy = replaces_copy;
  if (client_name.empty()) return;
  detail.client_name = client_name;
  unlearned_ = {std::move(client_name), statement.server_name};
}

void StatementTracker::learn_statement(const protocol::MessageView& next, Outgoing& to_server) {
  // What the statement takes and whether it returns rows: in a failed transaction Postgres still
  // describes it, where pgsluice can no longer parse it (see client_message). Most drivers describe
  // it themselves right after their Parse, which teaches the same.
  auto [client_name, server_name] = std::exchange(unlearned_, {});
  if (skip_until_sync_) return;
  if (next.type == 'D') {
    auto describe = protocol::parse_describe_or_close(next.payload);
    if (describe && describe->kind == 'S' && describe->name == client_name) return;
  }
  protocol::append_describe(to_server.build(), 'S', server_name);
  auto& describe = queue_.emplace_back(Kind::describe_statement);
  describe.swallow = true;
  describe.learning = true;
  auto& learn = queue_.detail(describe);
  learn.server_name = std::move(server_name);
  learn.described = std::move(client_name);
}

bool StatementTracker::close_if_stale(const std::string& name, server::ServerStatements& server,
                                      Outgoing& to_server) {
  if (!server.take_stale(name)) return false;
  server.forget(name);
  protocol::append_close(to_server.build(), 'S', name);
  expect(Kind::close, /*swallow=*/true);
  queue_.detail(queue_.back()).server_name = name;
  queue_.back().eviction = true;  // if skipped, the statement is still there (see abandon)
  return true;
}

void StatementTracker::verify_shape(const std::string& server_name, Outgoing& to_server) {
  protocol::append_describe(to_server.build(), 'S', server_name);
  protocol::append_flush(to_server.build());  // answered now, not at the client's Sync
  auto& describe = queue_.emplace_back(Kind::describe_statement);
  describe.swallow = true;
  describe.verification = true;
  queue_.detail(describe).server_name = server_name;
  awaiting_shape_ = true;
  verified_ = server_name;
}

void StatementTracker::append_stale_plan_error(Buffer& out) {
  protocol::append_error_response(out, protocol::Severity::error, "0A000", "cached plan must not change result type",
                                  {}, {}, "RevalidateCachedQuery");
}

void StatementTracker::ensure_unnamed_on_server(server::ServerStatements& server, Outgoing& to_server) {
  // The unnamed statement lives on one server connection, which other clients use in between: a
  // client that moved, or came back after another client parsed its own unnamed statement there,
  // gets its own parsed again (PgBouncer fails the first case; drivers such as pgjdbc, asyncpg and
  // Bun rely on it). A client without one makes sure nobody else's is there either.
  if (unnamed_.exists) {
    if (server.unnamed_owner() == unnamed_.token) return;
    protocol::append_parse(to_server.build(), "", unnamed_.query, bytes_of(unnamed_.parameter_types));
    auto& parse = queue_.emplace_back(Kind::parse);
    parse.swallow = true;
    parse.unnamed = true;
    server.set_unnamed_owner(unnamed_.token);
    return;
  }
  if (server.unnamed_owner() == server::ServerStatements::kNoUnnamed) return;
  protocol::append_close(to_server.build(), 'S', "");
  auto& close = queue_.emplace_back(Kind::close);
  close.swallow = true;
  close.unnamed = true;
  server.set_unnamed_owner(server::ServerStatements::kNoUnnamed);
}

std::optional<StatementTracker::UnnamedAfter> StatementTracker::unnamed_after_failure(const Expectation& failed) {
  if (!failed.unnamed) return std::nullopt;
  // Postgres drops the unnamed statement before it parses the new one: after a failed Parse there
  // is none on the server, and none for the client if the Parse was its own.
  UnnamedAfter after;
  if (failed.kind == Kind::parse && !failed.swallow) {
    --pending_unnamed_parses_;
    after.client.emplace();
  }
  after.client_kept = !after.client;
  after.owner_known = true;
  after.server_owner = server::ServerStatements::kNoUnnamed;
  return after;
}

void StatementTracker::unnamed_after_skip(const Expectation& skipped, UnnamedAfter& after) {
  const auto& detail = queue_.detail(skipped);
  const bool injected = skipped.swallow || (skipped.kind != Kind::parse && !detail.replaced);
  if (!after.owner_known) {
    // The first one skipped: the server holds what it held before it (not known before an injection).
    after.owner_known = true;
    after.server_owner = injected ? server::ServerStatements::kUnknownUnnamed
                                  : (detail.replaced ? detail.replaced->server_owner : previous_unnamed_.server_owner);
  }
  if (!injected && after.client_kept) {
    // The client's first one skipped: its unnamed statement is what that one replaced.
    after.client = detail.replaced ? *detail.replaced : previous_unnamed_;
    after.client_kept = false;
  }
}

void StatementTracker::settle_unnamed(const UnnamedAfter& after, server::ServerStatements& server) {
  // A client Parse or Close of the unnamed statement behind the Sync (pipelined) has replaced it
  // since: what it replaced is corrected instead, for the case the server skips it too.
  Expectation* later = nullptr;
  queue_.for_each_mutable([&](Expectation& expectation) {
    if (!later && expectation.unnamed && !expectation.swallow) later = &expectation;
  });
  if (later != nullptr) {
    auto& replaced = queue_.detail(*later).replaced;
    if (!after.client_kept) {
      replaced = *after.client;
    } else if (!replaced) {
      replaced = previous_unnamed_;
    }
    replaced->server_owner = after.server_owner;
    return;
  }
  if (!after.client_kept) unnamed_ = *after.client;
  server.set_unnamed_owner(after.server_owner);
}

bool StatementTracker::client_message(const protocol::MessageView& message, server::ServerStatements& server,
                                      Outgoing& to_server) {
  const char type = message.type;
  waiting_for_.clear();
  waiting_for_answers_ = false;
  if (!unlearned_.first.empty()) learn_statement(message, to_server);
  if (skip_until_sync_) {
    // Postgres ignores everything up to Sync after an error, a simple Query too (no ReadyForQuery).
    if (type == 'Q') ++ignored_queries_;
    if (type != 'S') return true;
    skip_until_sync_ = false;
    verified_.clear();
  }
  if (learning_) {
    // A statement after the literal SET being learned may change what the probe reads (a later SET,
    // a ROLLBACK): the text is then not learned from this batch.
    bool other = type == 'Q' || type == 'F' || type == 'B';
    if (type == 'E') {
      // learning_portal_ is the last Bind's portal: the SET's own (any later Bind stopped the learning).
      auto execute = protocol::parse_execute(message.payload);
      other = !execute || execute->portal != learning_portal_;
    }
    if (other) learning_.reset();
  }
  if (type == 'B') {
    // Just the portal name (the payload's first string): Bind is the hot path.
    const auto payload = protocol::as_string_view(message.payload);
    learning_portal_.assign(payload.substr(0, payload.find('\0')));
  }
  switch (type) {
    case 'P': {
      auto parse = protocol::parse_parse(message.payload);
      if (!parse) break;  // malformed: the server's own error is relayed
      if (sql::starts_copy(parse->query)) copy_in_batch_ = true;
      if (parse->statement.empty()) {
        std::string deallocate_stand_in;
        std::vector<std::pair<std::string, std::string>> renames;
        if (in_failed_transaction()) {
          to_server.append(message.frame);  // refused by the server (25P02) whatever it says
        } else if (auto target = deallocate_target(parse->query); target && !target->empty() && statements_.erase(*target)) {
          // DEALLOCATE of a client statement through the extended protocol (psycopg 3 evicts so): the
          // server never had that name. Deallocate a throwaway statement instead, so the client gets
          // every reply (ParseComplete ... CommandComplete "DEALLOCATE") from the server itself.
          const std::string stand_in = fmt::format("pgsluice_deallocate_{}", ++stand_ins_);
          protocol::append_parse(to_server.build(), stand_in, "SELECT 1", bytes_of(std::string("\0\0", 2)));
          expect(Kind::parse, /*swallow=*/true);
          deallocate_stand_in = "DEALLOCATE " + stand_in;
          protocol::append_parse(to_server.build(), "", deallocate_stand_in, parse->parameter_types);
        } else if (auto effects = effects_of(parse->query); effects && !effects->prepared.empty()) {
          // SQL PREPARE / EXECUTE / DEALLOCATE through the extended protocol (psycopg 3 sends every
          // statement so): the names rewritten as for a simple Query.
          if (const auto adding = bytes_to_prepare(*effects); adding > 0 && refuse_over_limit(adding, to_server)) return true;
          std::vector<std::string> prepared_here;
          if (auto rewritten = rewrite_prepared_text(parse->query, *effects, server, to_server, /*in_batch=*/true,
                                                     renames, prepared_here)) {
            deallocate_stand_in = std::move(*rewritten);
            protocol::append_parse(to_server.build(), "", deallocate_stand_in, parse->parameter_types);
          } else {
            to_server.append(message.frame);
          }
        } else {
          to_server.append(message.frame);
        }
        auto& expectation = queue_.emplace_back(Kind::parse);
        expectation.unnamed = true;
        // What this Parse replaces comes back if the server skips it (an error earlier in the
        // pipeline). The oldest pending one keeps it in a slot swapped with unnamed_, so that the
        // strings keep their storage from one unnamed Parse to the next (pgbench -M extended).
        if (pending_unnamed_parses_ == 0) {
          std::swap(previous_unnamed_, unnamed_);
          previous_unnamed_.server_owner = server.unnamed_owner();
        } else {
          auto& replaced = queue_.detail(expectation).replaced.emplace(unnamed_);
          replaced.server_owner = server.unnamed_owner();
        }
        ++pending_unnamed_parses_;
        unnamed_.query.assign(deallocate_stand_in.empty() ? parse->query : deallocate_stand_in);
        unnamed_.parameter_types.assign(protocol::as_string_view(parse->parameter_types));
        unnamed_.effects = effects_of(unnamed_.query);
        unnamed_.renames = std::move(renames);
        unnamed_.exists = true;
        unnamed_.token = next_unnamed_token();
        server.set_unnamed_owner(unnamed_.token);
        return true;
      }
      if (must_wait_for(parse->statement)) return false;
      std::string client_name(parse->statement);
      const bool live = statements_.contains(client_name);
      if (!live && refuse_over_limit(parse->query.size() + parse->parameter_types.size(), to_server)) return true;
      if (live && !drop_all_pending()) {
        // Postgres says 42P05, and inside a transaction block that error aborts it: the server must
        // see it. The client's text is parsed under a name pgsluice made sure exists, so the server
        // checks it in Postgres's order (syntax, then a failed transaction unless it ends one, then
        // the name); the error is told with the client's name. The stand-in is a COMMIT, which may
        // be parsed in a failed transaction too, and is never run.
        static constexpr std::string_view kDuplicate = "pgsluice_duplicate";
        static const std::uint8_t kNoTypes[] = {0, 0};
        auto& out = to_server.build();
        protocol::append_close(out, 'S', kDuplicate);
        expect(Kind::close, /*swallow=*/true);
        protocol::append_parse(out, kDuplicate, "COMMIT", Bytes(kNoTypes, sizeof kNoTypes));
        expect(Kind::parse, /*swallow=*/true);
        protocol::append_parse(out, kDuplicate, parse->query, parse->parameter_types);
        auto& refused = queue_.emplace_back(Kind::parse);
        queue_.detail(refused).renames.emplace_back("\"" + std::string(kDuplicate) + "\"", "\"" + client_name + "\"");
        return true;
      }
      Statement statement{std::string(parse->query), std::string(protocol::as_string_view(parse->parameter_types)),
                          server_name(parse->query, parse->parameter_types)};
      statement.effects = effects_of(parse->query);
      statement.serial = ++statement_serials_;
      // The server parses it even when this connection has the text already (for this client or
      // another): a copy parsed before DDL changed its tables would answer the Describe or Bind that
      // follows with 0A000 "cached plan must not change result type", which a fresh Parse never
      // gets, so a driver that has just prepared does not retry on it (postgres.js fails the query).
      // Closed and parsed anew, it describes the tables as they are. The copies stay shared for what
      // a client parsed elsewhere and binds here (ensure_on_server).
      if (server.contains(statement.server_name)) server.mark_stale(statement.server_name);
      send_parse(statement, server, to_server, client_name);
      // A live name here is one a DEALLOCATE ALL earlier in the pipeline drops before this Parse runs.
      statements_.insert_or_assign(std::move(client_name), std::move(statement));
      return true;
    }
    case 'B': {
      bound_statement_.clear();
      auto bind = protocol::parse_bind(message.payload);
      if (!bind) break;
      if (dropping_portal_ && bind->portal == dropping_portal_name_) dropping_portal_ = false;  // replaced
      if (!portal_renames_.empty() && bind->portal == renamed_portal_) portal_renames_.clear();
      if (!bind->statement.empty() && must_wait_for(bind->statement)) return false;
      if (bind->statement.empty()) {
        if (must_wait_for_unnamed()) return false;
        ensure_unnamed_on_server(server, to_server);
        if (unnamed_.exists && unnamed_.effects) {
          note_effects(*unnamed_.effects);
          ensure_executed_statements(*unnamed_.effects, server, to_server);
        }
        dropping_portal_ = unnamed_.exists && drops_all_statements(unnamed_.query);
        if (dropping_portal_) dropping_portal_name_.assign(bind->portal);
        if (unnamed_.exists && !unnamed_.renames.empty()) {
          portal_renames_ = unnamed_.renames;
          renamed_portal_.assign(bind->portal);
        }
        break;
      }
      auto it = statements_.find(std::string(bind->statement));
      if (it == statements_.end()) break;  // the server answers 26000 with the client's name
      const Statement& statement = it->second;
      if (must_wait_to_inject(statement, server)) return false;
      // In a failed transaction nothing pgsluice would inject first (a missing copy's Parse, a
      // stale one's re-Parse) may answer in the Bind's place: Postgres checks its counts first.
      if (in_failed_transaction() && refuse_bind_in_failed_transaction(*bind, statement, to_server)) {
        return true;
      }
      if (statement.effects) {
        note_effects(*statement.effects);
        ensure_executed_statements(*statement.effects, server, to_server);
      }
      const bool just_verified = std::exchange(verified_, {}) == statement.server_name;
      ensure_on_server(statement, server, to_server);
      const std::uint64_t copy_shape = server.shape(statement.server_name);
      if (statement.shape != 0 && copy_shape != statement.shape && !(just_verified && copy_shape == 0)) {
        if (!just_verified) {
          // A copy of another shape may itself be the stale one (parsed before the DDL the client
          // has seen): parsed anew, it shows the tables as they are now.
          if (copy_shape != 0) {
            server.mark_stale(statement.server_name);
            send_parse(statement, server, to_server, /*client_name=*/{});
          }
          verify_shape(statement.server_name, to_server);
          return false;
        }
        // The tables as they are now give other columns than the client was told of.
        Buffer error;
        append_stale_plan_error(error);
        fail_here(std::move(error), to_server);
        return true;
      }
      // 0 or 1 result formats apply to every column, whatever their number: spelled out per column,
      // a server connection that parses the text to another number of columns refuses the Bind
      // (08P01, reported as the stale plan the client's own connection would report) rather than
      // sending rows the client would read with the columns it was told of. pgjdbc spells them out
      // itself; postgres.js sends none.
      auto formats = statement.columns > 1 ? protocol::bind_result_formats(bind->rest) : std::nullopt;
      const bool spelled = formats && formats->count <= 1;
      if (spelled) {
        protocol::append_bind_with_result_formats(to_server.build(), bind->portal, statement.server_name,
                                                  bind->rest.first(formats->offset), formats->first,
                                                  statement.columns);
      } else {
        protocol::append_bind(to_server.build(), bind->portal, statement.server_name, bind->rest);
      }
      expect(Kind::bind);
      queue_.detail(queue_.back()).server_name = it->second.server_name;
      queue_.detail(queue_.back()).described = it->first;
      queue_.detail(queue_.back()).spelled_formats = spelled;
      bound_portal_ = bind->portal;
      bound_statement_ = it->first;
      return true;
    }
    case 'D': {
      auto describe = protocol::parse_describe_or_close(message.payload);
      if (!describe) break;
      if (describe->kind == 'P') {
        to_server.append(message.frame);
        expect(Kind::describe_portal);
        // A portal of a client statement shows that statement's columns (pgjdbc describes portals).
        auto it = bound_statement_.empty() ? statements_.end() : statements_.find(bound_statement_);
        if (it != statements_.end() && describe->name == bound_portal_) {
          auto& detail = queue_.detail(queue_.back());
          detail.described = it->first;
          detail.server_name = it->second.server_name;
        }
        return true;
      }
      if (describe->name.empty()) {
        if (must_wait_for_unnamed()) return false;
        ensure_unnamed_on_server(server, to_server);
        to_server.append(message.frame);
        expect(Kind::describe_statement);
        return true;
      }
      if (must_wait_for(describe->name)) return false;
      auto it = statements_.find(std::string(describe->name));
      if (it == statements_.end()) {
        to_server.append(message.frame);
        expect(Kind::describe_statement);
        return true;
      }
      if (must_wait_to_inject(it->second, server)) return false;
      if (const auto described = Descriptions::instance().find(it->second.server_name);
          !server.contains(it->second.server_name) && in_failed_transaction() && !described.parameters.empty() &&
          described.returns_rows >= 0) {
        // Postgres describes a statement that returns no rows in a failed transaction, and refuses
        // the others (before their parameters).
        Buffer reply;
        if (described.returns_rows != 0) {
          protocol::append_error_response(reply, protocol::Severity::error, "25P02",
                                          "current transaction is aborted, commands ignored until end of transaction block");
          fail_here(std::move(reply), to_server);
        } else {
          protocol::MessageBuilder(reply).begin('t').bytes(described.parameters).end();
          protocol::MessageBuilder(reply).begin('n').end();
          expect_fake(std::move(reply));
        }
        return true;
      }
      ensure_on_server(it->second, server, to_server);
      protocol::append_describe(to_server.build(), 'S', it->second.server_name);
      expect(Kind::describe_statement);
      auto& detail = queue_.detail(queue_.back());
      detail.described = it->first;
      detail.server_name = it->second.server_name;
      return true;
    }
    case 'C': {
      auto close = protocol::parse_describe_or_close(message.payload);
      if (close && close->kind == 'S' && !close->name.empty()) {
        if (must_wait_for(close->name)) return false;
        // Answered here: the server statement is shared and stays (DESIGN §2).
        auto closed = statements_.extract(std::string(close->name));
        Buffer complete;
        protocol::append_close_complete(complete);
        expect_fake(std::move(complete));
        if (closed) queue_.detail(queue_.back()).closed.emplace(std::move(closed.key()), std::move(closed.mapped()));
        return true;
      }
      to_server.append(message.frame);
      auto& expectation = queue_.emplace_back(Kind::close);
      if (close && close->kind == 'S') {
        // What it closes comes back if the server skips it (an error earlier in the pipeline).
        expectation.unnamed = true;
        auto& replaced = queue_.detail(expectation).replaced.emplace(unnamed_);
        replaced.server_owner = server.unnamed_owner();
        unnamed_.exists = false;
        server.set_unnamed_owner(server::ServerStatements::kNoUnnamed);
      }
      return true;
    }
    case 'E': {
      to_server.append(message.frame);
      expect(Kind::execute);
      if (dropping_portal_ || !portal_renames_.empty()) {
        auto execute = protocol::parse_execute(message.payload);
        queue_.back().drops_all = dropping_portal_ && execute && execute->portal == dropping_portal_name_;
        // Errors of an SQL PREPARE / EXECUTE run through the extended protocol name the client's statements.
        if (execute && execute->portal == renamed_portal_) queue_.detail(queue_.back()).renames = portal_renames_;
      }
      return true;
    }
    case 'S':
      to_server.append(message.frame);
      expect(Kind::sync);
      send_probe(server, to_server);
      return true;
    case 'Q': {
      const auto text = protocol::as_string_view(message.payload);
      auto effects = effects_of(text);
      if (effects && !effects->prepared.empty() && answers_pending()) {
        // What PREPARE / EXECUTE / DEALLOCATE do here depends on whether the transaction has
        // failed (Postgres then runs nothing): known once what was sent before is answered.
        waiting_for_answers_ = true;
        return false;
      }
      if (sql::starts_copy(text)) copy_in_batch_ = true;
      // A simple Query drops the unnamed statement, the client's and whoever's the server held.
      unnamed_.exists = false;
      if (effects && effects->statements == 1 && in_failed_transaction()) {
        server.set_unnamed_owner(server::ServerStatements::kNoUnnamed);
        to_server.append(message.frame);  // the server's 25P02, and nothing changes
        expect(Kind::simple);
        return true;
      }
      // A DEALLOCATE answered here goes as a Sync, which leaves the server's unnamed statement
      // (ensure_unnamed_on_server closes it before this client uses the unnamed statement).
      if (simple_query(message, to_server)) return true;
      server.set_unnamed_owner(server::ServerStatements::kNoUnnamed);
      if (!effects || !rewrite_prepared_names(text, *effects, server, to_server)) {
        to_server.append(message.frame);
        expect(Kind::simple);
      }
      queue_.back().drops_all = drops_all_statements(text);
      if (effects) note_effects(*effects);
      send_probe(server, to_server);
      return true;
    }
    case 'F': to_server.append(message.frame); expect(Kind::simple); return true;
    default: to_server.append(message.frame); return true;  // Flush, COPY data: no reply of their own
  }
  // Passed on unchanged: Parse of the unnamed statement, Bind of an unknown or unnamed one, ...
  to_server.append(message.frame);
  expect(type == 'P' ? Kind::parse : type == 'B' ? Kind::bind : Kind::describe_statement);
  return true;
}

void StatementTracker::mark_dirty(const std::string& name) {
  if (std::find(dirty_settings_.begin(), dirty_settings_.end(), name) == dirty_settings_.end()) {
    dirty_settings_.push_back(name);
  }
}

void StatementTracker::note_effects(const sql::SessionEffects& effects) {
  for (const auto& name : effects.settings) {
    // RESET of a startup parameter goes back to the client's startup value (see send_probe); a
    // later SET of it in the same batch wins.
    const bool reset = std::find(effects.resets.begin(), effects.resets.end(), name) != effects.resets.end();
    if (startup_ != nullptr && startup_->contains(name)) {
      if (reset) {
        startup_resets_.push_back(name);
      } else {
        std::erase_if(startup_resets_, [&](const std::string& r) { return server::same_guc_name(r, name); });
      }
    }
    // The reported settings come back as ParameterStatus, which the session follows already.
    if (server::is_tracked_parameter(name)) continue;
    if (effects.literal) {
      std::optional<std::string> known;
      {
        std::lock_guard lock(effects.literal->mutex);
        known = effects.literal->value;
      }
      if (known) {
        pending_literals_.push_back({name, std::move(known), effects.literal});
        // The probe would read what this one leaves, not what the text being learned leaves.
        learning_.reset();
        continue;
      }
      // Unknown yet: the probe that reads it teaches every session, if it reads that alone.
      learning_ = dirty_settings_.empty() ? effects.literal : nullptr;
      mark_dirty(name);
      continue;
    }
    learning_.reset();
    mark_dirty(name);
  }
  if (effects.reset_all) reset_all_pending_ = true;
  if (effects.pins || effects.may_unpin) pin_check_pending_ = true;
  for (const auto& change : effects.listens) {
    if (!change.listen) unlistens_in_batch_.push_back(change);
  }
  if (effects.discard_all) unlistens_in_batch_.push_back({false, {}});
}

namespace {

// A string literal for any standard_conforming_strings: E'...' with ' and \ escaped.
void append_literal(std::string& sql, std::string_view text) {
  sql += "E'";
  for (char c : text) {
    if (c == '\'' || c == '\\') sql += c;
    sql += c;
  }
  sql += '\'';
}

// One injected statement as its own extended-protocol group under names no client uses, so that
// neither the client's unnamed statement nor its unnamed portal is touched (a simple Query would
// drop both, and a portal may live across Syncs inside a transaction).
void append_injected(Outgoing& to_server, const std::string& sql) {
  static constexpr std::string_view kName = "pgsluice_probe";
  auto& out = to_server.build();
  protocol::append_close(out, 'P', kName);
  protocol::append_close(out, 'S', kName);
  static const std::uint8_t kNoTypes[] = {0, 0};
  protocol::append_parse(out, kName, sql, Bytes(kNoTypes, sizeof kNoTypes));
  static const std::uint8_t kNoParameters[] = {0, 0, 0, 0, 0, 0};  // no formats, values or result formats
  protocol::append_bind(out, kName, kName, Bytes(kNoParameters, sizeof kNoParameters));
  protocol::append_execute(out, kName);
  protocol::append_close(out, 'P', kName);
  protocol::append_close(out, 'S', kName);
  protocol::append_sync(out);
}

// How many things pin a session to its connection: session advisory locks, temporary relations,
// WITH HOLD cursors and channels it listens on.
constexpr std::string_view kPinCount =
    "(SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())"
    " + (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema())"
    " + (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable)"
    " + (SELECT count(*) FROM pg_catalog.pg_listening_channels())";

}  // namespace

void StatementTracker::send_probe([[maybe_unused]] server::ServerStatements& server, Outgoing& to_server) {
  if (!unlistens_in_batch_.empty() && !queue_.empty()) {
    // The batch just ended: its UNLISTENs count once it has committed (settle_literals).
    auto& batch = queue_.detail(queue_.back());
    batch.unlisten_if_committed.insert(batch.unlisten_if_committed.end(), unlistens_in_batch_.begin(),
                                       unlistens_in_batch_.end());
    unlistens_in_batch_.clear();
  }
  const bool after_copy = std::exchange(copy_in_batch_, false);
  if (!pending_literals_.empty() && after_copy) {
    for (const auto& setting : pending_literals_) mark_dirty(setting.name);
    pending_literals_.clear();
  }
  if (!pending_literals_.empty()) {
    // The batch just ended with the client's Sync or Query (queue_.back()): settled with it.
    auto& batch = queue_.detail(queue_.back());
    for (auto& setting : pending_literals_) batch.settle_if_committed.push_back(std::move(setting));
    pending_literals_.clear();
  }
  if (dirty_settings_.empty() && !reset_all_pending_ && !pin_check_pending_ && startup_resets_.empty()) return;
  if (after_copy) return;  // the server may be in COPY: after the next batch
  if (reset_all_pending_ || !startup_resets_.empty()) {
    // Postgres's RESET ALL (and DISCARD ALL, RESET name) return settings to the values the session
    // started with, the client's startup parameters among them; on a pooled connection those were
    // applied by pgsluice, so it applies them again, in the same transaction as the RESET.
    if (startup_ != nullptr && !startup_->empty()) {
      std::string sql = "SELECT ";
      bool first = true;
      for (const auto& [name, value] : *startup_) {
        if (!reset_all_pending_ && std::none_of(startup_resets_.begin(), startup_resets_.end(),
                                                [&](const auto& r) { return server::same_guc_name(r, name); })) {
          continue;
        }
        if (!first) sql += ", ";
        first = false;
        sql += "pg_catalog.set_config(";
        append_literal(sql, name);
        sql += ", ";
        append_literal(sql, value);
        sql += ", false)";
      }
      // Postgres reports the values a batch leaves before its ReadyForQuery: the client's is held
      // until the restore is done and the ParameterStatus that differ have gone first.
      if (!queue_.empty() && (queue_.back().kind == Kind::sync || queue_.back().kind == Kind::simple) &&
          !queue_.back().swallow) {
        queue_.back().holds_ready = true;
      }
      append_injected(to_server, sql);
      auto& restore = queue_.emplace_back(Kind::probe);
      restore.swallow = true;
      queue_.detail(restore).restores_startup = true;
      ++restores_pending_;
    }
    if (wanted_ != nullptr && reset_all_pending_) {
      for (const auto& [name, value] : *wanted_) mark_dirty(name);
    }
    startup_resets_.clear();
  }
  std::string sql = "SELECT ";
  sql += pin_check_pending_ ? kPinCount : std::string_view("NULL");
  for (const auto& name : dirty_settings_) {
    sql += ", pg_catalog.current_setting(";
    append_literal(sql, name);
    sql += ", true)";
  }
  append_injected(to_server, sql);
  auto& probe = queue_.emplace_back(Kind::probe);
  probe.swallow = true;
  auto& detail = queue_.detail(probe);
  detail.probe_settings = std::move(dirty_settings_);
  detail.probe_pins = pin_check_pending_;
  detail.probe_reset_all = reset_all_pending_;
  if (detail.probe_settings.size() == 1 && !pin_check_pending_ && !reset_all_pending_) detail.learns = learning_;
  learning_.reset();
  dirty_settings_.clear();
  pin_check_pending_ = false;
  reset_all_pending_ = false;
}

void StatementTracker::settle_literals(Detail& batch, const protocol::MessageView& ready) {
  if (!batch.unlisten_if_committed.empty()) {
    // UNLISTEN / DISCARD ALL sent to the server end the client's listener subscriptions only if they
    // took effect: at once in autocommit, at COMMIT inside a transaction block, never if they failed.
    auto status = protocol::parse_ready_for_query(ready.payload);
    if (status && !batch.batch_failed && (*status == 'I' || *status == 'T')) {
      auto& into = *status == 'I' ? passed_unlistens_ : unlistens_in_transaction_;
      into.insert(into.end(), batch.unlisten_if_committed.begin(), batch.unlisten_if_committed.end());
    }
    batch.unlisten_if_committed.clear();
  }
  if (batch.settle_if_committed.empty()) return;
  auto status = protocol::parse_ready_for_query(ready.payload);
  if (status && *status == 'I' && !batch.batch_failed) {
    for (auto& setting : batch.settle_if_committed) settled_.push_back(std::move(setting));
  } else {
    // An error, or a transaction still open that may roll back: read back after the next batch.
    for (const auto& setting : batch.settle_if_committed) mark_dirty(setting.name);
  }
  batch.settle_if_committed.clear();
}

StatementTracker::Disposition StatementTracker::hold_ready(const protocol::MessageView& ready) {
  held_ready_.insert(held_ready_.end(), ready.frame.begin(), ready.frame.end());
  return Disposition::swallow;
}

bool StatementTracker::settle_status() {
  rewritten_.clear();
  for (auto& [name, value] : held_status_) {
    auto told = told_status_.find(name);
    std::optional<std::string> before;
    if (told != told_status_.end()) {
      before = told->second;
    } else if (wanted_ != nullptr) {
      if (auto it = wanted_->find(name); it != wanted_->end()) before = it->second;
    }
    if (before && *before == value) continue;
    protocol::append_parameter_status(rewritten_, name, value);
    told_status_.insert_or_assign(name, value);
  }
  held_status_.clear();
  return !rewritten_.empty();
}

void StatementTracker::settle_probe(Detail& probe, char status) {
  const bool answered = probe.probe_row.size() == probe.probe_settings.size() + 1;
  if (status != 'I' || !answered) {
    // Inside a transaction (which may still roll back), or the probe failed: ask again after the
    // client's next batch. A restore of startup values (no settings, no pins) needs nothing more.
    for (auto& name : probe.probe_settings) {
      if (std::find(dirty_settings_.begin(), dirty_settings_.end(), name) == dirty_settings_.end()) {
        dirty_settings_.push_back(std::move(name));
      }
    }
    pin_check_pending_ = pin_check_pending_ || probe.probe_pins;
    return;
  }
  if (probe.probe_pins) pinned_ = probe.probe_row[0] && *probe.probe_row[0] != "0";
  if (probe.learns && probe.probe_row.size() == 2 && probe.probe_row[1]) {
    std::lock_guard lock(probe.learns->mutex);
    probe.learns->value = probe.probe_row[1];
  }
  for (std::size_t i = 0; i < probe.probe_settings.size(); ++i) {
    settled_.push_back({std::move(probe.probe_settings[i]), std::move(probe.probe_row[i + 1])});
  }
}

void StatementTracker::fail_here(Buffer error, Outgoing& to_server) {
  // Postgres sends an error at once, with every reply before it: those the server owes are flushed.
  bool owed = false;
  queue_.for_each([&](const Expectation& expectation) { owed = owed || !expectation.fake; });
  expect_fake(std::move(error));
  skip_until_sync_ = true;
  if (owed) protocol::append_flush(to_server.build());
}

bool StatementTracker::refuse_over_limit(std::size_t bytes, Outgoing& to_server) {
  std::size_t held = bytes;
  for (const auto& [name, statement] : statements_) {
    held += statement.query.size() + statement.parameter_types.size() + statement.sql_prepare.size();
  }
  if (statements_.size() < max_statements_ && held <= max_statement_bytes_) return false;
  Buffer error;
  protocol::append_error_response(
      error, protocol::Severity::error, "53400",
      fmt::format("pgsluice: this client keeps {} prepared statements of {} bytes, the most it may "
                  "(max_prepared_statements_per_client {}, max_prepared_statement_bytes_per_client {}); "
                  "deallocate some before preparing more",
                  statements_.size(), held - bytes, max_statements_, max_statement_bytes_));
  fail_here(std::move(error), to_server);
  return true;
}

void StatementTracker::evict_if_full(server::ServerStatements& server, Outgoing& to_server, bool in_batch) {
  auto victim = server.evict_if_full();
  if (!victim) return;
  protocol::append_close(to_server.build(), 'S', *victim);
  if (in_batch) {
    auto& close = queue_.emplace_back(Kind::close);
    close.swallow = true;
    close.eviction = true;
    queue_.detail(close).server_name = std::move(*victim);
  } else {
    protocol::append_sync(to_server.build());
    queue_.emplace_back(Kind::probe).swallow = true;
  }
}

void StatementTracker::inject_statement(const Statement& statement, server::ServerStatements& server,
                                        Outgoing& to_server, bool in_batch) {
  // In a group of its own behind a Sync, or, inside the client's unsynced batch (a Sync there would
  // end the client's implicit transaction), as messages of that batch whose replies are swallowed.
  auto swallow = [&](Kind kind) -> Expectation& {
    auto& expectation = queue_.emplace_back(kind);
    expectation.swallow = true;
    return expectation;
  };
  close_if_stale(statement.server_name, server, to_server);
  evict_if_full(server, to_server, in_batch);
  auto& out = to_server.build();
  if (statement.sql_prepare.empty()) {
    protocol::append_parse(out, statement.server_name, statement.query, bytes_of(statement.parameter_types));
    if (in_batch) {
      queue_.detail(swallow(Kind::parse)).server_name = statement.server_name;
    } else {
      protocol::append_sync(out);
      swallow(Kind::probe);
    }
  } else if (in_batch) {
    // The PREPARE runs through a statement and portal of pgsluice's own: the client's unnamed
    // ones stay as they are.
    static constexpr std::string_view kName = "pgsluice_inject";
    static const std::uint8_t kNoTypes[] = {0, 0};
    static const std::uint8_t kNoParameters[] = {0, 0, 0, 0, 0, 0};
    protocol::append_close(out, 'P', kName);
    swallow(Kind::close);
    protocol::append_close(out, 'S', kName);
    swallow(Kind::close);
    protocol::append_parse(out, kName, statement.sql_prepare, Bytes(kNoTypes, sizeof kNoTypes));
    swallow(Kind::parse);
    protocol::append_bind(out, kName, kName, Bytes(kNoParameters, sizeof kNoParameters));
    swallow(Kind::bind);
    protocol::append_execute(out, kName);
    queue_.detail(swallow(Kind::execute)).injected_prepare = statement.server_name;
    protocol::append_close(out, 'P', kName);
    swallow(Kind::close);
    protocol::append_close(out, 'S', kName);
    swallow(Kind::close);
  } else {
    protocol::append_query(out, statement.sql_prepare);
    queue_.detail(swallow(Kind::probe)).injected_prepare = statement.server_name;
  }
  server.add(statement.server_name);
}

void StatementTracker::ensure_executed_statements(const sql::SessionEffects& effects,
                                                  server::ServerStatements& server, Outgoing& to_server) {
  for (const auto& ref : effects.prepared) {
    if (ref.kind != sql::PreparedNameRef::Kind::execute) continue;
    auto it = statements_.find(ref.name);
    if (it == statements_.end()) continue;
    if (server.contains(it->second.server_name)) {
      server.touch(it->second.server_name);
    } else {
      inject_statement(it->second, server, to_server, /*in_batch=*/true);
    }
  }
}

std::optional<std::string> StatementTracker::rewrite_prepared_text(
    std::string_view text, const sql::SessionEffects& effects, server::ServerStatements& server, Outgoing& to_server,
    bool in_batch, std::vector<std::pair<std::string, std::string>>& renames, std::vector<std::string>& prepared_here) {
  using RefKind = sql::PreparedNameRef::Kind;
  if (client_id_ == 0) client_id_ = next_unnamed_token();
  if (!text.empty() && text.back() == '\0') text.remove_suffix(1);
  std::string rewritten;
  std::size_t copied = 0;
  for (const auto& ref : effects.prepared) {
    if (ref.name_begin < copied || ref.name_end > text.size()) continue;
    std::string server_name;
    auto it = statements_.find(ref.name);
    switch (ref.kind) {
      case RefKind::prepare:
        if (it != statements_.end()) {
          // A live name: Postgres says 42P05. Preparing its server statement again says it too.
          server_name = it->second.server_name;
          if (!server.contains(server_name)) inject_statement(it->second, server, to_server, in_batch);
          break;
        }
        {
          Statement statement;
          statement.server_name = fmt::format("pgsluice_sql_{}_{}", client_id_, ++sql_prepares_);
          statement.sql_prepare.assign(text.substr(ref.statement_begin, ref.name_begin - ref.statement_begin));
          statement.sql_prepare += statement.server_name;
          statement.sql_prepare.append(text.substr(ref.name_end, ref.statement_end - ref.name_end));
          statement.sql_parameters = std::max(ref.declared_types, sql::highest_parameter(statement.sql_prepare));
          server_name = statement.server_name;
          close_if_stale(server_name, server, to_server);
          evict_if_full(server, to_server, in_batch);
          server.add(server_name);
          statements_.emplace(ref.name, std::move(statement));
          prepared_here.push_back(ref.name);
        }
        break;
      case RefKind::execute:
        if (it == statements_.end()) continue;  // Postgres's own 26000 names it
        server_name = it->second.server_name;
        if (server.contains(server_name)) {
          server.touch(server_name);
        } else {
          inject_statement(it->second, server, to_server, in_batch);
        }
        break;
      case RefKind::deallocate:
        if (it != statements_.end()) {
          // The server statement is the client's alone but is left to the LRU; what the server
          // deallocates is a throwaway, so that the client gets every reply from the server.
          server_name = fmt::format("pgsluice_deallocate_{}", ++stand_ins_);
          static const std::uint8_t kNoTypes[] = {0, 0};
          protocol::append_parse(to_server.build(), server_name, "SELECT 1", Bytes(kNoTypes, sizeof kNoTypes));
          if (in_batch) {
            queue_.emplace_back(Kind::parse).swallow = true;
          } else {
            protocol::append_sync(to_server.build());
            queue_.emplace_back(Kind::probe).swallow = true;
          }
          statements_.erase(it);
        } else if (ref.name.starts_with("pgsluice_")) {
          // No client can reach the statements pgsluice shares between clients (DESIGN §2).
          server_name = "pgsluice_absent";
        } else {
          continue;
        }
        break;
    }
    rewritten.append(text.substr(copied, ref.name_begin - copied));
    rewritten += server_name;
    copied = ref.name_end;
    renames.emplace_back("\"" + server_name + "\"", "\"" + ref.name + "\"");
  }
  if (renames.empty()) return std::nullopt;
  rewritten.append(text.substr(copied));
  return rewritten;
}

std::size_t StatementTracker::bytes_to_prepare(const sql::SessionEffects& effects) const {
  std::size_t adding = 0;
  for (const auto& ref : effects.prepared) {
    if (ref.kind == sql::PreparedNameRef::Kind::prepare && !statements_.contains(ref.name)) {
      adding += ref.statement_end - ref.statement_begin;
    }
  }
  return adding;
}

bool StatementTracker::rewrite_prepared_names(std::string_view text, const sql::SessionEffects& effects,
                                              server::ServerStatements& server, Outgoing& to_server) {
  if (effects.prepared.empty()) return false;
  if (const auto adding = bytes_to_prepare(effects); adding > 0 && refuse_over_limit(adding, to_server)) {
    // Answered here: the error, then the server's ReadyForQuery for the true transaction status.
    skip_until_sync_ = false;
    protocol::append_sync(to_server.build());
    expect(Kind::sync);
    return true;
  }
  std::vector<std::pair<std::string, std::string>> renames;
  std::vector<std::string> prepared_here;
  auto rewritten = rewrite_prepared_text(text, effects, server, to_server, /*in_batch=*/false, renames, prepared_here);
  if (!rewritten) return false;
  protocol::append_query(to_server.build(), *rewritten);
  auto& simple = queue_.emplace_back(Kind::simple);
  auto& detail = queue_.detail(simple);
  detail.renames = std::move(renames);
  detail.prepared_here = std::move(prepared_here);
  return true;
}

bool StatementTracker::simple_query(const protocol::MessageView& message, Outgoing& to_server) {
  // DISCARD ALL and DEALLOCATE ALL run on the server; their CommandComplete clears the bookkeeping
  // (server_message). DEALLOCATE of one client statement is answered here.
  auto target = deallocate_target(protocol::as_string_view(message.payload));
  if (!target || target->empty()) return false;
  if (!statements_.erase(*target)) return false;  // unknown here: the server's own 26000
  // The CommandComplete comes from pgsluice, the ReadyForQuery from the server: a Sync outside an
  // extended batch yields just that, with the true transaction status.
  Buffer complete;
  protocol::MessageBuilder(complete).begin('C').cstring("DEALLOCATE").end();
  expect_fake(std::move(complete));
  static const std::uint8_t kSync[] = {'S', 0, 0, 0, 4};
  to_server.append(Bytes(kSync, sizeof kSync));
  expect(Kind::sync);
  return true;
}

void StatementTracker::take_due_replies(Outgoing& to_client) {
  while (!queue_.empty() && queue_.front().fake) {
    auto& reply = to_client.build();
    const auto& due = queue_.detail(std::as_const(queue_.front())).reply;
    reply.insert(reply.end(), due.begin(), due.end());
    queue_.pop_front();
  }
}

bool StatementTracker::drop_all_pending() const {
  bool pending = false;
  queue_.for_each([&](const Expectation& expectation) { pending = pending || expectation.drops_all; });
  return pending;
}

void StatementTracker::forget_named_statements(server::ServerStatements& server) {
  // DEALLOCATE ALL / DISCARD ALL ran. Parses sent after it in the same pipeline (still unanswered)
  // made statements it did not touch: those stay, for the client and on the server.
  std::unordered_map<std::string, Statement> kept;
  std::vector<std::string> kept_on_server;
  queue_.for_each([&](const Expectation& expectation) {
    if (expectation.kind != Kind::parse || expectation.fake) return;
    const auto& detail = queue_.detail(expectation);
    if (!detail.server_name.empty()) kept_on_server.push_back(detail.server_name);
    if (!detail.client_name.empty()) {
      if (auto it = statements_.find(detail.client_name); it != statements_.end()) kept.insert(*it);
    }
  });
  server.clear();
  for (const auto& name : kept_on_server) server.add(name);
  statements_ = std::move(kept);
}

bool StatementTracker::must_wait_to_inject(const Statement& statement, const server::ServerStatements& server) {
  // A statement missing here is parsed first, which a failed transaction refuses: whether it has
  // failed is known once the batches before are answered (rare: the client moved in mid-pipeline).
  // So is a copy whose Parse is unanswered behind a Sync: an error before it makes Postgres skip it.
  if (server.contains(statement.server_name) && !copy_in_doubt(statement.server_name)) return false;
  if (!answers_pending()) return false;
  waiting_for_answers_ = true;
  return true;
}

bool StatementTracker::in_failed_transaction() const {
  // Only something run (a Query, an Execute: ROLLBACK) ends a failed transaction; probes behind the
  // last Sync leave it as it was.
  bool runs = false;
  queue_.for_each([&](const Expectation& expectation) {
    runs = runs || expectation.kind == Kind::sync || expectation.kind == Kind::simple ||
           expectation.kind == Kind::execute;
  });
  return transaction_status_ == 'E' && !runs;
}

void StatementTracker::unnamed_parsed_here(std::string query, std::shared_ptr<const sql::SessionEffects> effects) {
  unnamed_.exists = true;
  unnamed_.token = next_unnamed_token();
  unnamed_.server_owner = server::ServerStatements::kUnknownUnnamed;
  unnamed_.query = std::move(query);
  unnamed_.parameter_types.assign(2, '\0');  // as sent: an Int16 count of 0 types
  unnamed_.effects = std::move(effects);
  unnamed_.renames.clear();
}

void StatementTracker::parsed_here(const std::string& name, std::string query, std::string parameter_types,
                                   bool succeeded) {
  if (name.empty()) {
    if (!succeeded) {
      unnamed_.exists = false;
      return;
    }
    unnamed_parsed_here(std::move(query), nullptr);
    unnamed_.parameter_types = std::move(parameter_types);
    return;
  }
  if (!succeeded) return;
  const auto types = parameter_types;
  Statement statement{query, std::move(parameter_types),
                      server_name(query, protocol::Bytes(reinterpret_cast<const std::uint8_t*>(types.data()), types.size()))};
  statement.serial = ++statement_serials_;
  statements_.insert_or_assign(name, std::move(statement));
}

std::optional<StatementTracker::KnownStatement> StatementTracker::client_statement(const std::string& name) const {
  if (name.empty()) {
    if (!unnamed_.exists || pending_unnamed_parses_ != 0 || !unnamed_.renames.empty()) return std::nullopt;
    return KnownStatement{unnamed_.query, unnamed_.parameter_types};
  }
  auto it = statements_.find(name);
  if (it == statements_.end() || !it->second.sql_prepare.empty()) return std::nullopt;
  return KnownStatement{it->second.query, it->second.parameter_types};
}

bool StatementTracker::carries_nothing() const {
  return queue_.empty() && statements_.empty() && !unnamed_.exists && pending_unnamed_parses_ == 0 && !pinned_ &&
         !has_unsettled_state() && settled_.empty() && held_status_.empty() && told_status_.empty() &&
         held_ready_.empty() && restores_pending_ == 0 && !skip_until_sync_ && !awaiting_shape_ &&
         unlearned_.first.empty() && ignored_queries_ == 0 && transaction_status_ == 'I' && sql_prepares_ == 0 &&
         waiting_for_.empty() && !waiting_for_answers_ && !dropping_portal_ && portal_renames_.empty() &&
         !copy_in_batch_ && passed_unlistens_.empty() && unlistens_in_batch_.empty() &&
         unlistens_in_transaction_.empty();
}

bool StatementTracker::answers_pending() const {
  bool pending = false;
  queue_.for_each([&](const Expectation& expectation) {
    pending = pending || expectation.kind == Kind::sync || expectation.kind == Kind::simple ||
              expectation.kind == Kind::probe;
  });
  return pending;
}

bool StatementTracker::refuse_bind_in_failed_transaction(const protocol::BindView& bind, const Statement& statement,
                                                         Outgoing& to_server) {
  // Postgres checks a Bind's parameter counts before it refuses it in a failed transaction (25P02).
  // Refused by a Parse pgsluice injects, the client would hear 25P02 for what Postgres calls 08P01.
  protocol::PayloadReader reader(bind.rest);
  const int formats = reader.int16();
  for (int i = 0; i < formats && reader.ok(); ++i) reader.int16();
  const int values = reader.int16();
  if (!reader.ok()) return false;
  auto count_of = [](const std::string& counted) {  // a leading Int16 count
    return counted.size() >= 2
               ? (static_cast<unsigned char>(counted[0]) << 8) | static_cast<unsigned char>(counted[1])
               : 0;
  };
  const auto described = Descriptions::instance().find(statement.server_name);
  const int wanted = !described.parameters.empty()  ? count_of(described.parameters)
                     : !statement.sql_prepare.empty() ? statement.sql_parameters
                                                      : std::max<int>(sql::highest_parameter(statement.query),
                                                                      count_of(statement.parameter_types));
  std::string message;
  if (formats > 1 && formats != values) {
    message = fmt::format("bind message has {} parameter formats but {} parameters", formats, values);
  } else if (values != wanted) {
    message = fmt::format("bind message supplies {} parameters, but prepared statement \"{}\" requires {}", values,
                          bind.statement, wanted);
  } else {
    return false;
  }
  Buffer error;
  protocol::append_error_response(error, protocol::Severity::error, "08P01", message);
  fail_here(std::move(error), to_server);
  return true;
}

bool StatementTracker::must_wait_for_unnamed() {
  // Which unnamed statement the server holds is in doubt while a Parse or Close of it is unanswered
  // behind a Sync (an error before it makes Postgres skip it).
  bool found = false;
  bool in_doubt = false;
  queue_.for_each([&](const Expectation& expectation) {
    if (found && (expectation.kind == Kind::sync || expectation.kind == Kind::simple)) in_doubt = true;
    if (expectation.unnamed) found = true;
  });
  waiting_for_answers_ = in_doubt;
  return in_doubt;
}

bool StatementTracker::copy_in_doubt(const std::string& server_name) const {
  bool found = false;
  bool in_doubt = false;
  queue_.for_each([&](const Expectation& expectation) {
    if (found && (expectation.kind == Kind::sync || expectation.kind == Kind::simple)) in_doubt = true;
    if (expectation.kind == Kind::parse && expectation.detail != kNoDetail &&
        queue_.detail(expectation).server_name == server_name) {
      found = true;
    }
  });
  return in_doubt;
}

bool StatementTracker::name_in_doubt(std::string_view name) const {
  // The last Sync (or Query) queued: a Parse or Close of the name before it is in doubt.
  bool found = false;
  bool in_doubt = false;
  queue_.for_each([&](const Expectation& expectation) {
    if (found && (expectation.kind == Kind::sync || expectation.kind == Kind::simple)) in_doubt = true;
    if (expectation.detail == kNoDetail || expectation.swallow) return;
    const auto& detail = queue_.detail(expectation);
    if ((expectation.kind == Kind::parse && detail.client_name == name) ||
        (expectation.fake && detail.closed && detail.closed->first == name)) {
      found = true;
    }
  });
  return in_doubt;
}

bool StatementTracker::must_wait_for(std::string_view name) {
  if (queue_.empty() || !name_in_doubt(name)) return false;
  waiting_for_.assign(name);
  return true;
}

void StatementTracker::abandon(Expectation& expectation, server::ServerStatements& server) {
  auto& detail = queue_.detail(expectation);
  // A later Parse of the same server statement (pipelined behind a Sync) is left to say what the
  // server holds; its own abandon undoes it if it is skipped too.
  int parses_of_it = 0;
  if (expectation.kind == Kind::parse && !detail.server_name.empty()) {
    queue_.for_each([&](const Expectation& queued) {
      if (queued.kind == Kind::parse && queued.detail != kNoDetail && queue_.detail(queued).server_name == detail.server_name) {
        ++parses_of_it;
      }
    });
  }
  if (expectation.kind == Kind::parse && !expectation.fake && !detail.server_name.empty() && parses_of_it < 2) {
    if (detail.keeps_copy) {
      server.mark_stale(detail.server_name);  // the old copy is still there: closed before the next Parse
    } else {
      server.forget(detail.server_name);
    }
  }
  // Undone in pipeline order: a skipped Close puts its statement back over one a later (also
  // skipped) Parse made, and a skipped Parse drops only the statement it made itself.
  if (detail.closed && std::find(unwound_serials_.begin(), unwound_serials_.end(), detail.closed->second.serial) ==
                            unwound_serials_.end()) {
    statements_.insert_or_assign(std::move(detail.closed->first), std::move(detail.closed->second));
  }
  if (expectation.kind == Kind::close && expectation.eviction) server.add(detail.server_name);
  if (!detail.injected_prepare.empty()) server.forget(detail.injected_prepare);
  if (!detail.client_name.empty()) {
    auto it = statements_.find(detail.client_name);
    if (it != statements_.end() && it->second.serial == detail.serial) statements_.erase(it);
    unwound_serials_.push_back(detail.serial);  // a skipped Close of it after this does not bring it back
  }
  if (expectation.verification) awaiting_shape_ = false;
}

StatementTracker::Disposition StatementTracker::server_message(const protocol::MessageView& message,
                                                               server::ServerStatements& server) {
  const char type = message.type;
  if (!unlistens_in_transaction_.empty()) {
    // UNLISTENs inside a transaction block: kept if it ends with COMMIT (END says COMMIT too).
    if (type == 'C') {
      transaction_committed_ = protocol::as_string_view(message.payload).starts_with("COMMIT");
    } else if (type == 'Z') {
      auto status = protocol::parse_ready_for_query(message.payload);
      if (status && *status == 'I') {
        if (transaction_committed_) {
          passed_unlistens_.insert(passed_unlistens_.end(), unlistens_in_transaction_.begin(),
                                   unlistens_in_transaction_.end());
        }
        unlistens_in_transaction_.clear();
        transaction_committed_ = false;
      }
    }
  }
  if (type == 'Z') {
    if (auto status = protocol::parse_ready_for_query(message.payload)) transaction_status_ = *status;
  }
  if (type == 'C') {
    // However it was sent (simple query, extended protocol, a function), once the server says it ran
    // DEALLOCATE ALL or DISCARD ALL, every statement on that connection is gone.
    const auto tag = protocol::as_string_view(message.payload);
    if (tag.starts_with("DEALLOCATE ALL") || tag.starts_with("DISCARD ALL")) forget_named_statements(server);
  }
  // Messages that may come at any time belong to no request.
  if (type == 'S' && restores_pending_ > 0) {
    // RESET ALL / DISCARD ALL reported the server connection's defaults; the startup values pgsluice
    // restores right after are reported again. The client hears only what ends up different from
    // what it was told before, once the restore is done (see settle_status).
    if (auto status = protocol::parse_parameter_status(message.payload)) {
      held_status_.insert_or_assign(std::string(status->name), std::string(status->value));
    }
    return Disposition::swallow;
  }
  if (type == 'S') {
    if (auto status = protocol::parse_parameter_status(message.payload)) {
      told_status_.insert_or_assign(std::string(status->name), std::string(status->value));
    }
  }
  if (type == 'N' || type == 'A' || type == 'S' || queue_.empty()) return Disposition::relay;
  Expectation& front = queue_.front();
  if (front.kind == Kind::simple) {
    if (type == 'Z') {
      if (front.detail != kNoDetail) settle_literals(queue_.detail(front), message);
      const bool hold = front.holds_ready;
      queue_.pop_front();
      if (hold) return hold_ready(message);
    } else if (type == 'E' && front.detail != kNoDetail) {
      auto& detail = queue_.detail(front);
      detail.batch_failed = true;
      // A PREPARE in a failed query may not have run: forgotten, a later EXECUTE gets 26000.
      for (const auto& name : detail.prepared_here) {
        if (auto it = statements_.find(name); it != statements_.end()) {
          server.forget(it->second.server_name);
          statements_.erase(it);
        }
      }
      detail.prepared_here.clear();
      std::erase_if(detail.renames, [&](const auto& rename) {
        return protocol::as_string_view(message.payload).find(rename.first) == std::string_view::npos;
      });
      if (!detail.renames.empty()) {
        rewritten_.clear();
        Buffer renamed;
        Bytes payload = message.payload;
        for (const auto& [server_name, client_name] : detail.renames) {
          renamed.clear();
          protocol::append_error_renamed(renamed, 'E', payload, server_name, client_name);
          rewritten_ = renamed;
          payload = Bytes(rewritten_).subspan(5);
        }
        return Disposition::rewritten;
      }
    }
    return Disposition::relay;
  }
  if (front.kind == Kind::probe) {
    auto& probe = queue_.detail(front);
    if (type == 'D') {
      probe.probe_row.clear();
      protocol::PayloadReader reader(message.payload);
      const auto columns = reader.int16();
      for (int i = 0; i < columns && reader.ok(); ++i) {
        const auto length = reader.int32();
        if (length < 0) {
          probe.probe_row.emplace_back();
        } else {
          probe.probe_row.emplace_back(std::string(protocol::as_string_view(reader.bytes(static_cast<std::size_t>(length)))));
        }
      }
    } else if (type == 'Z') {
      auto status = protocol::parse_ready_for_query(message.payload);
      settle_probe(probe, status ? *status : 'E');
      const bool restored = probe.restores_startup;
      queue_.pop_front();
      if (restored && --restores_pending_ == 0) {
        settle_status();
        rewritten_.insert(rewritten_.end(), held_ready_.begin(), held_ready_.end());
        held_ready_.clear();
        if (!rewritten_.empty()) return Disposition::rewritten;
      }
    }
    return Disposition::swallow;
  }
  if (type == 'E') {
    Disposition disposition = Disposition::relay;  // even for an injected Parse: the client learns why
    const auto& front_name = queue_.detail(std::as_const(front)).server_name;
    const bool spelled_formats = queue_.detail(std::as_const(front)).spelled_formats;
    // The error names a statement by its server name: the client hears its own name.
    // (the name the client used, not another it gave the same text, nor one it closed since).
    std::vector<std::pair<std::string, std::string>> renames = queue_.detail(std::as_const(front)).renames;
    const auto& client_name = queue_.detail(std::as_const(front)).described;
    if ((front.kind == Kind::bind || front.kind == Kind::describe_statement) && !front_name.empty() &&
        !client_name.empty()) {
      renames.emplace_back("\"" + front_name + "\"", "\"" + client_name + "\"");
    }
    if (front.kind == Kind::parse && !front_name.empty() && !queue_.detail(std::as_const(front)).client_name.empty()) {
      renames.emplace_back("\"" + front_name + "\"", "\"" + queue_.detail(std::as_const(front)).client_name + "\"");
    }
    if ((front.kind == Kind::bind || front.kind == Kind::describe_statement) && !front_name.empty()) {
      // After DDL a shared statement's plan may be stale (0A000 "cached plan must not change result
      // type", at a Bind or a Describe): the next use of that text closes and re-parses it here.
      auto fields = protocol::parse_error_response(message.payload);
      if (fields && fields->sqlstate == "0A000") server.mark_stale(front_name);
      // Gone from the server although pgsluice parsed it there (a DEALLOCATE it could not see, in a
      // function): parsed again at its next use instead of failing every client until evicted.
      if (fields && fields->sqlstate == "26000") server.forget(front_name);
      if (front.kind == Kind::bind && spelled_formats && fields && fields->sqlstate == "08P01" &&
          fields->message.starts_with("bind message has ") &&
          fields->message.find(" result formats but query has ") != std::string::npos) {
        disposition = Disposition::stale_result_type;
      }
    }
    // The server skips to the next Sync: so does the bookkeeping (replies made here included).
    const bool was_awaiting_shape = awaiting_shape_;
    unwound_serials_.clear();
    auto unnamed_after = unnamed_after_failure(front);
    const bool unnamed_failed = unnamed_after.has_value();
    abandon(front, server);
    queue_.pop_front();
    while (!queue_.empty() && queue_.front().kind != Kind::sync && queue_.front().kind != Kind::simple) {
      auto& skipped = queue_.front();
      if (skipped.unnamed && !unnamed_failed) {
        if (!unnamed_after) unnamed_after.emplace();
        unnamed_after_skip(skipped, *unnamed_after);
      }
      if (skipped.unnamed && skipped.kind == Kind::parse && !skipped.swallow) --pending_unnamed_parses_;
      abandon(skipped, server);
      queue_.pop_front();
    }
    if (unnamed_after) settle_unnamed(*unnamed_after, server);
    if (!queue_.empty() && queue_.front().kind == Kind::sync && queue_.front().detail != kNoDetail) {
      queue_.detail(queue_.front()).batch_failed = true;
    }
    // No Sync sent yet (the error came back because of a Flush): the server ignores what the client
    // sends until it does, and so does the bookkeeping (no replies made here, no statements kept).
    if (queue_.empty()) skip_until_sync_ = true;
    std::erase_if(renames, [&](const auto& rename) {
      return protocol::as_string_view(message.payload).find(rename.first) == std::string_view::npos;
    });
    if (renames.empty() && protocol::as_string_view(message.payload).find("\"pgsluice_") != std::string_view::npos) {
      // Named through a path that kept no rename (an SQL PREPARE of a protocol statement's name
      // through the extended protocol, say): the client's statement with that server name.
      for (const auto& [name, statement] : statements_) {
        const auto quoted = "\"" + statement.server_name + "\"";
        if (protocol::as_string_view(message.payload).find(quoted) != std::string_view::npos) {
          renames.emplace_back(quoted, "\"" + name + "\"");
          break;
        }
      }
    }
    if (disposition == Disposition::relay && !renames.empty()) {
      rewritten_.clear();
      Buffer renamed;
      Bytes payload = message.payload;
      for (const auto& [from, to] : renames) {
        renamed.clear();
        protocol::append_error_renamed(renamed, 'E', payload, from, to);
        rewritten_ = renamed;
        payload = Bytes(rewritten_).subspan(5);
      }
      disposition = Disposition::rewritten;
    }
    if (was_awaiting_shape && !awaiting_shape_) {
      // The verification was skipped with the rest: so is the Bind waiting for it, up to the Sync.
      skip_until_sync_ = true;
      verified_.clear();
    }
    return disposition;
  }
  if (type == 'Z' && front.kind != Kind::sync) {
    // Out of step (should not happen): resynchronise on this ReadyForQuery.
    server.set_unnamed_owner(server::ServerStatements::kUnknownUnnamed);
    pending_unnamed_parses_ = 0;
    while (!queue_.empty() && queue_.front().kind != Kind::sync) {
      abandon(queue_.front(), server);
      queue_.pop_front();
    }
    if (!queue_.empty()) queue_.pop_front();
    return Disposition::relay;
  }
  const bool swallow = front.swallow;
  const auto& detail = queue_.detail(std::as_const(front));
  if ((front.kind == Kind::describe_statement || front.kind == Kind::describe_portal) && !detail.server_name.empty() &&
      (type == 'T' || type == 'n')) {
    auto shape = type == 'n' ? protocol::Result<protocol::RowShape>(protocol::no_data_shape())
                             : protocol::parse_row_shape(message.payload);
    if (shape) server.set_shape(detail.server_name, shape->fingerprint);
    if (front.kind == Kind::describe_statement) Descriptions::instance().set_returns_rows(detail.server_name, type == 'T');
    auto it = detail.described.empty() ? statements_.end() : statements_.find(detail.described);
    if (it != statements_.end() && it->second.server_name == detail.server_name && !front.learning) {
      // What the client was told.
      protocol::PayloadReader reader(message.payload);
      it->second.columns = type == 'n' ? 0 : reader.int16();
      it->second.shape = shape ? shape->fingerprint : 0;
    }
    if (front.verification) awaiting_shape_ = false;
  }
  if (type == 't' && front.kind == Kind::describe_statement && !detail.server_name.empty()) {
    Descriptions::instance().set_parameters(detail.server_name, protocol::as_string_view(message.payload));
  }
  bool done = false;
  switch (front.kind) {
    case Kind::parse: done = type == '1'; break;
    case Kind::bind: done = type == '2'; break;
    case Kind::close: done = type == '3'; break;
    case Kind::describe_statement: done = type == 'T' || type == 'n'; break;  // after 't'
    case Kind::describe_portal: done = type == 'T' || type == 'n'; break;
    case Kind::execute: done = type == 'C' || type == 'I' || type == 's'; break;
    case Kind::sync: done = type == 'Z'; break;
    case Kind::simple:
    case Kind::probe: break;
  }
  if (done) {
    if (front.unnamed && front.kind == Kind::parse && !front.swallow) --pending_unnamed_parses_;
    if (front.kind == Kind::sync && front.detail != kNoDetail) settle_literals(queue_.detail(front), message);
    const bool hold = front.holds_ready;
    queue_.pop_front();
    if (hold) return hold_ready(message);
  }
  return swallow ? Disposition::swallow : Disposition::relay;
}

}  // namespace pgsluice::session
