// Invalid configurations: every problem is reported with its exact 1-based line, all at once, and
// no config is returned.
#include <algorithm>
#include <catch.hpp>
#include <string>
#include <string_view>

#include "pgsluice/config/config.hpp"

using namespace pgsluice::config;

namespace {

std::string describe(const LoadResult& result) {
  std::string out;
  for (const auto& error : result.errors)
    out += "line " + std::to_string(error.line) + ": " + error.message + "\n";
  return out;
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

// The one error of `result`, which must have exactly one, at `line`.
ConfigError single_error(const LoadResult& result, int line) {
  INFO(describe(result));
  REQUIRE_FALSE(result.config);
  REQUIRE(result.errors.size() == 1);
  CHECK(result.errors[0].line == line);
  return result.errors[0];
}

// The lines after the first newline, so raw strings can start on the line after R"(.
LoadResult load(std::string_view text) {
  if (text.starts_with('\n')) text.remove_prefix(1);
  return load_from_string(std::string(text));
}

}  // namespace

TEST_CASE("an unknown key names itself, its line and the allowed keys", "[config][errors]") {
  SECTION("at the top level") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users: { app: { password: pw } }
listn: "0.0.0.0:6432"
services: { app: { match: { user: app, database: d } } }
)"),
                                    3);
    CHECK(contains(error.message, "unknown top-level key \"listn\""));
    CHECK(contains(error.message, "allowed keys: listen, workers,"));
  }
  SECTION("inside a service") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users: { app: { password: pw } }
services:
  app:
    match: { user: app, database: d }
    max_conections: 5
)"),
                                    6);
    CHECK(contains(error.message, "services.app: unknown key \"max_conections\""));
    CHECK(contains(error.message, "max_connections, min_connections"));
  }
  SECTION("inside a nested mapping") {
    const auto error = single_error(load(R"(
backends:
  db:
    breaker:
      open_for: 1s
      treshold: 3
users: { app: { password: pw } }
services: { app: { match: { user: app, database: d } } }
)"),
                                    5);
    CHECK(contains(error.message, "backends.db.breaker: unknown key \"treshold\""));
    CHECK(contains(error.message, "(allowed keys: failure_threshold, open_for, max_open_for)"));
  }
}

TEST_CASE("each value error points at the line of its value", "[config][errors]") {
  SECTION("a duration without a unit") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users: { app: { password: pw } }
services:
  app:
    match: { user: app, database: d }
    acquire_timeout: 5
)"),
                                    6);
    CHECK(contains(error.message, "services.app.acquire_timeout: \"5\" has no unit"));
    CHECK(contains(error.message, "5ms, 5s, 5m or 5h"));
  }
  SECTION("a malformed duration") {
    const auto error = single_error(load(R"(
client_login_timeout: 1.5s
backends: { db: {} }
users: { app: { password: pw } }
services: { app: { match: { user: app, database: d } } }
)"),
                                    1);
    CHECK(contains(error.message, "client_login_timeout: \"1.5s\" is not a duration"));
  }
  SECTION("a zero acquire_timeout") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users: { app: { password: pw } }
