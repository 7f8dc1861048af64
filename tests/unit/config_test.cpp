// Loading a valid configuration: every key lands in its field, defaults apply, the example file
// in config/ loads, lookups work.
#include "pgsluice/config/config.hpp"

#include <catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

using namespace pgsluice::config;
using namespace std::chrono_literals;

namespace {

std::string describe(const LoadResult& result) {
  std::string out;
  for (const auto& error : result.errors)
    out += "line " + std::to_string(error.line) + ": " + error.message + "\n";
  return out;
}

// The repository root: $PGSLUICE_SOURCE_DIR, a PGSLUICE_SOURCE_DIR compile definition, or found
// from this file's path (absolute under CMake; relative to the repo root when compiled from it).
std::filesystem::path source_dir() {
  if (const char* dir = std::getenv("PGSLUICE_SOURCE_DIR"); dir != nullptr) return dir;
#ifdef PGSLUICE_SOURCE_DIR
  return PGSLUICE_SOURCE_DIR;
#else
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
#endif
}

const char* const kFullConfig = R"(listen: "127.0.0.1:7432"
workers: 3
client_login_timeout: 5s
shutdown_timeout: 0
max_client_connections: 500
max_message_size: 16MiB
replicas: 2
log: { level: debug, format: json }
metrics: { listen: "[::1]:9999", enabled: false }
admin: { users: [ops] }
backends:
  main:
    host: db.internal
    port: 6543
    max_connections: 200
    reserved_connections: 10
    connect_timeout: 750ms
    breaker: { failure_threshold: 3, open_for: 1s, max_open_for: 1m }
  replica: { host: db-replica.internal }
users:
  ops: { password: opspass, auth: md5 }
  feed_service: { password: "${FEED_DB_PASSWORD}" }
  verified: { scram_verifier: "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$Y7KMtnzzL+zDqi0RtBNdAPJekq+PCg4eCcAMKDtLILQ=:c1MMj1kLUJb96FIM7IjzQUXiW2pIi8LDbQl55vL1oRo=" }
  legacy: { md5_hash: "md50123456789abcdef0123456789abcdef", auth: md5 }
  local: { auth: trust }
services:
  feed:
    backend: main
    match: { user: feed_service, database: nova }
    server_user: feed_owner
    server_password: "${FEED_DB_PASSWORD}"
    server_database: nova_prod
    mode: session
    max_connections: 8
    min_connections: 4
    acquire_timeout: 250ms
    max_waiting_clients: 50
    idle_timeout: 5m
    max_lifetime: 2h
    health_check_after_idle: 10s
    query_timeout: 30s
    idle_in_transaction_timeout: 1m
    coalesce: { enabled: true, max_batch: 64, window: 2ms }
  reports:
    backend: replica
    match: { user: verified, database: analytics }
    mode: statement
  legacy:
    backend: main
    match: { user: legacy, database: nova }
)";

}  // namespace

