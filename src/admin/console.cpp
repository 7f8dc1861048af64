// The admin console's commands (see console.hpp).
#include "pgsluice/admin/console.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <optional>
#include <vector>

#include "pgsluice/protocol/backend_messages.hpp"
#include "pgsluice/protocol/builder.hpp"

namespace pgsluice::admin {

namespace {

constexpr std::uint32_t kText = 25;
constexpr std::uint32_t kInt8 = 20;
constexpr std::uint32_t kBool = 16;

struct Column {
  std::string name;
  std::uint32_t type = kText;
};

// One result set, written as Postgres writes one: RowDescription, DataRows, CommandComplete.
class ResultSet {
 public:
  explicit ResultSet(std::vector<Column> columns) : columns_(std::move(columns)) {}
  void row(std::vector<std::string> values) { rows_.push_back(std::move(values)); }
  void write(protocol::Buffer& out, std::string_view tag) const {
    protocol::MessageBuilder description(out);
    description.begin('T').int16(static_cast<std::int16_t>(columns_.size()));
    for (const auto& column : columns_) {
      const std::int16_t size = column.type == kInt8 ? 8 : column.type == kBool ? 1 : -1;
      description.cstring(column.name).int32(0).int16(0).int32(static_cast<std::int32_t>(column.type)).int16(size)
          .int32(-1).int16(0);
    }
    description.end();
    for (const auto& values : rows_) {
      protocol::MessageBuilder data(out);
      data.begin('D').int16(static_cast<std::int16_t>(values.size()));
      for (const auto& value : values) data.int32(static_cast<std::int32_t>(value.size())).bytes(value);
      data.end();
    }
    protocol::MessageBuilder(out).begin('C').cstring(fmt::format("{} {}", tag, rows_.size())).end();
  }

