// The coalescer of one service (see coalescer.hpp).
#include "pgsluice/coalesce/coalescer.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <algorithm>
#include <deque>
#include <span>
#include <unordered_map>

#include "pgsluice/net/io.hpp"
#include "pgsluice/protocol/backend_messages.hpp"
#include "pgsluice/protocol/frontend_messages.hpp"
#include "pgsluice/server/server_connection.hpp"

namespace pgsluice::coalesce {

namespace asio = boost::asio;
using protocol::Buffer;

struct Coalescer::Slot {
  std::string key;
  std::deque<std::shared_ptr<Submission>> pending;
  int running = 0;  // executions of this key taking from `pending`
};

// What the server said of a key's statement: its parameter types (the batched form's arrays are of
// them) and its result columns.
struct Coalescer::KeyInfo {
  std::mutex mutex;
  bool described = false;
  std::vector<std::uint32_t> parameter_oids;
  std::vector<std::uint32_t> array_oids;  // 0: the type has no array type (never batched)
  bool unbatchable = false;               // the batched form does not parse: run them one by one
};

namespace {

constexpr auto kVerdictLifetime = std::chrono::seconds(60);
constexpr std::size_t kMaxRemembered = 8192;  // keys and verdicts: cleared whole when past it

// The array types of the built-in types (pg_type.typarray); others are asked of the catalog.
std::uint32_t builtin_array_type(std::uint32_t oid) {
  switch (oid) {
    case 16: return 1000;    // bool
    case 17: return 1001;    // bytea
    case 18: return 1002;    // char
    case 19: return 1003;    // name
    case 20: return 1016;    // int8
    case 21: return 1005;    // int2
    case 23: return 1007;    // int4
    case 25: return 1009;    // text
    case 26: return 1028;    // oid
    case 114: return 199;    // json
    case 700: return 1021;   // float4
    case 701: return 1022;   // float8
    case 1042: return 1014;  // bpchar
    case 1043: return 1015;  // varchar
    case 1082: return 1182;  // date
    case 1083: return 1183;  // time
    case 1114: return 1115;  // timestamp
    case 1184: return 1185;  // timestamptz
    case 1186: return 1187;  // interval
    case 1266: return 1270;  // timetz
    case 1700: return 1231;  // numeric
    case 2950: return 2951;  // uuid
    case 3802: return 3807;  // jsonb
    case 869: return 1041;   // inet
    case 650: return 651;    // cidr
    default: return 0;
  }
}

std::string frame_of(const protocol::MessageView& message) { return std::string(protocol::as_string_view(message.frame)); }

// DataRow columns as text (nullopt: NULL).
std::vector<std::optional<std::string>> row_columns(protocol::Bytes payload) {
  std::vector<std::optional<std::string>> columns;
  if (payload.size() < 2) return columns;
  const auto count = protocol::read_u16(payload.data());
  std::size_t at = 2;
  for (int i = 0; i < count && at + 4 <= payload.size(); ++i) {
    const auto length = static_cast<std::int32_t>(protocol::read_u32(payload.data() + at));
    at += 4;
    if (length < 0) {
      columns.emplace_back(std::nullopt);
      continue;
    }
    if (at + static_cast<std::size_t>(length) > payload.size()) break;
    columns.emplace_back(std::string(protocol::as_string_view(payload.subspan(at, static_cast<std::size_t>(length)))));
    at += static_cast<std::size_t>(length);
  }
  return columns;
}

std::vector<std::uint32_t> parameter_oids_of(std::string_view description) {
  std::vector<std::uint32_t> oids;
  if (description.size() < 7) return oids;
  const auto* data = reinterpret_cast<const std::uint8_t*>(description.data());
  const auto count = protocol::read_u16(data + 5);
  for (std::size_t i = 0; i < count && 7 + 4 * i + 4 <= description.size(); ++i) {
    oids.push_back(protocol::read_u32(data + 7 + 4 * i));
  }
  return oids;
}


std::string error_message(protocol::Bytes payload) {
  auto fields = protocol::parse_error_response(payload);
  return fields ? fields->sqlstate + " " + fields->message : std::string("malformed ErrorResponse");
}

std::string quote_ident(std::string_view name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

// Reads the server's replies for an execution; query_timeout cancels what runs too long.
class Link {
 public:
  Link(server::ServerConnection& server, asio::any_io_executor executor, const Settings& settings)
      : server_(server), executor_(std::move(executor)), settings_(settings), watch_(std::make_shared<Watch>()),
        timer_(executor_) {}
  ~Link() { watch_->done = true; }

  bool broken = false;  // the connection cannot be used again
  bool dirty = false;   // its session state changed (ParameterStatus): not reused

  net::awaitable<bool> write(const Buffer& out) {
    arm();
    auto ec = co_await net::write_all(server_.stream(), std::span<const std::uint8_t>(out.data(), out.size()));
    if (ec) broken = true;
    co_return !ec;
  }
  // The next message (valid until the next read); nullopt: the connection broke.
  net::awaitable<std::optional<protocol::MessageView>> read() {
    if (consume_) server_.buffer().consume(std::exchange(consume_, 0));
    auto message = co_await net::read_message(server_.stream(), server_.buffer(), server_.target().max_message_size);
    if (!message) {
      broken = true;
      co_return std::nullopt;
    }
    consume_ = message->frame.size();
    if (message->type == 'S') dirty = true;
    co_return *message;
  }
  bool timed_out() const { return watch_->cancelled; }
  // query_timeout's error, as the session gives it.
  std::string timeout_error() const {
    Buffer out;
    protocol::append_error_response(out, protocol::Severity::error, "57014",
                                    "pgsluice: query_timeout (" + std::to_string(settings_.query_timeout.count()) +
                                        "ms) of service \"" + settings_.service +
                                        "\" expired; the statement was cancelled");
    return std::string(out.begin(), out.end());
  }
  void finish() {
    if (consume_) server_.buffer().consume(std::exchange(consume_, 0));
    watch_->done = true;
    timer_.cancel();
  }
  // An ErrorResponse, with pgsluice's query_timeout text for the cancel its timer sent.
  std::string error_frame(const protocol::MessageView& message) const {
    if (watch_->cancelled) {
      auto fields = protocol::parse_error_response(message.payload);
      if (fields && fields->sqlstate == "57014") return timeout_error();
    }
    return frame_of(message);
  }

 private:
  struct Watch {
    bool done = false;
    bool cancelled = false;
  };
  void arm() {
    if (armed_ || settings_.query_timeout.count() <= 0) return;
    armed_ = true;
    timer_.expires_after(settings_.query_timeout);
    auto watch = watch_;
    auto* server = &server_;
    auto executor = executor_;
    timer_.async_wait([watch, server, executor](boost::system::error_code ec) {
      if (ec || watch->done) return;
      // The statement is cancelled on the server and the connection given up (whatever else the
      // pipeline holds would run on): every member not answered yet gets query_timeout's 57014.
      watch->cancelled = true;
      asio::co_spawn(executor, server::send_cancel(executor, server->target(), server->backend_key()), asio::detached);
      boost::system::error_code ignored;
      server->stream().socket().close(ignored);
    });
  }

  server::ServerConnection& server_;
  asio::any_io_executor executor_;
  const Settings& settings_;
  std::shared_ptr<Watch> watch_;
  asio::steady_timer timer_;
  bool armed_ = false;
  std::size_t consume_ = 0;
};

// The canonical order of one request run alone: Parse / Describe S / Bind / Execute / Sync.
void append_single(const Submission& s, Buffer& out) {
  if (s.simple) {
    protocol::append_query(out, s.text);
    return;
  }
  protocol::append_parse(out, "", s.text, bytes_of(s.parameter_types));
  protocol::append_describe(out, 'S', "");
  protocol::append_bind(out, "", "", bytes_of(s.bind_rest));
  protocol::append_execute(out, "");
  protocol::append_sync(out);
}

// Reads one request's replies up to its ReadyForQuery into `outcome`.
net::awaitable<bool> read_single(Link& link, const Submission& s, Outcome& outcome) {
  using Stage = Outcome::Stage;
  Stage stage = Stage::parse;
  for (;;) {
    auto message = co_await link.read();
    if (!message) co_return false;
    const char type = message->type;
    if (s.simple) {
      outcome.simple_reply += type == 'E' ? link.error_frame(*message) : frame_of(*message);
      if (type == 'D') ++outcome.row_count;
      if (type == 'Z') co_return true;
      continue;
    }
    switch (type) {
      case '1': stage = Stage::bind; break;
      case 't': outcome.parameter_description = frame_of(*message); break;
      case 'T': case 'n': outcome.row_description = frame_of(*message); break;
      case '2': stage = Stage::execute; break;
      case 'D': ++outcome.row_count; outcome.rows += frame_of(*message); break;
      case 'N': case 'S': outcome.rows += frame_of(*message); break;
      case 'C': outcome.complete = frame_of(*message); break;
      case 'E':
        outcome.failed_at = stage;
        outcome.error = link.error_frame(*message);
        break;
      case 'Z': co_return true;
      default: break;  // NotificationResponse: none are listened for on pooled connections
    }
  }
}

}  // namespace

Coalescer::Coalescer(Settings settings, std::shared_ptr<pool::Pool> pool)
    : settings_(std::move(settings)), pool_(std::move(pool)) {
  if (settings_.max_batch < 1) settings_.max_batch = 1;
}

Settings Coalescer::settings() const {
  std::lock_guard lock(mutex_);
  return settings_;
}

void Coalescer::reconfigure(Settings settings) {
  if (settings.max_batch < 1) settings.max_batch = 1;
  std::lock_guard lock(mutex_);
  settings_ = std::move(settings);
}

std::string Coalescer::verdict_key(const std::string& shape, const std::string& parameters_fingerprint) const {
  std::string key = parameters_fingerprint;
  key += '\0';
  key += shape;
  return key;
}

bool Coalescer::may_take(const sql::SelectAnalysis& analysis, const std::string& text,
                         const std::string& parameters_fingerprint) {
  if (!analysis.eligible()) {
    count_ineligible(analysis.ineligible);
    return false;
  }
  std::lock_guard lock(mutex_);
  auto it = verdicts_.find(verdict_key(analysis.fingerprint.empty() ? text : analysis.fingerprint, parameters_fingerprint));
  if (it == verdicts_.end() || it->second.reason.empty()) return true;
  if (it->second.until < std::chrono::steady_clock::now()) {
    verdicts_.erase(it);
    return true;
  }
  ++ineligible_[it->second.reason];
  return false;
}

void Coalescer::count_ineligible(const std::string& reason) {
  std::lock_guard lock(mutex_);
  ++ineligible_[reason];
}

void Coalescer::remember_verdict(const std::string& key, std::string reason) {
  std::lock_guard lock(mutex_);
  if (verdicts_.size() >= kMaxRemembered) verdicts_.clear();
  verdicts_[key] = Verdict{std::move(reason), std::chrono::steady_clock::now() + kVerdictLifetime};
}

void Coalescer::answer_all(std::vector<std::shared_ptr<Submission>>& batch, const Answer& answer) {
  auto& counter = outcomes_[answer.kind == Answer::Kind::bypass ? bypassed : failed];
  for (auto& s : batch) {
    if (!s->answer) continue;
    counter.fetch_add(1, std::memory_order_relaxed);
    auto copy = answer;
    std::exchange(s->answer, nullptr)(std::move(copy));
  }
}

void Coalescer::observe_batch(std::size_t size) {
  const auto& bounds = CoalescerStats::kBatchSizeBounds;
  std::size_t bucket = 0;
  while (bucket < bounds.size() && static_cast<double>(size) > bounds[bucket]) ++bucket;
  batch_sizes_[bucket].fetch_add(1, std::memory_order_relaxed);
  batch_size_sum_.fetch_add(size, std::memory_order_relaxed);
}

CoalescerStats Coalescer::stats() const {
  CoalescerStats stats;
  stats.requests = requests_.load();
  stats.executions = executions_.load();
  stats.shared = shared_.load();
  stats.batches = batches_.load();
  stats.fallbacks = fallbacks_.load();
  for (std::size_t i = 0; i < outcomes_.size(); ++i) stats.outcomes[i] = outcomes_[i].load();
  for (std::size_t i = 0; i < batch_sizes_.size(); ++i) stats.batch_sizes[i] = batch_sizes_[i].load();
  stats.batch_size_sum = batch_size_sum_.load();
  std::lock_guard lock(mutex_);
  stats.ineligible = ineligible_;
  stats.n_plus_one = n_plus_one_;
  stats.statements.reserve(statements_.size());
  for (const auto& [fingerprint, entry] : statements_) stats.statements.push_back(entry.row);
  std::sort(stats.statements.begin(), stats.statements.end(),
            [](const StatementRow& a, const StatementRow& b) { return a.calls > b.calls; });
  return stats;
}

Coalescer::StatementEntry& Coalescer::statement_locked(const sql::SelectAnalysis& analysis) {
  constexpr std::size_t kMaxStatements = 500;
  auto it = statements_.find(analysis.fingerprint);
  if (it != statements_.end()) return it->second;
  if (statements_.size() >= kMaxStatements) {
    auto least = std::min_element(statements_.begin(), statements_.end(), [](const auto& a, const auto& b) {
      return a.second.row.calls < b.second.row.calls;
    });
    statements_.erase(least);
  }
  auto& entry = statements_[analysis.fingerprint];
  entry.row.fingerprint = analysis.fingerprint;
  entry.row.normalized = analysis.normalized;
  return entry;
}

void Coalescer::record_locked(const Submission& submission, const Outcome& outcome,
                              std::chrono::steady_clock::time_point now, bool shared, std::uint64_t executions) {
  if (!submission.analysis || submission.analysis->fingerprint.empty()) return;
  auto& row = statement_locked(*submission.analysis).row;
  const double took = std::chrono::duration<double>(now - submission.submitted_at).count();
  ++row.calls;
  row.rows += outcome.row_count;
  row.total_seconds += took;
  row.max_seconds = std::max(row.max_seconds, took);
  if (shared) ++row.shared;
  row.executions += executions;
}

void Coalescer::note_n_plus_one(const sql::SelectAnalysis& analysis, std::uint32_t count,
                                std::chrono::steady_clock::duration took) {
  if (analysis.fingerprint.empty()) return;
  const auto now = std::chrono::steady_clock::now();
  std::string service;
  {
    std::lock_guard lock(mutex_);
    auto& entry = statement_locked(analysis);
    ++entry.row.n_plus_one;
    if (entry.n_plus_one_logged != std::chrono::steady_clock::time_point{} &&
        now - entry.n_plus_one_logged < std::chrono::minutes(1)) {
      return;
    }
    entry.n_plus_one_logged = now;
    ++n_plus_one_;
    service = settings_.service;
  }
  spdlog::warn("pgsluice: likely N+1 in service \"{}\": {} ran {} times in {} ms", service, analysis.normalized, count,
               std::chrono::duration_cast<std::chrono::milliseconds>(took).count());
}

std::shared_ptr<Coalescer::KeyInfo> Coalescer::key_info(const std::string& key) {
  std::lock_guard lock(mutex_);
  auto& info = keys_[key];
  if (!info) {
    if (keys_.size() >= kMaxRemembered) {
      keys_.clear();
      auto& again = keys_[key];
      again = std::make_shared<KeyInfo>();
      return again;
    }
    info = std::make_shared<KeyInfo>();
  }
  return info;
}

void Coalescer::submit(std::shared_ptr<Submission> submission, const asio::any_io_executor& executor) {
  ++requests_;
  std::shared_ptr<Slot> start;
  {
    std::lock_guard lock(mutex_);
    auto& slot = slots_[submission->key];
    if (!slot) {
      slot = std::make_shared<Slot>();
      slot->key = submission->key;
    }
    slot->pending.push_back(std::move(submission));
    // Nothing in flight: at once. A full next batch starts an execution of its own.
    if (slot->running == 0 || slot->pending.size() >= static_cast<std::size_t>(settings_.max_batch)) {
      ++slot->running;
      start = slot;
    }
  }
  if (start) asio::co_spawn(executor, run(std::move(start), executor), asio::detached);
}

net::awaitable<void> Coalescer::run(std::shared_ptr<Slot> slot, asio::any_io_executor executor) {
  auto self = shared_from_this();
  for (;;) {
    const auto settings = this->settings();
    if (settings.window.count() > 0) {
      asio::steady_timer timer(executor, settings.window);
      co_await timer.async_wait(net::use_nothrow);
    }
    std::vector<std::shared_ptr<Submission>> batch;
    {
      std::lock_guard lock(mutex_);
      while (!slot->pending.empty() && batch.size() < static_cast<std::size_t>(settings.max_batch)) {
        auto next = std::move(slot->pending.front());
        slot->pending.pop_front();
        if (!next->abandoned.load()) {
          batch.push_back(std::move(next));
        } else {
          next->answer = nullptr;  // the client was answered already (a cancel): nothing to say
        }
      }
      if (batch.empty()) {
        if (--slot->running == 0 && slot->pending.empty()) {
          if (auto it = slots_.find(slot->key); it != slots_.end() && it->second == slot) slots_.erase(it);
        }
        co_return;
      }
    }
    observe_batch(batch.size());
    try {
      co_await execute(batch, executor, settings);
    } catch (const std::exception& e) {
      spdlog::error("service {}: coalesced execution failed: {}", settings.service, e.what());
      Answer answer;
      answer.kind = Answer::Kind::failed;
      answer.sqlstate = "XX000";
      answer.message = "pgsluice: internal error in a coalesced execution";
      answer_all(batch, answer);
    }
  }
}

namespace {

std::string sqlstate_of(pool::AcquireError error) {
  switch (error) {
    case pool::AcquireError::timeout:
    case pool::AcquireError::too_many_waiting:
    case pool::AcquireError::paused: return "53300";
    case pool::AcquireError::connect_failed:
    case pool::AcquireError::circuit_open: return "57P03";
    case pool::AcquireError::closed: return "57P01";
  }
  return "53300";
}

// The catalog's facts about a statement's functions, operators and relations, in one round trip.
constexpr std::string_view kCatalogQuery =
    "SELECT 'f', p.proname::text, bool_or(p.provolatile = 'v')::text FROM pg_catalog.pg_proc p "
    "WHERE p.proname = ANY($1::text[]) GROUP BY p.proname "
    "UNION ALL SELECT 'o', o.oprname::text, bool_or(f.provolatile = 'v')::text FROM pg_catalog.pg_operator o "
    "JOIN pg_catalog.pg_proc f ON f.oid = o.oprcode WHERE o.oprname = ANY($2::text[]) GROUP BY o.oprname "
    "UNION ALL SELECT 'r', r.n, (SELECT c.relkind::text || CASE WHEN c.relrowsecurity THEN '+' ELSE '' END "
    "FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass(r.n)) FROM unnest($3::text[]) AS r(n)";

}  // namespace

net::awaitable<void> Coalescer::execute(std::vector<std::shared_ptr<Submission>> batch, asio::any_io_executor executor,
                                        Settings settings) {
  const void* home = pool::context_key(executor);
  std::unique_ptr<pool::Connection> leased = pool_->try_acquire_now(home);
  if (!leased) {
    auto result = co_await pool_->acquire(executor);
    if (!result) {
      Answer answer;
      answer.kind = Answer::Kind::failed;
      answer.sqlstate = sqlstate_of(result.error);
      answer.message = result.message;
      answer_all(batch, answer);
      co_return;
    }
    leased = std::move(result.connection);
  }
  std::unique_ptr<server::ServerConnection> server(static_cast<server::ServerConnection*>(leased.release()));
  auto give_up = [&](std::string message) {
    pool_->release(std::move(server), false);
    Answer answer;
    answer.kind = Answer::Kind::failed;
    answer.sqlstate = "08006";
    answer.message = std::move(message);
    answer_all(batch, answer);
  };
  if (!server->move_to(executor, home)) {
    give_up("pgsluice: server connection failed while moving it to the coalescer's worker");
    co_return;
  }
  const Submission& first = *batch.front();
  if (server->applied_fingerprint() != first.parameters_fingerprint) {
    const bool applied = co_await server->apply_parameters(first.parameters, settings.connect_timeout);
    if (!applied) {
      give_up("pgsluice: server connection failed while applying session parameters");
      co_return;
    }
    server->set_applied_fingerprint(first.parameters_fingerprint);
  }
  server->statements().set_unnamed_owner(server::ServerStatements::kUnknownUnnamed);

  Link link(*server, executor, settings);
  // outcomes[i] answers the requests whose ordinal_of is i.
  std::vector<Outcome> outcomes;
  std::vector<std::size_t> ordinal_of(batch.size(), 0);
  bool bypass = false;  // the catalog says no: every request goes its own way (the session's)
  bool ok = true;

  // 1. Is it eligible? (Remembered for a minute per text and session parameters.)
  // The catalog's facts depend on the names a statement uses, not its constants: one verdict per
  // fingerprint (psycopg2's texts with their values in them share it).
  const std::string verdict_at =
      verdict_key(first.analysis->fingerprint.empty() ? first.text : first.analysis->fingerprint,
                  first.parameters_fingerprint);
  std::optional<std::string> verdict;
  {
    std::lock_guard lock(mutex_);
    if (auto it = verdicts_.find(verdict_at); it != verdicts_.end() && it->second.until > std::chrono::steady_clock::now()) {
      verdict = it->second.reason;
    }
  }
  if (!verdict) {
    const auto& analysis = *first.analysis;
    std::vector<std::optional<std::string_view>> functions, operators, relations;
    std::vector<std::string> quoted;
    quoted.reserve(analysis.relations.size());
    for (const auto& name : analysis.functions) functions.emplace_back(name);
    for (const auto& name : analysis.operators) operators.emplace_back(name);
    for (const auto& relation : analysis.relations) {
      quoted.push_back(relation.schema.empty() ? quote_ident(relation.name)
                                               : quote_ident(relation.schema) + "." + quote_ident(relation.name));
    }
    for (const auto& name : quoted) relations.emplace_back(name);
    Buffer out;
    protocol::append_parse(out, "", kCatalogQuery);
    const auto f = text_array(functions), o = text_array(operators), r = text_array(relations);
    protocol::append_bind_text(out, "", "", {f, o, r});
    protocol::append_execute(out, "");
    protocol::append_sync(out);
    std::string reason;
    std::unordered_map<std::string, bool> volatile_functions, volatile_operators;
    std::unordered_map<std::string, std::optional<std::string>> kinds;
    bool failed = false;
    ok = co_await link.write(out);
    while (ok) {
      auto message = co_await link.read();
      if (!message) {
        ok = false;
        break;
      }
      if (message->type == 'E') failed = true;
      if (message->type == 'D') {
        auto columns = row_columns(message->payload);
        if (columns.size() == 3 && columns[0] && columns[1]) {
          if (*columns[0] == "f") volatile_functions[*columns[1]] = columns[2] && *columns[2] == "true";
          if (*columns[0] == "o") volatile_operators[*columns[1]] = columns[2] && *columns[2] == "true";
          if (*columns[0] == "r") kinds[*columns[1]] = columns[2];
        }
      }
      if (message->type == 'Z') break;
    }
    if (ok) {
      if (failed) reason = "catalog";
      for (const auto& name : analysis.functions) {
        auto it = volatile_functions.find(name);
        if (reason.empty() && (it == volatile_functions.end() || it->second)) reason = "volatile_function";
      }
      for (const auto& name : analysis.operators) {
        auto it = volatile_operators.find(name);
        if (reason.empty() && (it == volatile_operators.end() || it->second)) reason = "volatile_function";
      }
      for (std::size_t i = 0; i < analysis.relations.size() && reason.empty(); ++i) {
        const auto& relation = analysis.relations[i];
        auto it = kinds.find(quoted[i]);
        const std::optional<std::string> kind = it == kinds.end() ? std::nullopt : it->second;
        if (!kind) {
          const bool cte = relation.schema.empty() &&
                           std::find(analysis.ctes.begin(), analysis.ctes.end(), relation.name) != analysis.ctes.end();
          if (!cte) reason = "unknown_relation";
        } else if (kind->find('+') != std::string::npos) {
          reason = "row_security";
        } else if (*kind == "v" || *kind == "f") {
          if (!settings.allow_views) reason = "view";
        } else if (*kind != "r" && *kind != "p" && *kind != "m") {
          reason = "relation_kind";
        }
      }
      remember_verdict(verdict_at, reason);
      verdict = reason;
    }
  }
  if (ok && verdict && !verdict->empty()) {
    bypass = true;
    std::lock_guard lock(mutex_);
    ineligible_[*verdict] += batch.size();
  }

  // 2. Which requests share an execution (the same values share one).
  std::vector<std::size_t> distinct;  // a request of each ordinal
  if (ok && !bypass) {
    std::unordered_map<std::string_view, std::size_t> seen;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      auto [it, added] = seen.emplace(batch[i]->values, distinct.size());
      if (added) distinct.push_back(i);
      ordinal_of[i] = it->second;
    }
    outcomes.resize(distinct.size());
  }
  std::vector<char> complete(outcomes.size(), 0);  // outcomes read to their end