TEST_CASE("a full configuration loads every key into its field", "[config]") {
  const std::map<std::string, std::string> env{{"FEED_DB_PASSWORD", "feed-secret"}};
  const LoadResult result = load_from_string(kFullConfig, &env);
  INFO(describe(result));
  REQUIRE(result.errors.empty());
  REQUIRE(result.config);
  const Config& config = *result.config;

  CHECK(config.listen.host == "127.0.0.1");
  CHECK(config.listen.port == 7432);
  CHECK(config.workers == 3);
  CHECK(config.client_login_timeout == 5s);
  CHECK(config.shutdown_timeout == 0s);
  CHECK(config.max_client_connections == 500);
  CHECK(config.max_message_size == 16u * 1024u * 1024u);
  CHECK(config.replicas == 2);
  CHECK(config.log_level == "debug");
  CHECK(config.log_format == LogFormat::json);
  CHECK(config.metrics_listen.host == "::1");
  CHECK(config.metrics_listen.port == 9999);
  CHECK_FALSE(config.metrics_enabled);
  CHECK(config.admin_users == std::vector<std::string>{"ops"});

  REQUIRE(config.backends.size() == 2);
  const BackendConfig& main = config.backends.at("main");
  CHECK(main.name == "main");
  CHECK(main.host == "db.internal");
  CHECK(main.port == 6543);
  CHECK(main.max_connections == 200);
  CHECK(main.reserved_connections == 10);
  CHECK(main.connect_timeout == 750ms);
  CHECK(main.breaker.failure_threshold == 3);
  CHECK(main.breaker.open_for == 1s);
  CHECK(main.breaker.max_open_for == 1min);
  CHECK(main.line == 12);
  const BackendConfig& replica = config.backends.at("replica");
  CHECK(replica.host == "db-replica.internal");
  CHECK(replica.port == 5432);
  CHECK(replica.max_connections == 100);
  CHECK(replica.reserved_connections == 25);
  CHECK(replica.line == 19);

  REQUIRE(config.users.size() == 5);
  CHECK(config.users.at("ops").auth == AuthMethod::md5);
  CHECK(config.users.at("ops").password == "opspass");
  CHECK(config.users.at("feed_service").auth == AuthMethod::scram_sha_256);
  CHECK(config.users.at("feed_service").password == "feed-secret");
  CHECK(config.users.at("feed_service").line == 22);
  CHECK_FALSE(config.users.at("verified").password);
  CHECK(config.users.at("verified").scram_verifier->starts_with("SCRAM-SHA-256$4096:"));
  CHECK(config.users.at("legacy").md5_hash == "md50123456789abcdef0123456789abcdef");
  CHECK(config.users.at("local").auth == AuthMethod::trust);
  CHECK_FALSE(config.users.at("local").password);

  REQUIRE(config.services.size() == 3);
  const ServiceConfig& feed = config.services[0];
  CHECK(feed.name == "feed");
  CHECK(feed.line == 27);
  CHECK(feed.backend == "main");
  CHECK(feed.match_user == "feed_service");
  CHECK(feed.match_database == "nova");
  CHECK(feed.server_user == "feed_owner");
  CHECK(feed.server_password == "feed-secret");
  CHECK(feed.server_database == "nova_prod");
  CHECK(feed.mode == PoolMode::session);
  CHECK(feed.max_connections == 8);
  CHECK(feed.min_connections == 4);
  CHECK(feed.acquire_timeout == 250ms);
  CHECK(feed.max_waiting_clients == 50);
  CHECK(feed.idle_timeout == 5min);
  CHECK(feed.max_lifetime == 2h);
  CHECK(feed.health_check_after_idle == 10s);
  CHECK(feed.query_timeout == 30s);
  CHECK(feed.idle_in_transaction_timeout == 1min);
  CHECK(feed.coalesce.enabled);
  CHECK(feed.coalesce.max_batch == 64);
  CHECK(feed.coalesce.window == 2ms);

  // Services keep file order, not name order.
  CHECK(config.services[1].name == "reports");
  CHECK(config.services[1].mode == PoolMode::statement);
  CHECK(config.services[2].name == "legacy");
}

TEST_CASE("a minimal configuration takes the documented defaults", "[config]") {
  const LoadResult result = load_from_string(R"(backends:
  db: {}
users:
  app: { password: pw }
services:
  app:
    match: { user: app, database: appdb }
)");
  INFO(describe(result));
  REQUIRE(result.config);
  const Config& config = *result.config;
  CHECK(config.listen.host == "0.0.0.0");
  CHECK(config.listen.port == 6432);
  CHECK(config.workers == 0);
  CHECK(config.client_login_timeout == 15s);
  CHECK(config.shutdown_timeout == 30s);
  CHECK(config.max_client_connections == 10000);
  CHECK(config.max_message_size == 64u * 1024u * 1024u);
  CHECK(config.replicas == 1);
  CHECK(config.log_level == "info");
  CHECK(config.log_format == LogFormat::text);
  CHECK(config.metrics_listen.port == 9187);
  CHECK(config.metrics_enabled);
  CHECK(config.admin_users.empty());

  const BackendConfig& db = config.backends.at("db");
  CHECK(db.host == "127.0.0.1");
  CHECK(db.port == 5432);
  CHECK(db.connect_timeout == 2s);
  CHECK(db.breaker.failure_threshold == 5);
  CHECK(db.breaker.open_for == 2s);
  CHECK(db.breaker.max_open_for == 30s);

  const ServiceConfig& app = config.services.at(0);
  CHECK(app.backend == "db");  // the only backend, so it may be left out
  CHECK(app.server_user == "app");
  CHECK(app.server_database == "appdb");
  CHECK_FALSE(app.server_password);
  CHECK(app.mode == PoolMode::transaction);
  CHECK(app.max_connections == 10);
  CHECK(app.min_connections == 0);
  CHECK(app.acquire_timeout == 1s);
  CHECK(app.max_waiting_clients == 0);  // no limit of its own
  CHECK(app.idle_timeout == 10min);
  CHECK(app.max_lifetime == 1h);
  CHECK(app.health_check_after_idle == 30s);
  CHECK(app.query_timeout == 0s);
  CHECK(app.idle_in_transaction_timeout == 0s);
  CHECK_FALSE(app.coalesce.enabled);
  CHECK(app.coalesce.max_batch == 256);
  CHECK(app.coalesce.window == 0s);
}