 private:
  std::vector<Column> columns_;
  std::vector<std::vector<std::string>> rows_;
};

std::string ms(config::Duration d) { return std::to_string(d.count()) + "ms"; }
std::string yes_no(bool b) { return b ? "true" : "false"; }
std::string num(std::int64_t n) { return std::to_string(n); }
std::string us(double seconds) { return std::to_string(static_cast<std::int64_t>(seconds * 1e6)); }

void error(protocol::Buffer& out, std::string_view sqlstate, std::string_view message) {
  protocol::append_error_response(out, protocol::Severity::error, sqlstate, message);
}

void show_pools(const metrics::Sample& sample, const config::Config& config, protocol::Buffer& out) {
  ResultSet set({{"service"}, {"database"}, {"user"}, {"pool_mode"}, {"backend"}, {"cl_active", kInt8},
                 {"cl_waiting", kInt8}, {"cl_idle", kInt8}, {"sv_active", kInt8}, {"sv_idle", kInt8},
                 {"sv_login", kInt8}, {"max_connections", kInt8}, {"paused", kBool}});
  for (const auto& s : sample.services) {
    auto it = std::find_if(config.services.begin(), config.services.end(),
                           [&](const config::ServiceConfig& c) { return c.name == s.service; });
    if (it == config.services.end()) continue;
    const std::int64_t active = std::min<std::int64_t>(s.pool.busy, s.clients);
    const std::int64_t waiting = s.pool.waiting;
    set.row({s.service, it->server_database, it->server_user, config::to_string(it->mode), s.backend, num(active),
             num(waiting), num(std::max<std::int64_t>(0, s.clients - active - waiting)), num(s.pool.busy),
             num(s.pool.idle), num(s.pool.connecting), num(s.max_connections), s.pool.paused ? "t" : "f"});
  }
  set.write(out, "SHOW");
}

void show_stats(const metrics::Sample& sample, protocol::Buffer& out) {
  ResultSet set({{"service"}, {"total_xact_count", kInt8}, {"total_query_count", kInt8},
                 {"total_query_time", kInt8}, {"avg_query_time", kInt8}, {"total_wait_time", kInt8},
                 {"total_acquires", kInt8}, {"acquire_timeouts", kInt8}, {"fast_fails", kInt8},
                 {"server_connects", kInt8}, {"server_connect_failures", kInt8}});
  for (const auto& s : sample.services) {
    const auto& q = s.work.query;
    const double avg = q.count > 0 ? q.sum_seconds / static_cast<double>(q.count) : 0.0;
    set.row({s.service, num(static_cast<std::int64_t>(s.work.transactions)),
             num(static_cast<std::int64_t>(s.work.queries)), us(q.sum_seconds), us(avg),
             us(s.work.acquire.sum_seconds), num(static_cast<std::int64_t>(s.work.acquire.count)),
             num(static_cast<std::int64_t>(s.pool.acquire_timeouts)),
             num(static_cast<std::int64_t>(s.pool.circuit_open + s.pool.too_many_waiting)),
             num(static_cast<std::int64_t>(s.pool.connects)), num(static_cast<std::int64_t>(s.pool.connect_failures))});
  }
  set.write(out, "SHOW");
}

// Per statement fingerprint, what the coalescer did (services with coalescing on), busiest first.
void show_statements(const metrics::Sample& sample, protocol::Buffer& out) {
  ResultSet set({{"service"}, {"fingerprint"}, {"calls", kInt8}, {"executions", kInt8}, {"shared", kInt8},
                 {"rows", kInt8}, {"total_time_us", kInt8}, {"max_time_us", kInt8}, {"n_plus_one", kInt8},
                 {"statement"}});
  for (const auto& s : sample.services) {
    if (!s.coalesce) continue;
    for (const auto& row : s.coalesce->statements) {
      set.row({s.service, row.fingerprint, num(static_cast<std::int64_t>(row.calls)),
               num(static_cast<std::int64_t>(row.executions)), num(static_cast<std::int64_t>(row.shared)),
               num(static_cast<std::int64_t>(row.rows)), us(row.total_seconds), us(row.max_seconds),
               num(static_cast<std::int64_t>(row.n_plus_one)), row.normalized});
    }
  }
  set.write(out, "SHOW");
}

void show_breakers(const metrics::Sample& sample, protocol::Buffer& out) {
  ResultSet set({{"backend"}, {"state"}, {"consecutive_failures", kInt8}, {"open_for_ms", kInt8},
                 {"retry_in_ms", kInt8}, {"trips", kInt8}, {"probes", kInt8}});
  for (const auto& b : sample.backends) {
    set.row({b.backend, pool::to_string(b.state), num(b.consecutive_failures), num(b.open_for_ms),
             num(b.retry_in_ms), num(static_cast<std::int64_t>(b.trips)), num(static_cast<std::int64_t>(b.probes))});
  }
  set.write(out, "SHOW");
}

// Every setting in force, never a secret (passwords and verifiers are not listed at all).
void show_config(const config::Config& c, protocol::Buffer& out) {
  ResultSet set({{"key"}, {"value"}});
  auto add = [&set](std::string key, std::string value) { set.row({std::move(key), std::move(value)}); };
  add("listen", c.listen.host + ":" + std::to_string(c.listen.port));
  add("workers", num(c.workers));
  add("client_login_timeout", ms(c.client_login_timeout));
  add("shutdown_timeout", ms(c.shutdown_timeout));
  add("max_client_connections", num(c.max_client_connections));
  add("max_message_size", num(c.max_message_size));
  add("max_prepared_statements_per_client", num(c.max_prepared_statements_per_client));
  add("max_prepared_statement_bytes_per_client", num(c.max_prepared_statement_bytes_per_client));
  add("replicas", num(c.replicas));
  add("log.level", c.log_level);
  add("log.format", c.log_format == config::LogFormat::json ? "json" : "text");
  add("metrics.listen", c.metrics_listen.host + ":" + std::to_string(c.metrics_listen.port));
  add("metrics.enabled", yes_no(c.metrics_enabled));
  std::string admins;
  for (const auto& user : c.admin_users) admins += (admins.empty() ? "" : ",") + user;
  add("admin.users", admins);
  for (const auto& [name, b] : c.backends) {
    const auto prefix = "backends." + name + ".";
    add(prefix + "host", b.host);
    add(prefix + "port", num(b.port));
    add(prefix + "max_connections", num(b.max_connections));
    add(prefix + "reserved_connections", num(b.reserved_connections));
    add(prefix + "connect_timeout", ms(b.connect_timeout));
    add(prefix + "breaker.failure_threshold", num(b.breaker.failure_threshold));
    add(prefix + "breaker.open_for", ms(b.breaker.open_for));
    add(prefix + "breaker.max_open_for", ms(b.breaker.max_open_for));
  }
  for (const auto& [name, u] : c.users) add("users." + name + ".auth", config::to_string(u.auth));
  for (const auto& s : c.services) {
    const auto prefix = "services." + s.name + ".";
    add(prefix + "backend", s.backend);
    add(prefix + "match.user", s.match_user);
    add(prefix + "match.database", s.match_database);
    add(prefix + "server_user", s.server_user);
    add(prefix + "server_database", s.server_database);
    add(prefix + "mode", config::to_string(s.mode));
    add(prefix + "max_connections", num(s.max_connections));
    add(prefix + "min_connections", num(s.min_connections));
    add(prefix + "acquire_timeout", ms(s.acquire_timeout));
    add(prefix + "max_waiting_clients", num(s.max_waiting_clients));
    add(prefix + "idle_timeout", ms(s.idle_timeout));
    add(prefix + "max_lifetime", ms(s.max_lifetime));
    add(prefix + "health_check_after_idle", ms(s.health_check_after_idle));
    add(prefix + "query_timeout", ms(s.query_timeout));
    add(prefix + "idle_in_transaction_timeout", ms(s.idle_in_transaction_timeout));
  }
  set.write(out, "SHOW");
}

const char* transaction_state(char status) {
  return status == 'T' ? "in transaction" : status == 'E' ? "failed transaction" : "idle";
}

void show_clients(const std::vector<session::ClientDescription>& clients, protocol::Buffer& out) {
  ResultSet set({{"addr"}, {"user"}, {"database"}, {"service"}, {"state"}, {"transaction"},
                 {"connected_s", kInt8}, {"server_pid", kInt8}, {"pinned", kBool}, {"listening", kInt8}});
  for (const auto& c : clients) {
    set.row({c.peer, c.user, c.database, c.service, c.state, transaction_state(c.transaction_status),
             num(c.connected_seconds), c.server_pid ? num(c.server_pid) : "", c.pinned ? "t" : "f",
             num(static_cast<std::int64_t>(c.listening))});
  }
  set.write(out, "SHOW");
}

void show_servers(const std::vector<session::ClientDescription>& clients,
                  const std::vector<Operations::IdleServer>& idle, const config::Config& config, protocol::Buffer& out) {
  ResultSet set({{"service"}, {"backend"}, {"state"}, {"server_pid", kInt8}, {"connected_s", kInt8},
                 {"idle_s", kInt8}, {"client_addr"}});
  for (const auto& c : clients) {
    if (c.server_pid == 0) continue;
    auto it = std::find_if(config.services.begin(), config.services.end(),
                           [&](const config::ServiceConfig& s) { return s.name == c.service; });
    set.row({c.service, it == config.services.end() ? "" : it->backend, "active", num(c.server_pid),
             num(c.server_connected_seconds), "0", c.peer});
  }
  for (const auto& s : idle) {
    set.row({s.service, s.backend, "idle", num(s.pid), num(s.connected_seconds), num(s.idle_seconds), ""});
  }
  set.write(out, "SHOW");
}

// The words of a command: lower-cased, without the trailing ';'; a double-quoted word keeps its case.
std::vector<std::string> words_of(std::string_view query) {
  std::vector<std::string> words;
  std::size_t i = 0;
  while (i < query.size()) {
    const char c = query[i];
    if (std::isspace(static_cast<unsigned char>(c)) || c == ';' || c == '\0') {
      ++i;
      continue;
    }
    std::string word;
    if (c == '"') {
      for (++i; i < query.size(); ++i) {
        if (query[i] == '"') {
          if (i + 1 < query.size() && query[i + 1] == '"') {
            word += '"';
            ++i;
            continue;
          }
          ++i;
          break;
        }
        word += query[i];
      }
    } else {
      for (; i < query.size() && !std::isspace(static_cast<unsigned char>(query[i])) && query[i] != ';' &&
             query[i] != '\0';
           ++i) {
        word += static_cast<char>(std::tolower(static_cast<unsigned char>(query[i])));
      }
    }
    words.push_back(std::move(word));
  }
  return words;
}

constexpr std::string_view kCommands =
    "SHOW POOLS | STATS | CLIENTS | SERVERS | BREAKERS | STATEMENTS | CONFIG | VERSION, RELOAD, PAUSE [service], RESUME "
    "[service], SHUTDOWN";

}  // namespace

protocol::Buffer Console::answer(std::string_view query) {
  protocol::Buffer out;
  const auto words = words_of(query);
  if (words.empty()) {
    protocol::MessageBuilder(out).begin('I').end();  // EmptyQueryResponse
    return out;
  }
  const auto& verb = words[0];
  const std::string argument = words.size() > 1 ? words[1] : std::string();
  if (verb == "show" && words.size() == 2) {
    if (argument == "pools") {
      show_pools(operations_->sample(), *operations_->config(), out);
    } else if (argument == "stats") {
      show_stats(operations_->sample(), out);
    } else if (argument == "breakers") {
      show_breakers(operations_->sample(), out);
    } else if (argument == "config") {
      show_config(*operations_->config(), out);
    } else if (argument == "version") {
      ResultSet set({{"version"}});
      set.row({std::string("pgsluice ") + PGSLUICE_VERSION});
      set.write(out, "SHOW");
    } else if (argument == "statements") {
      show_statements(operations_->sample(), out);
    } else {
      error(out, "42601", "pgsluice admin: unknown SHOW " + argument + "; try " + std::string(kCommands));
    }
    return out;
  }
  if (verb == "reload" && words.size() == 1) {
    if (auto problem = operations_->reload(); !problem.empty()) {
      error(out, "F0000", "pgsluice admin: RELOAD failed, the running configuration stays: " + problem);
    } else {
      protocol::MessageBuilder(out).begin('C').cstring("RELOAD").end();
    }
    return out;
  }
  if ((verb == "pause" || verb == "resume") && words.size() <= 2) {
    const bool pause = verb == "pause";
    if (auto problem = pause ? operations_->pause(argument) : operations_->resume(argument); !problem.empty()) {
      error(out, "3D000", "pgsluice admin: " + problem);
    } else {
      protocol::MessageBuilder(out).begin('C').cstring(pause ? "PAUSE" : "RESUME").end();
    }
    return out;
  }
  if (verb == "shutdown" && words.size() == 1) {
    operations_->shutdown();
    protocol::MessageBuilder(out).begin('C').cstring("SHUTDOWN").end();
    return out;
  }
  error(out, "42601", "pgsluice admin: unknown command; try " + std::string(kCommands));
  return out;
}

net::awaitable<protocol::Buffer> Console::execute(std::string query) {
  // The runtime lives on the first worker: run the command there, then come back.
  auto home = co_await net::asio::this_coro::executor;
  co_await net::asio::post(operations_->executor(), net::asio::use_awaitable);
  protocol::Buffer out;
  try {
    const auto words = words_of(query);
    if (words.size() == 2 && words[0] == "show" && (words[1] == "clients" || words[1] == "servers")) {
      // Each session describes itself on its own worker.
      auto clients = co_await operations_->clients();
      if (words[1] == "clients") {
        show_clients(clients, out);
      } else {
        show_servers(clients, operations_->idle_servers(), *operations_->config(), out);
      }
    } else {
      out = answer(query);
    }
  } catch (const std::exception& e) {
    out.clear();
    error(out, "XX000", std::string("pgsluice admin: ") + e.what());
  }
  co_await net::asio::post(home, net::asio::use_awaitable);
  co_return out;
}

}  // namespace pgsluice::admin
