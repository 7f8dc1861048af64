#pragma once
// The coalescer of one service (DESIGN §4): identical concurrent reads share one execution, and
// the same read with different values becomes one batched statement, while every client gets
// exactly the messages it would have got had its statement run alone.
//  - A session hands over one eligible statement (a Submission) and waits for its Answer; the
//    answer comes through the callback the session gave, on the execution's thread (the session
//    posts it to its own worker, where its one writer sends it).
//  - Freshness: a key with nothing in flight executes at once; what arrives while an execution is
//    in flight forms the next one (at most max_batch each). No request joins an execution that was
//    sent before it arrived.
//  - An execution leases a connection of the service's pool, makes its session parameters the
//    requests', runs one statement (the request alone, or the batched form of them all) and
//    fans the outcome out. A batch that fails is run again one request at a time, pipelined, so
//    each client gets its own result or error.
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "pgsluice/coalesce/request.hpp"
#include "pgsluice/pool/pool.hpp"
#include "pgsluice/server/parameter_map.hpp"
#include "pgsluice/sql/select_analysis.hpp"

namespace pgsluice::coalesce {

struct Settings {
  std::string service;
  int max_batch = 256;
  std::chrono::microseconds window{0};
  bool allow_views = false;  // views and foreign tables may be read by shared executions
  std::chrono::milliseconds query_timeout{0};
  std::chrono::milliseconds connect_timeout{2000};
};

struct Answer {
  enum class Kind { reply, failed, bypass } kind = Kind::reply;
  protocol::Buffer bytes;  // reply: every message up to the ReadyForQuery
  std::string sqlstate;    // failed: no execution (no connection): the session answers the error
  std::string message;
};

struct Submission {
  std::string key;  // everything that must be equal to share an execution (see ClientSession)
  bool simple = false;                // a simple Query (`text`), else one extended-protocol group
  std::string text;
  std::string parameter_types;        // Parse's: Int16 count + Int32 OIDs, as sent
  std::string bind_rest;              // Bind's formats, values and result formats, as sent
  std::string values;                 // the part of bind_rest with the values (equal: same values)
  Steps steps;
  std::shared_ptr<const sql::SelectAnalysis> analysis;
  server::ParameterMap parameters;    // the client's session parameters, applied to the connection
  std::string parameters_fingerprint;
  std::string user;                   // for the logs
  // Called once from the execution (any thread).
  std::function<void(Answer)> answer;
  std::atomic<bool> abandoned{false};  // the client cancelled or left: no answer wanted
  std::chrono::steady_clock::time_point submitted_at = std::chrono::steady_clock::now();
};

// Per statement fingerprint (libpg_query): what the coalescer did with it (SHOW STATEMENTS).
struct StatementRow {
  std::string fingerprint;
  std::string normalized;  // constants as $n: never a value
  std::uint64_t calls = 0;       // requests
  std::uint64_t rows = 0;
  double total_seconds = 0;      // from the request's arrival to its answer
  double max_seconds = 0;
  std::uint64_t shared = 0;      // requests answered by an execution that also answered another
  std::uint64_t executions = 0;  // statements run on the server for them
  std::uint64_t n_plus_one = 0;  // sessions seen running it many times in a row with other values
};

struct CoalescerStats {
  std::uint64_t requests = 0;     // submissions taken
  std::uint64_t executions = 0;   // statements sent for them (a batch or a single one)
  std::uint64_t shared = 0;       // requests answered by an execution another request also got
  std::uint64_t batches = 0;      // batched executions that succeeded
  std::uint64_t fallbacks = 0;    // batches run again one request at a time
  std::map<std::string, std::uint64_t> ineligible;  // requests passed through, by reason
  // Requests answered, by what answered them: kOutcomeNames[i] counts outcomes[i].
  static constexpr std::array<const char*, 5> kOutcomeNames{"alone", "shared", "batched", "bypassed", "failed"};
  std::array<std::uint64_t, kOutcomeNames.size()> outcomes{};
  // Requests per execution round (one batch taken from a key's queue): counts per bucket upper
  // bound kBatchSizeBounds[i] (not cumulative), then the ones above the last bound.
  static constexpr std::array<double, 11> kBatchSizeBounds{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
  std::array<std::uint64_t, kBatchSizeBounds.size() + 1> batch_sizes{};
  std::uint64_t batch_size_sum = 0;
  std::uint64_t n_plus_one = 0;  // likely N+1 patterns logged
  std::vector<StatementRow> statements;  // the busiest first
};

class Coalescer : public std::enable_shared_from_this<Coalescer> {
 public:
  Coalescer(Settings settings, std::shared_ptr<pool::Pool> pool);