services:
  app:
    match: { user: app, database: d }
    acquire_timeout: 0
)"),
                                    6);
    CHECK(contains(error.message, "services.app.acquire_timeout: must be greater than 0"));
  }
  SECTION("channel binding required without TLS towards the server") {
    const auto error = single_error(load(R"(
backends:
  db:
    tls:
      mode: disable
      channel_binding: require
users: { app: { password: pw } }
services: { app: { match: { user: app, database: d } } }
)"),
                                    5);
    CHECK(contains(error.message, "backends.db.tls.channel_binding: require needs TLS towards the server"));
  }
  SECTION("a channel binding that is not one of the choices") {
    const auto error = single_error(load(R"(
backends: { db: { tls: { channel_binding: always } } }
users: { app: { password: pw } }
services: { app: { match: { user: app, database: d } } }
)"),
                                    1);
    CHECK(contains(error.message, "channel_binding"));
    CHECK(contains(error.message, "always"));
  }
  SECTION("a port out of range") {
    const auto error = single_error(load(R"(
backends:
  db:
    host: db.internal
    port: 70000
users: { app: { password: pw } }
services: { app: { match: { user: app, database: d } } }
)"),
                                    4);
    CHECK(contains(error.message, "backends.db.port: must be a port number between 1 and 65535"));
  }
  SECTION("port 0") {
    const auto error = single_error(load(R"(
listen: "0.0.0.0:0"
backends: { db: {} }
users: { app: { password: pw } }
services: { app: { match: { user: app, database: d } } }
)"),
                                    1);
    CHECK(contains(error.message, "listen: expected host:port"));
  }
  SECTION("a negative worker count") {
    const auto error = single_error(load(R"(
workers: -1
backends: { db: {} }
users: { app: { password: pw } }
services: { app: { match: { user: app, database: d } } }
)"),
                                    1);
    CHECK(contains(error.message, "workers: must be between 0 and 1024, got -1"));
  }
  SECTION("max_connections below 1") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users: { app: { password: pw } }
services:
  app:
    match: { user: app, database: d }
    max_connections: 0
)"),
                                    6);
    CHECK(contains(error.message, "services.app.max_connections: must be at least 1, got 0"));
  }
  SECTION("min_connections above max_connections") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users: { app: { password: pw } }
services:
  app:
    match: { user: app, database: d }
    max_connections: 4
    min_connections: 5
)"),
                                    7);
    CHECK(contains(error.message, "services.app.min_connections: must not exceed max_connections (5 > 4)"));
  }
  SECTION("a negative min_connections") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users: { app: { password: pw } }
services:
  app:
    match: { user: app, database: d }
    min_connections: -2
)"),
                                    6);
    CHECK(contains(error.message, "services.app.min_connections: must be at least 0, got -2"));
  }
  SECTION("a word where a number belongs") {
    const auto error = single_error(load(R"(
max_client_connections: lots
backends: { db: {} }
users: { app: { password: pw } }
services: { app: { match: { user: app, database: d } } }
)"),
                                    1);
    CHECK(contains(error.message, "max_client_connections: expected a whole number, got \"lots\""));
  }
  SECTION("an unknown pool mode") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users: { app: { password: pw } }
services:
  app:
    match: { user: app, database: d }
    mode: transactional
)"),
                                    6);
    CHECK(contains(error.message,
                   "services.app.mode: \"transactional\" is not one of session, transaction, statement"));
  }
  SECTION("an unknown log level") {
    const auto error = single_error(load(R"(
log:
  level: verbose
backends: { db: {} }
users: { app: { password: pw } }
services: { app: { match: { user: app, database: d } } }
)"),
                                    2);
    CHECK(contains(error.message,
                   "log.level: \"verbose\" is not one of trace, debug, info, warn, error, critical, off"));
  }
  SECTION("a size with an unknown unit") {
    const auto error = single_error(load(R"(
max_message_size: 64TB
backends: { db: {} }
users: { app: { password: pw } }
services: { app: { match: { user: app, database: d } } }
)"),
                                    1);
    CHECK(contains(error.message, "max_message_size: \"64TB\" is not a size"));
  }
  SECTION("a size out of range") {
    const auto error = single_error(load(R"(
max_message_size: 2GB
backends: { db: {} }
users: { app: { password: pw } }
services: { app: { match: { user: app, database: d } } }
)"),
                                    1);
    CHECK(contains(error.message, "max_message_size: must be between 1024 and 1073741824 bytes"));
  }
  SECTION("a breaker whose max_open_for is shorter than open_for") {
    const auto error = single_error(load(R"(
backends:
  db:
    breaker:
      open_for: 10s
      max_open_for: 5s
users: { app: { password: pw } }
services: { app: { match: { user: app, database: d } } }
)"),
                                    5);
    CHECK(contains(error.message,
                   "backends.db.breaker.max_open_for: max_open_for must not be shorter than open_for"));
  }
  SECTION("a list where a value belongs") {
    const auto error = single_error(load(R"(
backends: { db: { host: [a, b] } }
users: { app: { password: pw } }
services: { app: { match: { user: app, database: d } } }
)"),
                                    1);
    CHECK(contains(error.message, "backends.db.host: expected a single value, got a list"));
  }
  SECTION("a key without a value") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users: { app: { password: pw } }
