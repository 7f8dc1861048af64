#pragma once
// Transaction-mode prepared statements (DESIGN §2). A client's named statements live in pgsluice,
// mapped to server-side names keyed by (query text, parameter types); whichever server connection
// the client is given, missing statements are parsed there first and the injected replies are
// swallowed (a client's own Parse is always parsed by the server, see client_message). Every
// message sent to the server queues what it will answer, so that replies pgsluice makes itself
// (CloseComplete, DEALLOCATE, 42P05) go to the client at exactly the place Postgres would have put
// them, and so that an ErrorResponse unwinds the bookkeeping the way the server skips messages up
// to the next Sync. The result columns a client was told of are checked against the copy it binds
// (see client_message), so that DDL never hands it rows of a shape it does not expect.
// No sockets here: the session feeds messages in and writes what comes out.
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pgsluice/protocol/frontend_messages.hpp"
#include "pgsluice/protocol/message.hpp"
#include "pgsluice/server/parameter_map.hpp"
#include "pgsluice/server/server_statements.hpp"
#include "pgsluice/sql/session_effects.hpp"
#include "pgsluice/session/outgoing.hpp"

namespace pgsluice::session {

class StatementTracker {
 public:
  // stale_result_type: the client's Bind was written for the result columns its statement had when
  // it was described, but the server connection it was given now parses that text to other columns
  // (DDL in between) and refused the Bind's result formats (08P01). On the connection the client
  // described it on, Postgres would have said 0A000 "cached plan must not change result type", which
  // drivers heal by preparing again: the session sends that instead.
  // rewritten: relay rewritten_reply() in its place (an error naming a statement by the name
  // pgsluice gave it on the server, told with the client's name).
  enum class Disposition { relay, swallow, stale_result_type, rewritten };

  // One client message: appends what goes to the server to `to_server` (possibly nothing). False
  // when the message must wait: it binds a statement whose result the client knows (it described
  // it) to a copy on this server connection whose result pgsluice does not know, or knows to differ.
  // A Describe (and a Flush) of the copy went into `to_server` instead; send that, wait until
  // awaiting_shape() is false, then offer the same message again. After DDL the copy may be parsed
  // to columns of other types or names than the client was told of (a column count change is
  // caught by the Bind's result formats, below): rows of that shape would be read with the wrong
  // columns, so the client gets the 0A000 its own connection would have given it.
  // Also false for a message naming a statement whose Parse or Close (pgsluice answers a Close
  // itself) sent before a Sync is not answered yet: an error before it would make Postgres skip it,
  // and what this message must do depends on whether it did. Nothing went into `to_server` for it:
  // offer it again once awaiting_server() is false (the Sync's answer is on its way).
  bool client_message(const protocol::MessageView& message, server::ServerStatements& server, Outgoing& to_server);
  bool awaiting_server() const {
    return awaiting_shape_ || (!waiting_for_.empty() && name_in_doubt(waiting_for_)) ||
           (waiting_for_answers_ && answers_pending());
  }
  // One server message, in order: relay it to the client or swallow it (a reply to an injection).
  Disposition server_message(const protocol::MessageView& message, server::ServerStatements& server);
  const protocol::Buffer& rewritten_reply() const { return rewritten_; }
  // Simple Queries the server ignores (they came while it skips to a Sync after an error) and so
  // never answers with a ReadyForQuery; the session stops expecting one for each.
  int take_ignored_queries() { return std::exchange(ignored_queries_, 0); }
  // Replies pgsluice makes itself that are due now (nothing the server owes comes before them).
  void take_due_replies(Outgoing& to_client);
  bool has_due_replies() const { return !queue_.empty() && queue_.front().fake; }
  // No reply outstanding: the server connection may go back to the pool.
  bool idle() const { return queue_.empty(); }
  // Nothing to remember for the client: no statement, no session state in flight, nothing told
  // that a later RESET ALL must compare with. A new tracker would do the same from here on.
  bool carries_nothing() const;

  // The server-side name for a statement: the same text and types give the same name.
  static std::string server_name(std::string_view query, protocol::Bytes parameter_types);
  // Postgres's ErrorResponse for a prepared statement whose result changed under it.
  static void append_stale_plan_error(protocol::Buffer& out);

  std::size_t client_statement_count() const { return statements_.size(); }