  Settings settings() const;
  // A reload changed the service: executions from now on use these (the counters go on).
  void reconfigure(Settings settings);
  // May a statement of this text (and session parameters) be handed over? False for what the
  // parser or the catalog found ineligible (counted by reason).
  bool may_take(const sql::SelectAnalysis& analysis, const std::string& text, const std::string& parameters_fingerprint);
  // Hands over a request; `executor` is the session's worker (an execution it starts runs there).
  void submit(std::shared_ptr<Submission> submission, const boost::asio::any_io_executor& executor);
  // Counted passes (the session decides some reasons itself: in a transaction, Flush, ...).
  void count_ineligible(const std::string& reason);
  CoalescerStats stats() const;
  // A session ran `analysis`'s statement `count` times in a row with other values within `took`:
  // logged at most once a minute per fingerprint ("likely N+1").
  void note_n_plus_one(const sql::SelectAnalysis& analysis, std::uint32_t count, std::chrono::steady_clock::duration took);

  struct Slot;
  struct KeyInfo;
  struct Execution;

 private:
  boost::asio::awaitable<void> run(std::shared_ptr<Slot> slot, boost::asio::any_io_executor executor);
  boost::asio::awaitable<void> execute(std::vector<std::shared_ptr<Submission>> batch,
                                       boost::asio::any_io_executor executor, Settings settings);
  std::shared_ptr<KeyInfo> key_info(const std::string& key);
  // A verdict is kept per statement shape (libpg_query fingerprint, else the text) and settings.
  std::string verdict_key(const std::string& shape, const std::string& parameters_fingerprint) const;
  void remember_verdict(const std::string& key, std::string reason);

  Settings settings_;
  std::shared_ptr<pool::Pool> pool_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, std::shared_ptr<Slot>> slots_;
  std::unordered_map<std::string, std::shared_ptr<KeyInfo>> keys_;
  struct Verdict {
    std::string reason;  // empty: eligible
    std::chrono::steady_clock::time_point until;
  };
  std::unordered_map<std::string, Verdict> verdicts_;
  // Element type OID -> its array type's OID, learned from the catalog (built-ins are known).
  std::unordered_map<std::uint32_t, std::uint32_t> array_types_;
  std::atomic<std::uint64_t> requests_{0}, executions_{0}, shared_{0}, batches_{0}, fallbacks_{0};
  enum OutcomeIndex : std::size_t { alone, shared, batched, bypassed, failed };
  std::array<std::atomic<std::uint64_t>, CoalescerStats::kOutcomeNames.size()> outcomes_{};
  std::array<std::atomic<std::uint64_t>, CoalescerStats::kBatchSizeBounds.size() + 1> batch_sizes_{};
  std::atomic<std::uint64_t> batch_size_sum_{0};
  void observe_batch(std::size_t size);
  // Answers every member still waiting with `answer` (failed or bypass), counted by its kind.
  void answer_all(std::vector<std::shared_ptr<Submission>>& batch, const Answer& answer);
  std::map<std::string, std::uint64_t> ineligible_;
  // Per fingerprint (bounded: the least called goes first).
  struct StatementEntry {
    StatementRow row;
    std::chrono::steady_clock::time_point n_plus_one_logged{};
  };
  std::unordered_map<std::string, StatementEntry> statements_;
  std::uint64_t n_plus_one_ = 0;
  StatementEntry& statement_locked(const sql::SelectAnalysis& analysis);
  void record_locked(const Submission& submission, const Outcome& outcome, std::chrono::steady_clock::time_point now,
                     bool shared, std::uint64_t executions);
};

}  // namespace pgsluice::coalesce