services:
  app:
    match: { user: app, database: d }
    max_connections:
)"),
                                    6);
    CHECK(contains(error.message, "services.app.max_connections: has no value"));
  }
}

TEST_CASE("references must name something that exists", "[config][errors]") {
  SECTION("a service's backend") {
    const auto error = single_error(load(R"(
backends:
  primary: {}
  replica: {}
users: { app: { password: pw } }
services:
  app:
    backend: primray
    match: { user: app, database: d }
)"),
                                    7);
    CHECK(contains(error.message,
                   "services.app.backend: no backend named \"primray\" (defined: primary, replica)"));
  }
  SECTION("a missing backend when there are several") {
    const auto error = single_error(load(R"(
backends:
  primary: {}
  replica: {}
users: { app: { password: pw } }
services:
  app:
    match: { user: app, database: d }
)"),
                                    6);
    CHECK(contains(error.message, "services.app: backend is required when more than one backend is defined"));
  }
  SECTION("a service's match.user") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users:
  app: { password: pw }
services:
  app:
    match:
      user: ap
      database: d
)"),
                                    7);
    CHECK(contains(error.message, "services.app.match.user: \"ap\" is not defined under users"));
  }
  SECTION("an admin user") {
    const auto error = single_error(load(R"(
admin:
  users:
    - app
    - root
backends: { db: {} }
users: { app: { password: pw } }
services: { app: { match: { user: app, database: d } } }
)"),
                                    4);
    CHECK(contains(error.message, "admin.users: \"root\" is not defined under users"));
  }
  SECTION("a service without match") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users: { app: { password: pw } }
services:
  app:
    max_connections: 3
)"),
                                    4);
    CHECK(contains(error.message, "services.app: match is required"));
  }
  SECTION("a match without database") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users: { app: { password: pw } }
services:
  app:
    match: { user: app }
)"),
                                    5);
    CHECK(contains(error.message, "services.app.match: database is required"));
  }
}

TEST_CASE("two services matching the same user and database are both named", "[config][errors]") {
  const auto error = single_error(load(R"(
backends: { db: {} }
users: { app: { password: pw } }
services:
  reads:
    match: { user: app, database: d }
  writes:
    max_connections: 2
    match: { user: app, database: d }
)"),
                                  8);
  CHECK(contains(error.message, "services reads (line 4) and writes both match user app and database d"));
}

TEST_CASE("user secrets must fit the auth method", "[config][errors]") {
  SECTION("scram-sha-256 without password or verifier") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users:
  app: { auth: scram-sha-256 }
services: { app: { match: { user: app, database: d } } }
)"),
                                    3);
    CHECK(contains(error.message, "users.app: auth scram-sha-256 needs password or scram_verifier"));
  }
  SECTION("md5 without password or hash") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users:
  app:
    auth: md5
services: { app: { match: { user: app, database: d } } }
)"),
                                    3);
    CHECK(contains(error.message, "users.app: auth md5 needs password or md5_hash"));
  }
  SECTION("password and verifier together") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users:
  app:
    password: pw
    scram_verifier: "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$Y7KMtnzzL+zDqi0RtBNdAPJekq+PCg4eCcAMKDtLILQ=:c1MMj1kLUJb96FIM7IjzQUXiW2pIi8LDbQl55vL1oRo="
services: { app: { match: { user: app, database: d } } }
)"),
                                    5);
    CHECK(contains(error.message,
                   "users.app.scram_verifier: give only one of password, scram_verifier and md5_hash"));
  }
  SECTION("a verifier of the wrong shape") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users:
  app:
    scram_verifier: "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"