  // Session state kept per client (DESIGN §2). Statements whose text may change it are recognised
  // by the parser (sql::Analyzer; none given: nothing is followed). After a batch that ran one, a
  // probe goes to the server behind the client's Sync or Query, its replies swallowed: it reads
  // back the settings named (their values as Postgres holds them, so replaying them elsewhere is
  // exact) and whether anything pins the client to this connection. What a probe finds once the
  // transaction has ended is settled; inside one it is asked again at the next batch.
  // `startup` are the client's startup parameters, which RESET ALL restores as Postgres does;
  // `wanted` everything the client carries (RESET ALL re-reads all of it). Both outlive the tracker.
  void follow_session_state(sql::Analyzer* analyzer, const server::ParameterMap* startup,
                            const server::ParameterMap* wanted) {
    analyzer_ = analyzer;
    startup_ = startup;
    wanted_ = wanted;
  }
  // How many prepared statements one client may keep here, and their text in bytes (DESIGN §8).
  void set_statement_limits(std::size_t count, std::size_t bytes) {
    max_statements_ = count;
    max_statement_bytes_ = bytes;
  }
  struct SettledSetting {
    std::string name;
    std::optional<std::string> value;  // nullopt: no such setting
    // The literal SET text that set it, when it was one of known value (else a probe read it).
    std::shared_ptr<sql::SessionEffects::LiteralSetting> literal{};
  };
  // Settings whose value a probe settled since the last call (the session records them).
  std::vector<SettledSetting> take_settled() { return std::exchange(settled_, {}); }
  bool has_settled() const { return !settled_.empty(); }
  // UNLISTENs (an empty channel: all, as DISCARD ALL does) the server ran and committed since the
  // last call: they end the client's subscriptions on the service's listener connection too.
  std::vector<sql::ListenChange> take_passed_unlistens() { return std::exchange(passed_unlistens_, {}); }
  bool has_passed_unlistens() const { return !passed_unlistens_.empty(); }
  // A simple Query pgsluice answered itself (LISTEN served by the listener connection): Postgres
  // drops the unnamed statement at any simple Query.
  void simple_query_answered_here() { unnamed_.exists = false; }
  // An unnamed Parse pgsluice answered itself (a literal SET, see ClientSession::try_answer_set):
  // the client's unnamed statement is that text now, on no server connection yet.
  void unnamed_parsed_here(std::string query, std::shared_ptr<const sql::SessionEffects> effects);
  // A client Parse the coalescer answered (DESIGN §4): the client's statement `name` ("" the unnamed
  // one) is this text now, on no server connection; or the Parse failed (the unnamed one is gone).
  void parsed_here(const std::string& name, std::string query, std::string parameter_types, bool succeeded);
  // The client's statement `name` ("" the unnamed one) as pgsluice knows it: its text and parameter
  // types as its Parse sent them. Null when it has none (or only pgsluice's idea of it is unsure).
  struct KnownStatement {
    std::string_view query;
    std::string_view parameter_types;
  };
  std::optional<KnownStatement> client_statement(const std::string& name) const;
  // One more named statement fits this client's limits.
  bool has_room_for_statement() const { return statements_.size() < max_statements_; }
  // LISTEN, a session advisory lock, a temporary relation or a WITH HOLD cursor holds the client to
  // this server connection: it is not given back between transactions.
  bool pinned() const { return pinned_; }
  // Settings or pins noted and not read back yet (see follow_session_state): the connection must
  // not go to another client before send_probe_now's answer is in.
  bool has_unsettled_state() const {
    return !dirty_settings_.empty() || reset_all_pending_ || pin_check_pending_ || !pending_literals_.empty() ||
           !startup_resets_.empty();
  }
  void send_probe_now(server::ServerStatements& server, Outgoing& to_server) {
    copy_in_batch_ = false;
    for (const auto& setting : pending_literals_) mark_dirty(setting.name);
    pending_literals_.clear();
    send_probe(server, to_server);
  }

