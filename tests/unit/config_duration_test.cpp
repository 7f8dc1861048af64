// The value syntaxes of the config: durations, byte sizes, and the allocation table's layout.
#include <catch.hpp>
#include <string>
#include <tuple>

#include "pgsluice/config/config.hpp"

using namespace pgsluice::config;
using namespace std::chrono_literals;

TEST_CASE("parse_duration accepts a whole number and ms, s, m or h", "[config][duration]") {
  const auto [text, expected] = GENERATE(table<const char*, Duration>({
      {"0", 0ms},
      {"0ms", 0ms},
      {"0s", 0ms},
      {"1ms", 1ms},
      {"500ms", 500ms},
      {"1500ms", 1500ms},
      {"1s", 1s},
      {"30s", 30s},
      {"10m", 10min},
      {"90m", 90min},
      {"2h", 2h},
      {"24h", 24h},
      {"007s", 7s},
  }));
  INFO(text);
  const auto parsed = parse_duration(text);
  REQUIRE(parsed);
  CHECK(*parsed == expected);
}

TEST_CASE("parse_duration rejects everything else", "[config][duration]") {
  const char* text = GENERATE("", "5", "30", "s", "ms", "1.5s", "-1s", "+1s", "1 s", " 1s", "1s ", "1S",
                              "1sec", "1d", "1us", "1m30s", "1h1", "ten s", "0x10s",
                              "99999999999999999999s",  // does not fit in 64 bits
                              "9223372036854775807h");  // fits, but not once in milliseconds
  INFO(text);
  CHECK_FALSE(parse_duration(text));
}

TEST_CASE("parse_byte_size accepts bytes and 1024-based units", "[config][size]") {
  const auto [text, expected] = GENERATE(table<const char*, std::uint64_t>({
      {"0", 0},
      {"65536", 65536},
      {"10B", 10},
      {"1KB", 1024},
      {"1kB", 1024},
      {"1KiB", 1024},
      {"64MB", 64ull << 20},
      {"16MiB", 16ull << 20},
      {"64 MB", 64ull << 20},
      {"1GB", 1ull << 30},
      {"2gib", 2ull << 30},
  }));
  INFO(text);
  const auto parsed = parse_byte_size(text);
  REQUIRE(parsed);
  CHECK(*parsed == expected);
}

TEST_CASE("parse_byte_size rejects everything else", "[config][size]") {
  const char* text = GENERATE("", "MB", "1.5MB", "-1", "+1", "64TB", "64 ", " 64", "64MBs", "64M", "64 M B",
                              "99999999999999999999", "18446744073709551615GB");
  INFO(text);
  CHECK_FALSE(parse_byte_size(text));
}

TEST_CASE("allocation_table lays out each backend's budget in fixed-width columns", "[config][allocation]") {
  const LoadResult result = load_from_string(R"(replicas: 2
backends:
  primary: { host: db.internal, max_connections: 100, reserved_connections: 25 }
  analytics: { host: olap.internal, port: 6543, max_connections: 20, reserved_connections: 5 }
users:
  notification_service: { password: pw }
  cdn_service: { password: pw }
  olap: { password: pw }
services:
  notification:
    backend: primary
    match: { user: notification_service, database: nova }
    max_connections: 5
    min_connections: 2
  cdn:
    backend: primary
    match: { user: cdn_service, database: nova }
    mode: session
    max_connections: 2
    min_connections: 1
  reports:
    backend: analytics
    match: { user: olap, database: warehouse }
    mode: statement
    max_connections: 3
)");
  REQUIRE(result.config);
  const std::string primary =
      "backend primary (db.internal:5432), server max_connections 100\n"
      "  service       mode         min  max  x replicas  total\n"
      "  notification  transaction    2    5           2     10\n"
      "  cdn           session        1    2           2      4\n"
      "  services                                            14\n"
      "  reserved_connections                                25\n"
      "  sum                                                 39 <= 100 max_connections (ok, 61 spare)\n";
  const std::string analytics =
      "backend analytics (olap.internal:6543), server max_connections 20\n"
      "  service  mode         min  max  x replicas  total\n"
      "  reports  statement      0    3           2      6\n"
      "  services                                        6\n"
      "  reserved_connections                            5\n"
      "  sum                                            11 <= 20 max_connections (ok, 9 spare)\n";
  CHECK(allocation_table(*result.config, "primary") == primary);
  CHECK(allocation_table(*result.config, "analytics") == analytics);
  // Backends in name order, separated by a blank line.
  CHECK(allocation_table(*result.config) == analytics + "\n" + primary);
  CHECK(allocation_table(*result.config, "nowhere").empty());
}

TEST_CASE("parse_fine_duration also takes microseconds (coalesce.window)", "[config][duration]") {
  CHECK(parse_fine_duration("200us") == std::optional(200us));
  CHECK(parse_fine_duration("200µs") == std::optional(200us));
  CHECK(parse_fine_duration("2ms") == std::optional(2000us));
  CHECK(parse_fine_duration("0") == std::optional(0us));
  CHECK_FALSE(parse_fine_duration("us"));
  CHECK_FALSE(parse_fine_duration("-1us"));
  CHECK_FALSE(parse_fine_duration("200"));
}
