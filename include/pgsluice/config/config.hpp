#pragma once
// The YAML configuration (DESIGN §5): its schema as plain structs, loading and validation.
// No Asio, no YAML types in this header: the rest of the program sees only these structs.
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace pgsluice::config {

using Duration = std::chrono::milliseconds;

enum class PoolMode { session, transaction, statement };
enum class AuthMethod { scram_sha_256, md5, trust };
enum class LogFormat { text, json };

struct Endpoint {
  std::string host = "0.0.0.0";
  std::uint16_t port = 0;
};

struct BreakerConfig {
  int failure_threshold = 5;
  Duration open_for = std::chrono::seconds(2);
  Duration max_open_for = std::chrono::seconds(30);
};

// TLS files and limits (both sides).
struct TlsFilesConfig {
  std::string cert, key, ca;
  std::string min_version = "TLSv1.2";
  std::string ciphers;
  bool operator==(const TlsFilesConfig&) const = default;
};

// Top-level `tls:` towards clients: disable (SSLRequest answered 'N'), allow, require.
enum class ClientTls { disable, allow, require };
struct ClientTlsConfig {
  ClientTls mode = ClientTls::disable;
  TlsFilesConfig files;
  int line = 0;
  bool operator==(const ClientTlsConfig&) const = default;
};

// `backends.<name>.tls` towards Postgres, with libpq's sslmode meanings.
enum class ServerTls { disable, prefer, require, verify_ca, verify_full };
// SCRAM channel binding in pgsluice's logins to the server, with libpq's channel_binding meanings.
enum class ChannelBinding { disable, prefer, require };
struct ServerTlsConfig {
  ServerTls mode = ServerTls::prefer;
  ChannelBinding channel_binding = ChannelBinding::prefer;
  TlsFilesConfig files;
  int line = 0;
  bool operator==(const ServerTlsConfig&) const = default;
};

struct BackendConfig {
  std::string name;
  std::string host = "127.0.0.1";
  std::uint16_t port = 5432;
  int max_connections = 100;      // the server's own max_connections
  int reserved_connections = 25;  // kept for superuser, replication, backups, migrations
  Duration connect_timeout = std::chrono::seconds(2);
  BreakerConfig breaker;
  ServerTlsConfig tls;
  int line = 0;  // where it was defined, for messages
};

struct UserConfig {
  std::string name;
  AuthMethod auth = AuthMethod::scram_sha_256;
  // Exactly one of these is set (trust needs none). Secrets are already resolved (${ENV}, file:).
  std::optional<std::string> password;        // plain text
  std::optional<std::string> scram_verifier;  // "SCRAM-SHA-256$..."
  std::optional<std::string> md5_hash;        // "md5" + 32 hex
  int line = 0;
};

struct CoalesceConfig {
  bool enabled = false;
  int max_batch = 256;
  std::chrono::microseconds window{0};  // "200us", "1ms"; 0 = none
  bool allow_views = false;  // views and foreign tables may be read by shared executions

  bool operator==(const CoalesceConfig&) const = default;
};

struct ServiceConfig {
  std::string name;
  std::string backend;
  std::string match_user;
  std::string match_database;
  std::string server_user;
  std::optional<std::string> server_password;  // resolved secret; none = trust
  std::string server_database;                 // default: match_database
  PoolMode mode = PoolMode::transaction;
  int max_connections = 10;
  int min_connections = 0;
  Duration acquire_timeout = std::chrono::seconds(1);
  // Clients that may wait for a connection at once; 0 = no limit of its own (max_client_connections
  // and acquire_timeout bound the wait: a burst the pool can serve in time is served).
  int max_waiting_clients = 0;
  Duration idle_timeout = std::chrono::minutes(10);
  Duration max_lifetime = std::chrono::hours(1);
  Duration health_check_after_idle = std::chrono::seconds(30);
  Duration query_timeout = Duration::zero();                // 0 = none
  Duration idle_in_transaction_timeout = Duration::zero();  // 0 = none
  CoalesceConfig coalesce;
  int line = 0;

  bool operator==(const ServiceConfig&) const = default;
};

struct Config {
  Endpoint listen{"0.0.0.0", 6432};
  int workers = 0;  // 0 = number of cores
  Duration client_login_timeout = std::chrono::seconds(15);
  Duration shutdown_timeout = std::chrono::seconds(30);
  int max_client_connections = 10000;
  std::uint32_t max_message_size = 64u * 1024u * 1024u;
  // What one client may make pgsluice keep of its prepared statements (protocol-level and SQL
  // PREPARE) in the pooled modes: how many, and their text in bytes.
  int max_prepared_statements_per_client = 1000;
  std::uint32_t max_prepared_statement_bytes_per_client = 16u * 1024u * 1024u;
  int replicas = 1;  // sidecar mode: how many pgsluice instances share each backend
  std::string log_level = "info";
  LogFormat log_format = LogFormat::text;
  // A statement that takes at least this long is logged (warn) with its fingerprint and its text
  // with constants as $n, never their values. 0 = off.
  Duration log_slow_statements = Duration::zero();
  Endpoint metrics_listen{"0.0.0.0", 9187};
  bool metrics_enabled = true;
  std::vector<std::string> admin_users;
  ClientTlsConfig tls;
  std::map<std::string, BackendConfig> backends;
  std::map<std::string, UserConfig> users;
  std::vector<ServiceConfig> services;  // in file order

  // The service a client's (user, database) picks, or nullptr.
  const ServiceConfig* find_service(const std::string& user, const std::string& database) const;
};

// One problem found while loading, with the line (1-based) it is on; line 0 = no particular line.
struct ConfigError {
  int line = 0;
  std::string message;
};

struct LoadResult {
  std::optional<Config> config;  // set only when errors is empty
  std::vector<ConfigError> errors;
};

// Parses and validates YAML text. Every problem is reported, not just the first: unknown keys,
// wrong types, bad durations ("500ms", "1s", "10m", "1h"), missing references (service.backend,
// service.match.user in users), unresolvable secrets, duplicate (user, database) matches,
// min > max, and Σ max_connections × replicas + reserved_connections > backend max_connections.
// `env` resolves ${NAME} references (defaults to the process environment when null).
LoadResult load_from_string(const std::string& yaml_text,
                            const std::map<std::string, std::string>* env = nullptr);
LoadResult load_from_file(const std::string& path);

// "1s", "250ms", "10m", "2h", "0" -> duration; nullopt when malformed.
std::optional<Duration> parse_duration(const std::string& text);
// The same, also in microseconds ("200us", "200µs"), for waits shorter than a millisecond.
std::optional<std::chrono::microseconds> parse_fine_duration(const std::string& text);

// "65536", "64MB", "1KB", "16MiB", "1 GB" -> bytes; nullopt when malformed or overflowing.
// KB/MB/GB are binary multiples (1024), as in postgresql.conf; KiB/MiB/GiB are accepted too.
std::optional<std::uint64_t> parse_byte_size(const std::string& text);

// The per-backend allocation table `--check` prints (service, max, min, × replicas, total).
std::string allocation_table(const Config& config);
// The same table for one backend only; empty when there is no such backend.
std::string allocation_table(const Config& config, const std::string& backend);

const char* to_string(PoolMode mode);
const char* to_string(AuthMethod method);

}  // namespace pgsluice::config