 private:
  struct Statement {
    std::string query;
    std::string parameter_types;  // as sent in Parse
    std::string server_name;
    // Result columns as the client was told by its Describe of the statement or of a portal bound
    // to it (-1: never described). Binds ask for that many result formats, so that a server
    // connection that parses the text to another number of columns (DDL in between) refuses the
    // Bind instead of sending rows of another shape.
    int columns = -1;
    std::uint64_t shape = 0;  // protocol::RowShape fingerprint of that Describe; 0: never described
    std::shared_ptr<const sql::SessionEffects> effects{};  // of its text, when it has any
    std::uint64_t serial = 0;  // which client Parse made it (see abandon)
    // An SQL PREPARE's statement, re-created under server_name where it is missing (empty: a
    // protocol-level Parse made it). SQL and protocol names share one namespace, as in Postgres.
    std::string sql_prepare{};
    int sql_parameters = 0;  // ... and how many parameters it takes
  };
  // The client's unnamed statement as pgsluice knows it.
  struct UnnamedState {
    bool exists = false;        // false: the client has no unnamed statement (as Postgres would say)
    std::uint64_t token = 0;    // the client Parse that made it (ServerStatements::unnamed_owner)
    std::uint64_t server_owner = server::ServerStatements::kUnknownUnnamed;  // what the server held before
    std::string query;
    std::string parameter_types;
    std::shared_ptr<const sql::SessionEffects> effects;
    std::vector<std::pair<std::string, std::string>> renames;  // SQL PREPARE / EXECUTE names rewritten in it
  };
  // probe: a group pgsluice sends behind a Sync or Query, every reply up to its ReadyForQuery
  // swallowed (see follow_session_state).
  enum class Kind : std::uint8_t { parse, bind, describe_statement, describe_portal, close, execute, sync, simple, probe };
  // What one message sent to the server will answer. Small, so that a transaction's few fit in a
  // cache line or two: the names and replies that only some need are in Detail, on the side.
  static constexpr std::uint32_t kNoDetail = ~std::uint32_t{0};
  struct Expectation {
    Kind kind = Kind::parse;
    bool swallow = false;       // injected by pgsluice: the client never sees the reply
    bool fake = false;          // not sent: the detail's `reply` goes to the client in its place
    bool eviction = false;      // close: an LRU eviction (the statement stays if it is skipped)
    bool verification = false;  // describe_statement: injected to learn a copy's shape
    bool unnamed = false;       // parse, close: of the unnamed statement
    bool drops_all = false;     // execute, simple: runs DEALLOCATE ALL or DISCARD ALL
    bool holds_ready = false;   // sync, simple: its ReadyForQuery waits for the startup restore behind it
    bool learning = false;      // describe_statement: injected after the client's Parse (see send_parse)
    std::uint32_t detail = kNoDetail;
  };
  struct Detail {
    protocol::Buffer reply;    // fake only
    std::string server_name;   // parse: forgotten on the server if it fails or is skipped
    std::string client_name;   // parse: the client's name, dropped if the Parse fails or is skipped ...
    std::uint64_t serial = 0;  // ... and still names the statement this Parse made
    std::string described;     // bind, describe_*: the client statement's name (its columns, errors' names)
    // parse (unnamed, not the oldest pending one), close (of the unnamed statement): the unnamed
    // statement it replaced, restored if the server skips it (the oldest pending Parse keeps it in
    // previous_unnamed_ instead).
    std::optional<UnnamedState> replaced;
    // probe: the settings it reads back (after the pin count, when `probe_pins`).
    std::vector<std::string> probe_settings;
    bool probe_pins = false;
    bool probe_reset_all = false;
    std::vector<std::optional<std::string>> probe_row;  // its DataRow, settled at ReadyForQuery 'I'
    // simple: server names put in the client's text and the client's names they stand for, and
    // the statements its PREPAREs made (forgotten if it fails).
    std::vector<std::pair<std::string, std::string>> renames;
    std::vector<std::string> prepared_here;
    // sync, simple: literal SETs whose value is known, settled when this batch ends without an
    // error at ReadyForQuery 'I' (see sql::SessionEffects::LiteralSetting); probed otherwise.
    std::vector<SettledSetting> settle_if_committed;
    std::vector<sql::ListenChange> unlisten_if_committed;  // UNLISTENs of the batch (see take_passed_unlistens)
    bool batch_failed = false;
    // probe: the literal SET whose value it reads (the only setting it reads), to remember.
    std::shared_ptr<sql::SessionEffects::LiteralSetting> learns;
    bool restores_startup = false;  // probe: re-applies startup values after RESET ALL / DISCARD ALL
    bool keeps_copy = false;       // parse: a skipped stale Close before it left the old copy there
    // execute, probe: the server statement an SQL PREPARE pgsluice injected makes, forgotten on the
    // server if that PREPARE fails or is skipped (in a failed transaction, say).
    std::string injected_prepare;
    bool spelled_formats = false;  // bind: pgsluice named one result format per column
    // fake CloseComplete of a client statement: the statement, restored if the server never got
    // as far (an error earlier in the pipeline).
    std::optional<std::pair<std::string, Statement>> closed;
  };

