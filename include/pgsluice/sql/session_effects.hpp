#pragma once
// What a statement text does to the state Postgres keeps per connection (DESIGN §2), as far as a
// transaction pooler must follow it: settings a SET or RESET changes, and state that cannot move
// between server connections (LISTEN, session advisory locks, temporary tables, WITH HOLD cursors).
// Decided by the Postgres 15 parser itself (libpg_query), once per distinct text: the relay's hot
// path asks may_have_session_effects() first, which parses nothing.
#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace pgsluice::sql {

// A name in an SQL-level PREPARE, EXECUTE or DEALLOCATE: where it is in the text, so that it can be
// rewritten to the name pgsluice gives the statement on the server (DESIGN §2).
struct PreparedNameRef {
  enum class Kind { prepare, execute, deallocate } kind = Kind::execute;
  std::string name;                // as Postgres folds it: the client's statement name
  std::size_t name_begin = 0;      // the name's token in the text ([begin, end) bytes)
  std::size_t name_end = 0;
  std::size_t statement_begin = 0;  // its statement in the text (PREPARE: re-created from it)
  std::size_t statement_end = 0;
  int declared_types = 0;  // PREPARE name (types): how many (the statement takes the highest $n if more)
};

// One LISTEN or UNLISTEN of a text, in text order.
struct ListenChange {
  bool listen = true;    // LISTEN (else UNLISTEN)
  std::string channel;   // as Postgres folds it; empty: UNLISTEN *
};

struct SessionEffects {
  // A text that is one session-level SET of one setting to constants (SET work_mem = '64kB'):
  // the value it leaves is the same whoever runs it, so once a probe has read it back, later runs
  // of the same text need none. Shared by every session that runs the text.
  struct LiteralSetting {
    std::mutex mutex;
    std::optional<std::string> value;  // as current_setting() reads it; unknown until a probe read it
  };

  bool valid = true;                  // false: not SQL Postgres parses (its own error will say why)
  std::vector<std::string> settings;  // GUCs a session-level SET / RESET names (not SET LOCAL)
  std::vector<std::string> resets;    // those of them it RESETs (or SETs TO DEFAULT), in parser case
  bool reset_all = false;             // RESET ALL or DISCARD ALL: every setting back to its default
  bool pins = false;                  // LISTEN, a session advisory lock, a temporary relation, WITH HOLD
  bool may_unpin = false;             // UNLISTEN, an advisory unlock, DISCARD, DROP, CLOSE
  std::vector<PreparedNameRef> prepared;  // SQL PREPARE / EXECUTE / DEALLOCATE name, in text order
  std::size_t statements = 0;             // how many statements the text holds
  std::vector<ListenChange> listens;      // LISTEN / UNLISTEN, in text order
  bool discard_all = false;               // DISCARD ALL (which UNLISTENs * too)
  // Every statement of the text is a LISTEN or UNLISTEN: the pooled modes serve it with their
  // per-service listener connection instead of a server connection (DESIGN §2).
  bool only_listens() const { return statements > 0 && listens.size() == statements; }
  std::shared_ptr<LiteralSetting> literal;  // see LiteralSetting; null for any other text

  bool any() const { return !settings.empty() || reset_all || pins || may_unpin || !prepared.empty(); }
};

// False when `text` cannot have session effects: it starts with a keyword that never has any
// (SELECT, INSERT, ...), holds one statement only, and calls no advisory-lock function. True
// means "parse it to know".
bool may_have_session_effects(std::string_view text);

// The text starts with COPY (after white space and comments): the server may then wait for
// CopyData, and nothing else may be sent to it until the client ends the copy.
bool starts_copy(std::string_view text);

// The highest $n parameter `text` refers to (0: none). A Parse gets max(this, its type count)
// parameters, as Postgres counts them.
int highest_parameter(std::string_view text);

// Parses `text` (one or several statements) and reports their effects together.
SessionEffects analyze(std::string_view text);

// analyze() with a bounded cache of distinct texts, shared by every session (thread-safe).
class Analyzer {
 public:
  explicit Analyzer(std::size_t capacity = 4096) : capacity_(capacity) {}
  // Null when may_have_session_effects() says no or the text has no effect: nothing to follow.
  std::shared_ptr<const SessionEffects> effects_of(std::string_view text);

 private:
  std::size_t capacity_;
  std::mutex mutex_;
  std::list<std::string> order_;  // most recently used first
  struct Entry {
    std::list<std::string>::iterator at;
    std::shared_ptr<const SessionEffects> effects;
  };
  std::unordered_map<std::string_view, Entry> cache_;  // keys view the strings in order_
};

}  // namespace pgsluice::sql