  // 3. Several values: the batched form, if the statement's parameter types are known to have arrays.
  bool batched = false;
  if (ok && !bypass && distinct.size() > 1 && !first.simple) {
    auto info = key_info(first.key);
    bool described = false;
    bool unbatchable = false;
    std::vector<std::uint32_t> parameter_oids, array_oids;
    {
      std::lock_guard lock(info->mutex);
      described = info->described;
      unbatchable = info->unbatchable;
      parameter_oids = info->parameter_oids;
      array_oids = info->array_oids;
    }
    if (!described && !unbatchable) {
      Buffer out;
      protocol::append_parse(out, "", first.text, bytes_of(first.parameter_types));
      protocol::append_describe(out, 'S', "");
      protocol::append_sync(out);
      ok = co_await link.write(out);
      bool failed = false;
      std::string description;
      while (ok) {
        auto message = co_await link.read();
        if (!message) {
          ok = false;
          break;
        }
        if (message->type == 'E') failed = true;
        if (message->type == 't') description = frame_of(*message);
        if (message->type == 'Z') break;
      }
      if (ok && !failed) {
        parameter_oids = parameter_oids_of(description);
        array_oids.assign(parameter_oids.size(), 0);
        std::string missing;
        {
          std::lock_guard lock(mutex_);
          for (std::size_t i = 0; i < parameter_oids.size(); ++i) {
            array_oids[i] = builtin_array_type(parameter_oids[i]);
            if (array_oids[i] == 0) {
              if (auto it = array_types_.find(parameter_oids[i]); it != array_types_.end()) {
                array_oids[i] = it->second;
              } else {
                missing += (missing.empty() ? "" : ",") + std::to_string(parameter_oids[i]);
              }
            }
          }
        }
        if (!missing.empty()) {
          Buffer lookup;
          protocol::append_query(lookup, "SELECT oid, typarray FROM pg_catalog.pg_type WHERE oid IN (" + missing + ")");
          ok = co_await link.write(lookup);
          while (ok) {
            auto message = co_await link.read();
            if (!message) {
              ok = false;
              break;
            }
            if (message->type == 'D') {
              auto columns = row_columns(message->payload);
              if (columns.size() == 2 && columns[0] && columns[1]) {
                const auto oid = static_cast<std::uint32_t>(std::stoul(*columns[0]));
                const auto array = static_cast<std::uint32_t>(std::stoul(*columns[1]));
                std::lock_guard lock(mutex_);
                array_types_[oid] = array;
                for (std::size_t i = 0; i < parameter_oids.size(); ++i) {
                  if (parameter_oids[i] == oid) array_oids[i] = array;
                }
              }
            }
            if (message->type == 'Z') break;
          }
        }
        if (ok) {
          described = true;
          unbatchable = std::find(array_oids.begin(), array_oids.end(), 0u) != array_oids.end();
          std::lock_guard lock(info->mutex);
          info->described = true;
          info->unbatchable = unbatchable;
          info->parameter_oids = parameter_oids;
          info->array_oids = array_oids;
        }
      } else if (ok) {
        unbatchable = true;  // the statement itself fails to parse: each request gets its own error
      }
    }
    // Expressions of parameters alone are evaluated while planning the original (select_analysis.hpp).
    if (first.analysis->computed_parameters) unbatchable = true;
    for (int number : first.analysis->cast_parameters) {
      const auto& types = first.parameter_types;
      const std::size_t at = 2 + 4 * static_cast<std::size_t>(number - 1);
      if (number >= 1 && at + 4 <= types.size() &&
          protocol::read_u32(reinterpret_cast<const std::uint8_t*>(types.data()) + at) != 0) {
        unbatchable = true;  // a declared type: the cast converts it, while planning
      }
    }
    std::vector<BindParts> parts;
    for (auto index : distinct) {
      auto split = split_bind(bytes_of(batch[index]->bind_rest));
      if (!split || split->values.size() != parameter_oids.size()) {
        unbatchable = true;
        break;
      }
      parts.push_back(std::move(*split));
    }
    if (ok && described && !unbatchable) {
      // Parse and describe the original (fresh descriptions for every client), then the batch.
      const int parameters = static_cast<int>(parameter_oids.size());
      Buffer out;
      protocol::append_parse(out, "", first.text, bytes_of(first.parameter_types));
      protocol::append_describe(out, 'S', "");
      std::string array_types;
      array_types += static_cast<char>(parameters >> 8);
      array_types += static_cast<char>(parameters);
      for (auto oid : array_oids) {
        for (int shift = 24; shift >= 0; shift -= 8) array_types += static_cast<char>(oid >> shift);
      }
      const auto text = sql::batched_statement(first.text, *first.analysis, parameters);
      protocol::append_parse(out, "", text, bytes_of(array_types));
      // Bind: one array per parameter, in the requests' format for it.
      const auto& formats = parts.front();
      protocol::MessageBuilder bind(out);
      bind.begin('B').cstring("").cstring("").int16(static_cast<std::int16_t>(parameters));
      for (int i = 0; i < parameters; ++i) bind.int16(formats.parameter_format(static_cast<std::size_t>(i)));
      bind.int16(static_cast<std::int16_t>(parameters));
      for (int i = 0; i < parameters; ++i) {
        std::vector<std::optional<std::string_view>> values;
        values.reserve(parts.size());
        for (const auto& p : parts) values.push_back(p.values[static_cast<std::size_t>(i)]);
        const auto array = formats.parameter_format(static_cast<std::size_t>(i)) == 1
                               ? binary_array(values, parameter_oids[static_cast<std::size_t>(i)])
                               : text_array(values);
        bind.int32(static_cast<std::int32_t>(array.size())).bytes(array);
      }
      // Results: the requests' formats. One code (or none) covers the ordinal and row number too,
      // read in that format; one code per column gets two binary codes in front.
      const auto& results = formats.result_formats;
      bool text_numbers = false;
      std::vector<std::int16_t> codes;
      if (results.empty()) {
        codes = {0};
        text_numbers = true;
      } else if (results.size() == 1) {
        codes = {results[0]};
        text_numbers = results[0] == 0;
      } else {
        codes = {1, 1};
        codes.insert(codes.end(), results.begin(), results.end());
      }
      bind.int16(static_cast<std::int16_t>(codes.size()));
      for (auto code : codes) bind.int16(code);
      bind.end();
      protocol::append_execute(out, "");
      protocol::append_sync(out);
      executions_ += 1;
      ok = co_await link.write(out);
      int parses = 0;
      bool fall_back = false;
      std::string parameter_description, row_description, parse_error;
      std::vector<std::uint64_t> counts(distinct.size(), 0);
      while (ok) {
        auto message = co_await link.read();
        if (!message) {
          ok = false;
          break;
        }
        const char type = message->type;
        if (type == 'Z') break;
        switch (type) {
          case '1': ++parses; break;
          case 't': parameter_description = frame_of(*message); break;
          case 'T': case 'n':
            if (row_description.empty()) row_description = frame_of(*message);
            break;
          case 'D': {
            if (fall_back) break;
            auto row = split_batch_row(message->frame, text_numbers);
            if (!row || row->ordinal < 1 || row->ordinal > distinct.size()) {
              fall_back = true;
              break;
            }
            outcomes[row->ordinal - 1].rows += row->row;
            ++counts[row->ordinal - 1];
            break;
          }
          case 'E':
            if (parses == 0) {
              parse_error = link.error_frame(*message);  // the statement itself: every client's error
            } else {
              if (parses == 1) {
                std::lock_guard lock(info->mutex);
                info->unbatchable = true;  // its batched form does not parse
                spdlog::info("service {}: statement not batched (its batched form fails: {})", settings.service,
                             error_message(message->payload));
              }
              fall_back = true;
            }
            break;
          case '2': case 'C': break;
          default: fall_back = true; break;  // a notice or a ParameterStatus: run alone, in order
        }
      }
      if (ok && !parse_error.empty()) {
        for (auto& outcome : outcomes) {
          outcome = Outcome{};
          outcome.failed_at = Outcome::Stage::parse;
          outcome.error = parse_error;
        }
        std::fill(complete.begin(), complete.end(), 1);
        batched = true;
      } else if (ok && !fall_back) {
        if (parameter_oids_of(parameter_description) != parameter_oids) {
          fall_back = true;  // DDL changed its parameter types: learned again next time
          std::lock_guard lock(info->mutex);
          info->described = false;
        }
      }
      if (ok && parse_error.empty()) {
        if (fall_back) {
          ++fallbacks_;
          for (auto& outcome : outcomes) outcome = Outcome{};
        } else {
          for (std::size_t i = 0; i < outcomes.size(); ++i) {
            outcomes[i].parameter_description = parameter_description;
            outcomes[i].row_description = row_description;
            outcomes[i].complete = select_complete(counts[i]);
            outcomes[i].row_count = counts[i];
          }
          std::fill(complete.begin(), complete.end(), 1);
          batched = true;
          ++batches_;
        }
      }
    }
  }