  // A FIFO that keeps its storage: std::deque allocates and frees a block as a queue of one or two
  // expectations per transaction moves through it, a malloc and a free on every transaction.
  class Queue {
   public:
    bool empty() const { return head_ == items_.size(); }
    Expectation& front() { return items_[head_]; }
    const Expectation& front() const { return items_[head_]; }
    Expectation& back() { return items_.back(); }
    Expectation& emplace_back(Kind kind) {
      auto& added = items_.emplace_back();
      added.kind = kind;
      return added;
    }
    // The expectation's detail, made on first use (a reference valid until the next one is made).
    Detail& detail(Expectation& expectation) {
      if (expectation.detail == kNoDetail) {
        expectation.detail = static_cast<std::uint32_t>(details_.size());
        details_.emplace_back();
      }
      return details_[expectation.detail];
    }
    const Detail& detail(const Expectation& expectation) const {
      static const Detail kNone;
      return expectation.detail == kNoDetail ? kNone : details_[expectation.detail];
    }
    // What popped expectations hold goes when the queue drains (at each Sync, in practice).
    void pop_front() {
      ++head_;
      if (head_ == items_.size()) {
        items_.clear();
        details_.clear();
        head_ = 0;
      } else if (head_ >= 64 && head_ * 2 >= items_.size()) {  // a pipeline that never drains
        compact();
      }
    }

    template <typename Visit>
    void for_each(Visit visit) const {
      for (std::size_t i = head_; i < items_.size(); ++i) visit(items_[i]);
    }
    template <typename Visit>
    void for_each_mutable(Visit visit) {
      for (std::size_t i = head_; i < items_.size(); ++i) visit(items_[i]);
    }

   private:
    void compact() {
      std::vector<Detail> kept;
      for (std::size_t i = head_; i < items_.size(); ++i) {
        if (items_[i].detail == kNoDetail) continue;
        kept.push_back(std::move(details_[items_[i].detail]));
        items_[i].detail = static_cast<std::uint32_t>(kept.size() - 1);
      }
      items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
      details_ = std::move(kept);
      head_ = 0;
    }

    std::vector<Expectation> items_;
    std::vector<Detail> details_;
    std::size_t head_ = 0;
  };