services: { app: { match: { user: app, database: d } } }
)"),
                                    4);
    CHECK(contains(error.message, "users.app.scram_verifier: is not a SCRAM verifier"));
  }
  SECTION("an md5 hash of the wrong shape") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users:
  app: { auth: md5, md5_hash: "md5xyz" }
services: { app: { match: { user: app, database: d } } }
)"),
                                    3);
    CHECK(contains(error.message, "users.app.md5_hash: is not an md5 hash"));
  }
  SECTION("an md5 hash with scram auth") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users:
  app: { md5_hash: "md50123456789abcdef0123456789abcdef" }
services: { app: { match: { user: app, database: d } } }
)"),
                                    3);
    CHECK(contains(error.message, "users.app.md5_hash: cannot be used with auth scram-sha-256"));
  }
  SECTION("a password with trust") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users:
  app:
    auth: trust
    password: pw
services: { app: { match: { user: app, database: d } } }
)"),
                                    5);
    CHECK(contains(error.message, "users.app.password: auth trust takes no password"));
  }
  SECTION("an unknown auth method") {
    const auto error = single_error(load(R"(
backends: { db: {} }
users:
  app: { auth: scram, password: pw }
services: { app: { match: { user: app, database: d } } }
)"),
                                    3);
    CHECK(contains(error.message, "users.app.auth: \"scram\" is not one of scram-sha-256, md5, trust"));
  }
}

TEST_CASE("required sections that are missing or empty are reported", "[config][errors]") {
  SECTION("an empty file") {
    const LoadResult result = load("");
    INFO(describe(result));
    REQUIRE(result.errors.size() == 2);
    CHECK(result.errors[0].line == 0);
    CHECK(result.errors[0].message == "backends: at least one backend is required");
    CHECK(result.errors[1].line == 0);
    CHECK(result.errors[1].message == "services: at least one service is required");
  }
  SECTION("empty mappings") {
    const LoadResult result = load(R"(
backends: {}
services:
)");
    INFO(describe(result));
    REQUIRE(result.errors.size() == 2);
    CHECK(result.errors[0].line == 1);
    CHECK(result.errors[1].line == 2);
    CHECK(contains(result.errors[1].message, "services: at least one service is required"));
  }
  SECTION("a document that is not a mapping") {
    const auto error = single_error(load("- a\n- b\n"), 1);
    CHECK(contains(error.message, "must be a mapping"));
  }
}

TEST_CASE("a key given twice is reported at its second line", "[config][errors]") {
  const auto error = single_error(load(R"(
backends: { db: {} }
users: { app: { password: pw } }
services:
  app:
    match: { user: app, database: d }
  app:
    match: { user: app, database: e }
)"),
                                  6);
  CHECK(contains(error.message, "services: key \"app\" appears twice (first on line 4)"));
}

