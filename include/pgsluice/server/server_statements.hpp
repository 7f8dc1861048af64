#pragma once
// The prepared statements pgsluice created on one server connection, under its own names, with an
// LRU bound (DESIGN §2). The same statement text and parameter types get the same name everywhere,
// so a statement used by many clients is parsed once per server connection.
#include <cstddef>
#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>

namespace pgsluice::server {

class ServerStatements {
 public:
  explicit ServerStatements(std::size_t capacity = 512) : capacity_(capacity) {}

  bool contains(const std::string& name) const { return index_.contains(name) && !stale_.contains(name); }
  // The server still has it, but its plan is stale (0A000 "cached plan must not change result
  // type" after DDL): it must be closed before it is parsed again.
  void mark_stale(const std::string& name) {
    if (index_.contains(name)) stale_.insert(name);
  }
  // True (and forgets the mark) when `name` must be closed on the server before its next Parse.
  bool take_stale(const std::string& name) { return stale_.erase(name) > 0; }
  // Counted from the moment its Parse is sent, so that a pipeline does not parse it twice.
  void add(const std::string& name);
  void forget(const std::string& name);
  void touch(const std::string& name);
  // The result shape (protocol::RowShape's fingerprint) a Describe of this copy reported; 0 until
  // one did. Postgres never lets a copy's result change (it fails the copy with 0A000 instead), so
  // once known it holds for as long as the copy lives. A new Parse (add) forgets it.
  std::uint64_t shape(const std::string& name) const;
  void set_shape(const std::string& name, std::uint64_t shape);
  void clear();
  std::size_t size() const { return index_.size(); }

  // Whose unnamed statement the server holds now: the token of the client Parse that made it (see
  // StatementTracker), kNoUnnamed when there is none, kUnknownUnnamed when it may be anything (one
  // pgsluice parsed to apply parameters). Whatever else replaces or drops it on this connection
  // says so here, so that a client landing here again never binds another's.
  static constexpr std::uint64_t kUnknownUnnamed = 0;
  static constexpr std::uint64_t kNoUnnamed = 1;
  std::uint64_t unnamed_owner() const { return unnamed_owner_; }
  void set_unnamed_owner(std::uint64_t token) { unnamed_owner_ = token; }
  // When full: the least recently used name, removed here; the caller closes it on the server.
  std::optional<std::string> evict_if_full();

 private:
  std::size_t capacity_;
  std::list<std::string> order_;  // most recently used at the front
  struct Entry {
    std::list<std::string>::iterator at;
    std::uint64_t shape = 0;
  };
  std::unordered_map<std::string, Entry> index_;
  std::unordered_set<std::string> stale_;
  std::uint64_t unnamed_owner_ = kNoUnnamed;  // a new connection has none
};

}  // namespace pgsluice::server