  void expect(Kind kind, bool swallow = false) { queue_.emplace_back(kind).swallow = swallow; }
  void expect_fake(protocol::Buffer reply);
  // Makes sure `statement` exists on the server, injecting a Parse (and an eviction Close) if not.
  void ensure_on_server(const Statement& statement, server::ServerStatements& server, Outgoing& to_server);
  // Sends a Parse under the server name (closing a stale copy or an LRU victim first). With a client
  // name it answers the client's own Parse; without, it is an injection whose reply is swallowed.
  void send_parse(const Statement& statement, server::ServerStatements& server, Outgoing& to_server,
                  std::string client_name);
  // Before the client's next message after its Parse: a Describe of the statement, unless that
  // message is the client's own (unlearned_: the client name and server name).
  void learn_statement(const protocol::MessageView& next, Outgoing& to_server);
  // Asks the server for the shape of copy `server_name` (Describe + Flush): see client_message.
  void verify_shape(const std::string& server_name, Outgoing& to_server);
  // Before a Bind or Describe of the unnamed statement: the server connection holds this client's,
  // parsed again if another's (or none) is there; or, when the client has none, holds none either
  // (Closed), so that the client gets Postgres's 26000 and never another client's statement.
  void ensure_unnamed_on_server(server::ServerStatements& server, Outgoing& to_server);
  // The unnamed statement once an error undid a segment of the pipeline: the client's (unless
  // client_kept: unchanged) and whose the server holds.
  struct UnnamedAfter {
    std::optional<UnnamedState> client;
    bool client_kept = true;
    bool owner_known = false;
    std::uint64_t server_owner = server::ServerStatements::kUnknownUnnamed;
  };
  // The failed message was an unnamed Parse or Close: none is left (Postgres drops it first).
  std::optional<UnnamedAfter> unnamed_after_failure(const Expectation& failed);
  // An unnamed Parse or Close the server skipped, in order: the server's is what the first replaced,
  // the client's what its own first replaced.
  void unnamed_after_skip(const Expectation& skipped, UnnamedAfter& after);
  // Applies it, or, when a later client Parse or Close of the unnamed statement is pending behind
  // the Sync, makes it what that one replaced.
  void settle_unnamed(const UnnamedAfter& after, server::ServerStatements& server);
  // DEALLOCATE ALL or DISCARD ALL ran on the server (see server_message).
  void forget_named_statements(server::ServerStatements& server);
  // A DEALLOCATE ALL or DISCARD ALL sent is not answered yet: a name it drops may be parsed again.
  bool drop_all_pending() const;
  // A statement marked stale on this connection is closed (reply swallowed) before it is parsed anew.
  // True when it closed one (the Parse that follows replaces that copy).
  bool close_if_stale(const std::string& name, server::ServerStatements& server, Outgoing& to_server);
  // A client Parse or a Close of `name` is not answered yet, with a Sync behind it (see client_message).
  bool name_in_doubt(std::string_view name) const;
  // A Sync, Query or probe is unanswered: the transaction status is not known yet.
  bool answers_pending() const;
  // `statement` is missing from this connection while a Sync or Query is unanswered (true: wait).
  bool must_wait_to_inject(const Statement& statement, const server::ServerStatements& server);
  // The last ReadyForQuery said the transaction failed and nothing that could end it was sent since.
  bool in_failed_transaction() const;
  // A Bind of a statement missing from this connection, in a failed transaction: Postgres's 08P01
  // queued when its parameter counts are wrong (true), else nothing done.
  bool refuse_bind_in_failed_transaction(const protocol::BindView& bind, const Statement& statement,
                                         Outgoing& to_server);
  // An unnamed Parse or Close is unanswered with a Sync behind it (true: wait for the answers).
  bool must_wait_for_unnamed();
  // A Parse of the server statement is unanswered with a Sync behind it.
  bool copy_in_doubt(const std::string& server_name) const;
  // name_in_doubt: remembers the name for awaiting_server(), and says so.
  bool must_wait_for(std::string_view name);
  // The server will never answer this one (error, skipped): undo what it would have done.
  void abandon(Expectation& expectation, server::ServerStatements& server);
  // Session state: what a statement's text does, noted when it is sent.
  std::shared_ptr<const sql::SessionEffects> effects_of(std::string_view text) const {
    return analyzer_ ? analyzer_->effects_of(text) : nullptr;
  }
  void note_effects(const sql::SessionEffects& effects);
  // Behind a Sync or Query: the probe for what was noted, if anything was.
  void send_probe(server::ServerStatements& server, Outgoing& to_server);
  // A probe's answer: `row` read at ReadyForQuery `status`.
  void settle_probe(Detail& probe, char status);
  // The end of a batch that carried literal SETs of known value (see Detail::settle_if_committed).
  void settle_literals(Detail& batch, const protocol::MessageView& ready);
  void mark_dirty(const std::string& name);
  // The restore after RESET ALL is done: the held ParameterStatus that differ from what the client
  // was told go into rewritten_ (true when there are any).
  bool settle_status();
  // A ReadyForQuery held until the restore after it is done (Expectation::holds_ready).
  Disposition hold_ready(const protocol::MessageView& ready);
  // A simple query with SQL PREPARE / EXECUTE / DEALLOCATE names: sent with the names rewritten to
  // the client's own server-side statements (re-created here first where missing). False: none.
  bool rewrite_prepared_names(std::string_view text, const sql::SessionEffects& effects,
                              server::ServerStatements& server, Outgoing& to_server);
  // Whether one more statement of `bytes` fits this client's limits; if not, the 53400 it gets
  // is queued and the rest of the batch skipped (true: it does not fit).
  bool refuse_over_limit(std::size_t bytes, Outgoing& to_server);
  // An error pgsluice answers in the server's place: queued, the rest of the batch skipped.
  void fail_here(protocol::Buffer error, Outgoing& to_server);
  // The text with its SQL PREPARE / EXECUTE / DEALLOCATE names rewritten (nullopt: none to
  // rewrite), what those need injected before it (`in_batch`: inside the client's unsynced batch).
  std::optional<std::string> rewrite_prepared_text(std::string_view text, const sql::SessionEffects& effects,
                                                   server::ServerStatements& server, Outgoing& to_server, bool in_batch,
                                                   std::vector<std::pair<std::string, std::string>>& renames,
                                                   std::vector<std::string>& prepared_here);
  std::size_t bytes_to_prepare(const sql::SessionEffects& effects) const;
  // Before a Bind of a text that EXECUTEs SQL-prepared statements: those present on this connection.
  void ensure_executed_statements(const sql::SessionEffects& effects, server::ServerStatements& server,
                                  Outgoing& to_server);
  // Makes room on a full connection: its least recently used statement closed, reply swallowed.
  void evict_if_full(server::ServerStatements& server, Outgoing& to_server, bool in_batch);
  // A statement the client made, made present on this connection (see the definition).
  void inject_statement(const Statement& statement, server::ServerStatements& server, Outgoing& to_server,
                        bool in_batch);
  // Handles DEALLOCATE / DISCARD ALL sent as a simple query. True when the query was answered here.
  bool simple_query(const protocol::MessageView& message, Outgoing& to_server);