  // 4. One execution per distinct request (pipelined, each with its own Sync).
  if (ok && !bypass && !batched) {
    Buffer out;
    for (auto index : distinct) append_single(*batch[index], out);
    executions_ += distinct.size();
    ok = co_await link.write(out);
    for (std::size_t i = 0; ok && i < distinct.size(); ++i) {
      ok = co_await read_single(link, *batch[distinct[i]], outcomes[i]);
      complete[i] = ok ? 1 : 0;
    }
  }
  const bool timed_out = link.timed_out();
  const std::string timeout_error = timed_out ? link.timeout_error() : std::string();
  link.finish();
  const bool reusable = ok && !timed_out && !link.broken && !link.dirty;
  server->buffer().release_if_empty();
  pool_->release(std::move(server), reusable && true);

  if (bypass && !timed_out) {
    Answer answer;
    answer.kind = Answer::Kind::bypass;
    answer_all(batch, answer);
    co_return;
  }
  if (!ok && !timed_out) {
    Answer answer;
    answer.kind = Answer::Kind::failed;
    answer.sqlstate = "08006";
    answer.message = "pgsluice: the server connection was lost during the statement";
    answer_all(batch, answer);
    co_return;
  }
  if (!timed_out) shared_ += batch.size() - (batched ? 1 : distinct.size());
  std::vector<std::size_t> members(outcomes.size(), 0);  // requests per distinct request
  for (auto ordinal : ordinal_of) {
    if (ordinal < members.size()) ++members[ordinal];
  }
  if (!outcomes.empty()) {
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard lock(mutex_);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (outcomes.empty() || !complete[ordinal_of[i]]) continue;
      record_locked(*batch[i], outcomes[ordinal_of[i]], now, batched || members[ordinal_of[i]] > 1,
                    i == 0 ? (batched ? 1 : distinct.size()) : 0);
    }
  }
  for (std::size_t i = 0; i < batch.size(); ++i) {
    auto& s = *batch[i];
    if (!s.answer) continue;
    Answer answer;
    if (outcomes.empty() || !complete[ordinal_of[i]]) {
      // query_timeout: its 57014 where Postgres would put it, after the Parse and Bind replies.
      Outcome timeout;
      timeout.failed_at = Outcome::Stage::execute;
      timeout.error = timeout_error;
      if (s.simple) {
        Buffer ready;
        protocol::append_ready_for_query(ready, 'I');
        timeout.simple_reply = timeout_error + std::string(ready.begin(), ready.end());
      }
      Steps steps;
      steps.statement = s.steps.statement;
      for (char step : s.steps.order) {
        if (step == 'P' || step == 'B' || step == 'E') steps.order += step;
      }
      render(steps, timeout, answer.bytes);
      outcomes_[failed].fetch_add(1, std::memory_order_relaxed);
      std::exchange(s.answer, nullptr)(std::move(answer));
      continue;
    }
    if (!render(s.steps, outcomes[ordinal_of[i]], answer.bytes)) {
      answer.bytes.clear();
      answer.kind = Answer::Kind::bypass;
      outcomes_[bypassed].fetch_add(1, std::memory_order_relaxed);
    } else {
      const auto how = batched ? OutcomeIndex::batched : members[ordinal_of[i]] > 1 ? OutcomeIndex::shared : alone;
      outcomes_[how].fetch_add(1, std::memory_order_relaxed);
    }
    std::exchange(s.answer, nullptr)(std::move(answer));
  }
}

}  // namespace pgsluice::coalesce
