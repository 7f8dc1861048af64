#pragma once
// What every client session shares: the configuration in force, the users' secrets prepared for
// authentication, the services with their pools, and the cancel-key registry.
#include <atomic>
#include <map>
#include <mutex>
#include <memory>
#include <optional>
#include <string>

#include "pgsluice/coalesce/coalescer.hpp"
#include "pgsluice/config/config.hpp"
#include "pgsluice/metrics/counters.hpp"
#include "pgsluice/net/io.hpp"
#include "pgsluice/pool/pool.hpp"
#include "pgsluice/protocol/scram.hpp"
#include "pgsluice/server/server_connection.hpp"
#include "pgsluice/session/cancel_registry.hpp"
#include "pgsluice/sql/select_analysis.hpp"
#include "pgsluice/sql/session_effects.hpp"

namespace pgsluice::session {

class ListenerHub;

// A user's secret in the forms the authentication methods need, derived once at load.
struct UserSecret {
  config::AuthMethod method = config::AuthMethod::scram_sha_256;
  std::optional<protocol::scram::Verifier> verifier;  // scram-sha-256
  std::optional<std::string> password;                // md5 (plain), when given in plain text
  std::optional<std::string> md5_hash;                // md5 (stored "md5..." form)
};

struct Service {
  config::ServiceConfig config;
  std::shared_ptr<const server::ServerTarget> target;
  std::shared_ptr<pool::Pool> pool;
  // The pooled modes' LISTEN (listener_hub.hpp); null in session mode.
  std::shared_ptr<ListenerHub> listeners;
  // The pooled modes' coalescer (DESIGN §4) when the service enables it; null otherwise.
  std::shared_ptr<coalesce::Coalescer> coalescer;
  // Work counted on the relay's hot path for /metrics; kept with the pool across reloads.
  std::shared_ptr<metrics::ServiceCounters> counters = std::make_shared<metrics::ServiceCounters>();

  // The ParameterStatus values a fresh server connection of this service reports, once known
  // (shared, not copied: every login of a pooled service reads them).
  std::shared_ptr<const server::ParameterMap> reported_parameters() const {
    std::lock_guard lock(mutex_);
    return reported_parameters_;
  }
  // Them with their ParameterStatus messages, built once when they are learned: a login whose
  // startup parameters change none of them sends these bytes as they are.
  struct ReportedParameters {
    std::shared_ptr<const server::ParameterMap> values;
    std::shared_ptr<const protocol::Buffer> status_messages;
  };
  ReportedParameters reported_parameters_and_messages() const {
    std::lock_guard lock(mutex_);
    return {reported_parameters_, reported_status_messages_};
  }
  void remember_reported_parameters(const server::ParameterMap& parameters);
  // How the server reports a reported setting a client asked for at startup (DateStyle "German"
  // is reported "German, DMY"), once a server connection has applied it; nullopt: not known yet.
  std::optional<std::string> reported_spelling(const std::string& name, const std::string& value) const {
    std::lock_guard lock(mutex_);
    auto it = spellings_.find(name + '\0' + value);
    if (it == spellings_.end()) return std::nullopt;
    return it->second;
  }
  void remember_spelling(const std::string& name, const std::string& value, const std::string& spelled) {
    std::lock_guard lock(mutex_);
    if (spellings_.size() < 1024) spellings_[name + '\0' + value] = spelled;
  }
  // Cold start of a pooled service: one login at a time leases a connection to learn them; the
  // logins arriving meanwhile wait for its answer rather than each opening a server connection.
  bool begin_parameter_fetch() {
    std::lock_guard lock(mutex_);
    if (fetching_parameters_) return false;
    fetching_parameters_ = true;
    return true;
  }
  void end_parameter_fetch() {
    std::lock_guard lock(mutex_);
    fetching_parameters_ = false;
  }

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const server::ParameterMap> reported_parameters_;
  std::shared_ptr<const protocol::Buffer> reported_status_messages_;
  std::map<std::string, std::string> spellings_;
  bool fetching_parameters_ = false;
};

// What a reload (SIGHUP, DESIGN §5) replaces as a whole. A session takes the one in force when it
// arrives and keeps it: its login, its service's mode and timeouts come from it. A service kept by a
// reload gets a new Service object that shares the old one's pool, so new pool limits apply to every
// client at once.
struct Snapshot {
  std::shared_ptr<const config::Config> config;
  // TLS towards clients (top-level tls:): the mode, and the context built from the files as they
  // were when this snapshot was made (a reload re-reads rotated certificates).
  net::ClientTlsMode client_tls_mode = net::ClientTlsMode::disable;
  std::shared_ptr<const net::TlsContext> client_tls;
  std::map<std::string, UserSecret> users;
  std::map<std::string, std::shared_ptr<Service>> services;  // by service name

  std::shared_ptr<Service> find_service(const std::string& user, const std::string& database) const;
};

// The admin console (database "pgsluice", users in admin.users; DESIGN §6): a logged-in admin's
// session hands each simple Query to it and writes back what it returns (every reply message up
// to, not including, ReadyForQuery). Implemented in admin/, wired by the daemon.
class AdminConsole {
 public:
  virtual ~AdminConsole() = default;
  virtual net::awaitable<protocol::Buffer> execute(std::string query) = 0;
};

// One client as the admin console shows it (SHOW CLIENTS, SHOW SERVERS).
struct ClientDescription {
  std::string peer;  // address:port
  std::string user;
  std::string database;
  std::string service;  // empty: the admin console
  std::string state;    // active (holds a server connection), waiting (for one), idle, admin
  char transaction_status = 'I';
  std::int64_t connected_seconds = 0;
  std::uint32_t server_pid = 0;  // the server connection it holds (0: none)
  std::int64_t server_connected_seconds = 0;
  bool pinned = false;
  std::size_t listening = 0;  // channels the listener connection serves it
};

// The database name that reaches the admin console instead of a service.
inline constexpr std::string_view kAdminDatabase = "pgsluice";

struct SessionContext {
  CancelRegistry cancels;
  sql::Analyzer analyzer;  // what statement texts do to session state, parsed once per text
  sql::SelectAnalyzer selects;  // whether a text is one read-only SELECT the coalescer may share
  std::string mock_secret;  // makes the mock SCRAM salt of unknown users stable but unguessable
  std::atomic<int> clients{0};
  std::atomic<bool> draining{false};  // SIGTERM received: no new logins
  std::shared_ptr<AdminConsole> admin;  // null: no console (logins to "pgsluice" are refused)

  std::shared_ptr<const Snapshot> current() const {
    std::lock_guard lock(mutex_);
    return current_;
  }
  void install(std::shared_ptr<const Snapshot> snapshot) {
    std::lock_guard lock(mutex_);
    current_ = std::move(snapshot);
  }

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const Snapshot> current_;
};

// Builds the secrets for every configured user (SCRAM verifiers from plain passwords, etc.).
std::map<std::string, UserSecret> prepare_user_secrets(const config::Config& config);

}  // namespace pgsluice::session