  std::unordered_map<std::string, Statement> statements_;  // by the client's name
  UnnamedState unnamed_;
  UnnamedState previous_unnamed_;   // what the oldest pending unnamed Parse replaced
  int pending_unnamed_parses_ = 0;  // client Parses of the unnamed statement not yet answered
  bool skip_until_sync_ = false;         // after a 42P05 pgsluice answered, like the server would
  std::uint64_t stand_ins_ = 0;          // throwaway statements for DEALLOCATE (see client_message)
  bool awaiting_shape_ = false;          // a verification Describe is unanswered
  std::string waiting_for_;              // a statement name in doubt (must_wait_for)
  bool waiting_for_answers_ = false;     // a message waits for the transaction status
  std::pair<std::string, std::string> unlearned_;  // a statement just parsed (learn_statement)
  char transaction_status_ = 'I';        // of the last ReadyForQuery
  std::uint64_t statement_serials_ = 0;
  std::vector<std::uint64_t> unwound_serials_;  // statements whose Parse the server skipped (see abandon)
  std::string verified_;                 // the copy the last verification asked about
  std::string bound_portal_;             // the portal of the last Bind of a client statement ...
  std::string bound_statement_;          // ... and that statement's client name (empty: other Binds)
  sql::Analyzer* analyzer_ = nullptr;
  const server::ParameterMap* startup_ = nullptr;
  const server::ParameterMap* wanted_ = nullptr;
  std::vector<std::string> dirty_settings_;  // SET / RESET sent, not settled by a probe yet
  std::vector<SettledSetting> pending_literals_;  // literal SETs of known value sent in this batch
  std::shared_ptr<sql::SessionEffects::LiteralSetting> learning_;  // the one dirty setting's literal SET
  // Learned only if that SET is the batch's last statement: the portal its Bind made (an Execute
  // of any other portal, any later Bind, Query or FunctionCall stops the learning).
  std::string learning_portal_;  // the last Bind's portal
  bool reset_all_pending_ = false;           // RESET ALL / DISCARD ALL sent: startup values to restore
  std::vector<std::string> startup_resets_;  // startup parameters RESET one by one: to restore
  bool pin_check_pending_ = false;           // something that pins or unpins was sent
  bool pinned_ = false;
  std::vector<SettledSetting> settled_;
  std::vector<sql::ListenChange> passed_unlistens_;         // took effect: for the listener connection
  std::vector<sql::ListenChange> unlistens_in_batch_;       // noted, the batch not ended yet
  std::vector<sql::ListenChange> unlistens_in_transaction_;  // ran in a transaction block still open
  bool transaction_committed_ = false;                      // its last CommandComplete said COMMIT
  std::size_t max_statements_ = 1000;
  std::size_t max_statement_bytes_ = 16u * 1024u * 1024u;
  int ignored_queries_ = 0;
  int restores_pending_ = 0;  // startup restores sent and not answered: ParameterStatus is held
  std::map<std::string, std::string> held_status_;  // name -> the last value held meanwhile
  protocol::Buffer held_ready_;                      // the client's ReadyForQuery meanwhile
  std::map<std::string, std::string> told_status_;  // name -> the last value the client was told
  bool copy_in_batch_ = false;  // a COPY was sent since the last Sync or Query: no probe behind it
  std::uint64_t client_id_ = 0;     // names this client's SQL-prepared statements on the server
  std::uint64_t sql_prepares_ = 0;
  protocol::Buffer rewritten_;
  bool dropping_portal_ = false;      // the last Bind of the unnamed statement runs DEALLOCATE ALL ...
  std::string dropping_portal_name_;  // ... into this portal
  std::vector<std::pair<std::string, std::string>> portal_renames_;  // the unnamed statement's renames ...
  std::string renamed_portal_;                                        // ... for the portal bound to it
  Queue queue_;
};

}  // namespace pgsluice::session