TEST_CASE("a YAML syntax error is one error at the line yaml-cpp reports", "[config][errors]") {
  const LoadResult result = load(R"(
backends: { db: {} }
users: { app: { password: pw }
services: { app: { match: { user: app, database: d } } }
)");
  INFO(describe(result));
  REQUIRE_FALSE(result.config);
  REQUIRE(result.errors.size() == 1);
  CHECK(result.errors[0].line == 3);
  CHECK(contains(result.errors[0].message, "YAML syntax error: "));

  const LoadResult tabs = load("backends:\n  db: {}\nservices:\n\tapp: {}\n");
  REQUIRE(tabs.errors.size() == 1);
  CHECK(tabs.errors[0].line == 4);
}

TEST_CASE("more than one YAML document is refused", "[config][errors]") {
  const auto error = single_error(load(R"(
backends: { db: {} }
---
services: {}
)"),
                                  3);
  CHECK(contains(error.message, "more than one YAML document"));
}

TEST_CASE("an unreadable config file is an error without a line that names the path", "[config][errors]") {
  const LoadResult missing = load_from_file("/nonexistent/pgsluice.yaml");
  REQUIRE(missing.errors.size() == 1);
  CHECK(missing.errors[0].line == 0);
  CHECK(missing.errors[0].message ==
        "cannot read config file /nonexistent/pgsluice.yaml: No such file or directory");

  const LoadResult directory = load_from_file("/");
  REQUIRE(directory.errors.size() == 1);
  CHECK(directory.errors[0].line == 0);
  CHECK(directory.errors[0].message == "cannot read config file /: Is a directory");
}

TEST_CASE("every error is reported at once, in line order", "[config][errors]") {
  const LoadResult result = load(R"(
workers: -4
listen: "localhost"
backends:
  db:
    port: 0
    colour: blue
users:
  app: { password: pw }
services:
  app:
    backend: nowhere
    match: { user: ghost, database: d }
    max_connections: 2
    min_connections: 3
    idle_timeout: 10
  other:
    match: { user: app, database: d }
    mode: sessions
)");
  INFO(describe(result));
  CHECK_FALSE(result.config);
  const std::vector<int> expected_lines = {1, 2, 5, 6, 11, 12, 14, 15, 18};
  std::vector<int> lines;
  for (const auto& error : result.errors)
    lines.push_back(error.line);
  CHECK(lines == expected_lines);
  REQUIRE(result.errors.size() == expected_lines.size());
  CHECK(contains(result.errors[0].message, "workers"));
  CHECK(contains(result.errors[1].message, "listen"));
  CHECK(contains(result.errors[2].message, "backends.db.port"));
  CHECK(contains(result.errors[3].message, "unknown key \"colour\""));
  CHECK(contains(result.errors[4].message, "no backend named \"nowhere\""));
  CHECK(contains(result.errors[5].message, "\"ghost\" is not defined under users"));
  CHECK(contains(result.errors[6].message, "min_connections"));
  CHECK(contains(result.errors[7].message, "idle_timeout: \"10\" has no unit"));
  CHECK(contains(result.errors[8].message, "\"sessions\" is not one of"));
}

TEST_CASE("over-allocating a backend is an error that shows the allocation table", "[config][errors]") {
  const std::string text = R"(
replicas: 3
backends:
  primary:
    max_connections: 100
    reserved_connections: 25
users:
  feed_service: { password: pw }
  user_service: { password: pw }
services:
  feed:
    match: { user: feed_service, database: nova }
    max_connections: 8
    min_connections: 4
  user:
    match: { user: user_service, database: nova }
    max_connections: 12
    min_connections: 6
)";
  // 3 x (8 + 12) + 25 = 85 fits in 100; a fourth replica makes it 105.
  const LoadResult fits = load(text);
  INFO(describe(fits));
  CHECK(fits.errors.empty());

  std::string over = text;
  over.replace(over.find("replicas: 3"), 11, "replicas: 4");
  const auto over_error = single_error(load(over), 3);
  CHECK(contains(
      over_error.message,
      "backends.primary: the services' max_connections x replicas plus reserved_connections come to 105, "
      "over the server's max_connections 100 by 5"));
  CHECK(contains(over_error.message, "  feed     transaction    4    8           4     32\n"));
  CHECK(contains(over_error.message, "  user     transaction    6   12           4     48\n"));
  CHECK(contains(over_error.message, "105 > 100 max_connections (over by 5)"));
}

TEST_CASE("a text whose parse never ends in yaml-cpp's LoadAll is a syntax error, found at once", "[config]") {
  // A leading "," made yaml-cpp 0.7's LoadAll loop, growing without bound (tests/fuzz/fuzz_config.cpp).
  for (const std::string text : {",\n", ",", ",\nlisten: 127.0.0.1:6432\n", "- a\n---\n,\n"}) {
    const auto result = pgsluice::config::load_from_string(text);
    CHECK(!result.config);
    REQUIRE(!result.errors.empty());
  }
  const auto two = pgsluice::config::load_from_string("listen: 127.0.0.1:6432\n---\nworkers: 1\n");
  REQUIRE(!two.errors.empty());
  CHECK(two.errors.front().line == 3);
  CHECK(two.errors.front().message.find("more than one YAML document") != std::string::npos);
}