TEST_CASE("sizes and byte counts are accepted in both spellings", "[config]") {
  const auto load_with_size = [](const std::string& size) {
    return load_from_string("max_message_size: " + size + R"(
backends: { db: {} }
users: { app: { password: pw } }
services: { app: { match: { user: app, database: d } } }
)");
  };
  CHECK(load_with_size("1048576").config->max_message_size == 1048576u);
  CHECK(load_with_size("1KB").config->max_message_size == 1024u);
  CHECK(load_with_size("\"64 MB\"").config->max_message_size == 64u * 1024u * 1024u);
  CHECK(load_with_size("1GiB").config->max_message_size == 1024u * 1024u * 1024u);
}

TEST_CASE("find_service picks the service matching user and database", "[config]") {
  const std::map<std::string, std::string> env{{"FEED_DB_PASSWORD", "x"}};
  const LoadResult result = load_from_string(kFullConfig, &env);
  REQUIRE(result.config);
  const Config& config = *result.config;
  REQUIRE(config.find_service("feed_service", "nova") != nullptr);
  CHECK(config.find_service("feed_service", "nova")->name == "feed");
  CHECK(config.find_service("legacy", "nova")->name == "legacy");
  CHECK(config.find_service("verified", "analytics")->name == "reports");
  CHECK(config.find_service("feed_service", "analytics") == nullptr);
  CHECK(config.find_service("nobody", "nova") == nullptr);
  CHECK(config.find_service("", "") == nullptr);
}

TEST_CASE("pool modes and auth methods print as the config spells them", "[config]") {
  CHECK(std::string(to_string(PoolMode::session)) == "session");
  CHECK(std::string(to_string(PoolMode::transaction)) == "transaction");
  CHECK(std::string(to_string(PoolMode::statement)) == "statement");
  CHECK(std::string(to_string(AuthMethod::scram_sha_256)) == "scram-sha-256");
  CHECK(std::string(to_string(AuthMethod::md5)) == "md5");
  CHECK(std::string(to_string(AuthMethod::trust)) == "trust");
}

namespace {

const char* const kExampleServices[] = {"auth",         "user",   "content", "feed",      "search", "media",
                                        "notification", "events", "video",   "streaming", "cdn"};

std::map<std::string, std::string> example_env() {
  std::map<std::string, std::string> env{{"PGSLUICE_ADMIN_PASSWORD", "admin-secret"}};
  for (const char* service : kExampleServices) {
    std::string upper = service;
    for (char& c : upper)
      c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    env[upper + "_DB_PASSWORD"] = std::string(service) + "-secret";
  }
  return env;
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

TEST_CASE("the example config/pgsluice.yaml loads and models the production review", "[config]") {
  const auto path = source_dir() / "config" / "pgsluice.yaml";
  INFO("example config at " << path);
  REQUIRE(std::filesystem::exists(path));
  const auto env = example_env();
  const LoadResult result = load_from_string(read_text(path), &env);
  INFO(describe(result));
  REQUIRE(result.errors.empty());
  REQUIRE(result.config);
  const Config& config = *result.config;

  REQUIRE(config.backends.size() == 1);
  const BackendConfig& primary = config.backends.at("primary");
  CHECK(primary.max_connections == 100);
  CHECK(primary.reserved_connections == 25);

  const std::vector<std::pair<int, int>> sizes = {{12, 6}, {12, 6}, {12, 6}, {8, 4}, {8, 4}, {5, 2},
                                                  {5, 2},  {5, 2},  {3, 1},  {3, 1}, {2, 1}};
  REQUIRE(config.services.size() == 11);
  int total = 0;
  for (std::size_t i = 0; i < config.services.size(); ++i) {
    const ServiceConfig& service = config.services[i];
    const std::string name = kExampleServices[i];
    CHECK(service.name == name);
    CHECK(service.backend == "primary");
    CHECK(service.match_user == name + "_service");
    CHECK(service.match_database == "nova");
    CHECK(service.server_password == name + "-secret");
    CHECK(service.max_connections == sizes[i].first);
    CHECK(service.min_connections == sizes[i].second);
    CHECK(config.users.at(name + "_service").password == name + "-secret");
    total += service.max_connections;
  }
  CHECK(total == 75);
  CHECK(config.admin_users == std::vector<std::string>{"admin"});
  CHECK(config.users.at("admin").password == "admin-secret");
  CHECK(allocation_table(config).find("100 <= 100 max_connections (ok, 0 spare)") != std::string::npos);
}

TEST_CASE("load_from_file reads the example with secrets from the process environment", "[config]") {
  for (const auto& [name, value] : example_env())
    ::setenv(name.c_str(), value.c_str(), 1);
  const LoadResult result = load_from_file((source_dir() / "config" / "pgsluice.yaml").string());
  for (const auto& [name, value] : example_env())
    ::unsetenv(name.c_str());
  INFO(describe(result));
  REQUIRE(result.config);
  CHECK(result.config->users.at("feed_service").password == "feed-secret");
}
