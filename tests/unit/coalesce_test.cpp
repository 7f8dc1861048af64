// The coalescer's decisions on SQL text (sql/select_analysis) and its replies as bytes
// (coalesce/request): what is eligible, the batched form, and each client's exact messages.
#include <catch.hpp>

#include <stdexcept>

#include "pgsluice/coalesce/request.hpp"
#include "pgsluice/protocol/builder.hpp"
#include "pgsluice/protocol/frontend_messages.hpp"
#include "pgsluice/sql/select_analysis.hpp"

using pgsluice::coalesce::Outcome;
using pgsluice::coalesce::Steps;
using pgsluice::protocol::Buffer;
using pgsluice::sql::analyze_select;
using pgsluice::sql::batched_statement;

namespace {

std::string str(const Buffer& b) { return std::string(b.begin(), b.end()); }

std::string message(char type, std::string_view body) {
  Buffer out;
  pgsluice::protocol::MessageBuilder(out).begin(type).bytes(body).end();
  return str(out);
}

// The types of messages in a run of frames.
std::string types_of(std::string_view bytes) {
  std::string types;
  std::size_t at = 0;
  while (at + 5 <= bytes.size()) {
    types += bytes[at];
    const auto* p = reinterpret_cast<const std::uint8_t*>(bytes.data() + at + 1);
    at += 1 + ((std::size_t{p[0]} << 24) | (std::size_t{p[1]} << 16) | (std::size_t{p[2]} << 8) | p[3]);
  }
  return types;
}

}  // namespace

TEST_CASE("a single read-only SELECT is eligible by its syntax; what is not says why", "[coalesce]") {
  CHECK(analyze_select("SELECT abalance FROM pgbench_accounts WHERE aid = $1").eligible());
  CHECK(analyze_select("select * from t join u on u.id = t.u where t.k = $1 order by 1 limit 5;").eligible());
  CHECK(analyze_select("WITH x AS (SELECT 1) SELECT * FROM x").eligible());
  CHECK(analyze_select("SELECT 1 FOR UPDATE").ineligible == "locking");
  CHECK(analyze_select("SELECT * FROM t WHERE id = $1 FOR SHARE").ineligible == "locking");
  CHECK(analyze_select("SELECT * INTO t2 FROM t").ineligible == "into");
  CHECK(analyze_select("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d").ineligible == "modifying_cte");
  CHECK(analyze_select("SELECT * FROM t TABLESAMPLE SYSTEM (10)").ineligible == "tablesample");
  CHECK(analyze_select("UPDATE t SET a = 1").ineligible == "not_select");
  CHECK(analyze_select("SELECT 1; SELECT 2").ineligible == "several_statements");
  CHECK(analyze_select("SELEC 1").ineligible == "invalid");
  CHECK(analyze_select("SELECT pgsluice_k FROM t").ineligible == "reserved_name");
}

TEST_CASE("the analysis names functions, operators, relations and parameters", "[coalesce]") {
  const std::string text = "SELECT count(*), lower(name) FROM public.users u JOIN x ON x.id = u.id "
                           "WHERE u.id = $2 AND name ILIKE $1 GROUP BY 2";
  auto analysis = analyze_select(text);
  REQUIRE(analysis.eligible());
  CHECK(analysis.functions == std::vector<std::string>{"count", "lower"});
  CHECK(std::find(analysis.operators.begin(), analysis.operators.end(), "=") != analysis.operators.end());
  CHECK(std::find(analysis.operators.begin(), analysis.operators.end(), "~~*") != analysis.operators.end());
  REQUIRE(analysis.relations.size() == 2);
  CHECK(analysis.relations[0].schema == "public");
  CHECK(analysis.relations[0].name == "users");
  CHECK(analysis.relations[1].name == "x");
  REQUIRE(analysis.parameters.size() == 2);
  CHECK(text.substr(analysis.parameters[0].begin, analysis.parameters[0].end - analysis.parameters[0].begin) == "$2");
  CHECK(analysis.parameters[0].number == 2);
  CHECK(analysis.highest_parameter == 2);
  CHECK(analyze_select("SELECT nextval('s')").functions == std::vector<std::string>{"nextval"});
  auto cte = analyze_select("WITH recent AS (SELECT * FROM posts) SELECT * FROM recent");
  CHECK(cte.ctes == std::vector<std::string>{"recent"});
}

TEST_CASE("the batched form joins the unnested values LATERAL to the original", "[coalesce]") {
  const std::string text = "SELECT v FROM t WHERE id = $1 AND $1 > 0 -- trailing comment";
  auto analysis = analyze_select(text);
  REQUIRE(analysis.eligible());
  const auto batched = batched_statement(text, analysis, 1);
  CHECK(batched.find("unnest($1) WITH ORDINALITY AS pgsluice_k(pgsluice_p1, pgsluice_ord)") != std::string::npos);
  CHECK(batched.find("WHERE id = pgsluice_k.pgsluice_p1 AND pgsluice_k.pgsluice_p1 > 0 -- trailing comment\n)") !=
        std::string::npos);
  CHECK(batched.ends_with("ORDER BY pgsluice_k.pgsluice_ord, pgsluice_s.pgsluice_rn"));
  // A trailing semicolon is left out of the subquery.
  const std::string semi = "SELECT 1 WHERE $1::int = 1;";
  auto a2 = analyze_select(semi);
  CHECK(batched_statement(semi, a2, 1).find(";") == std::string::npos);
  CHECK(analyze_select(batched).ineligible == "reserved_name");  // and it parses
  CHECK(pgsluice::sql::analyze_select(batched_statement("SELECT $2, $1", analyze_select("SELECT $2, $1"), 2).substr(0)).ineligible ==
        "reserved_name");
}

TEST_CASE("a parameter number no Bind can carry makes the statement ineligible, not a huge batch",
          "[coalesce]") {
  // Found by fuzz_sql: $83333333333 reaches the parser as its low 32 bits ($1728954709), and the
  // batched form named every parameter up to it (gigabytes of text).
  CHECK(analyze_select("SELECT v FROM t WHERE id = $83333333333").ineligible == "invalid");
  CHECK(analyze_select("SELECT v FROM t WHERE id = $65536").ineligible == "invalid");
  auto highest = analyze_select("SELECT v FROM t WHERE id = $65535");
  CHECK(highest.eligible());
  CHECK(highest.highest_parameter == 65535);
  CHECK_THROWS_AS(batched_statement("SELECT 1", analyze_select("SELECT 1"), 70000), std::invalid_argument);
}

TEST_CASE("bind parts: formats, values and result formats", "[coalesce]") {
  Buffer bind;
  pgsluice::protocol::MessageBuilder(bind).begin('B').cstring("").cstring("s").int16(1).int16(1).int16(2)
      .int32(4).bytes(std::string_view("\0\0\0\7", 4)).int32(-1).int16(1).int16(1).end();
  auto view = pgsluice::protocol::parse_bind(pgsluice::protocol::Bytes(bind).subspan(5));
  REQUIRE(view);
  auto parts = pgsluice::coalesce::split_bind(view->rest);
  REQUIRE(parts);
  CHECK(parts->parameter_format(1) == 1);
  REQUIRE(parts->values.size() == 2);
  CHECK(parts->values[0] == std::string_view("\0\0\0\7", 4));
  CHECK_FALSE(parts->values[1]);
  CHECK(parts->result_formats == std::vector<std::int16_t>{1});
}

TEST_CASE("arrays of the requests' values, as the server reads them", "[coalesce]") {
  using V = std::vector<std::optional<std::string_view>>;
  CHECK(pgsluice::coalesce::text_array(V{"a", std::nullopt, "x\"y\\z", "NULL", ""}) ==
        R"({"a",NULL,"x\"y\\z","NULL",""})");
  const auto binary = pgsluice::coalesce::binary_array(V{std::string_view("\0\0\0\1", 4), std::nullopt}, 23);
  CHECK(binary.size() == 20 + 8 + 4);
  CHECK(binary.substr(0, 12) == std::string("\0\0\0\1\0\0\0\1\0\0\0\x17", 12));
}

TEST_CASE("each client gets the messages of its own steps", "[coalesce]") {
  Outcome outcome;
  outcome.parameter_description = message('t', std::string("\0\1\0\0\0\x17", 6));
  // One column "v", int4, format 0.
  outcome.row_description = message('T', std::string("\0\1v\0\0\0\0\0\0\0\0\0\0\x17\0\4\xff\xff\xff\xff\0\0", 22));
  outcome.rows = message('D', std::string("\0\1\0\0\0\1" "7", 7));
  outcome.complete = pgsluice::coalesce::select_complete(1);
  Buffer out;
  REQUIRE(pgsluice::coalesce::render(Steps{"PBpE", {1}, ""}, outcome, out));
  CHECK(types_of(str(out)) == "12TDCZ");
  // The portal's description carries the Bind's result format.
  CHECK(out[5 + 5 + 5 + 22 - 1] == 1);
  out.clear();
  REQUIRE(pgsluice::coalesce::render(Steps{"PsBE", {}, ""}, outcome, out));
  CHECK(types_of(str(out)) == "1tT2DCZ");
  out.clear();
  outcome.failed_at = Outcome::Stage::bind;
  outcome.error = message('E', std::string("SERROR\0C22P02\0Mbad\0\0", 20));
  REQUIRE(pgsluice::coalesce::render(Steps{"PBpE", {}, ""}, outcome, out));
  CHECK(types_of(str(out)) == "1EZ");
  out.clear();
  REQUIRE(pgsluice::coalesce::render(Steps{"BE", {}, ""}, outcome, out));
  CHECK(types_of(str(out)) == "EZ");
  // A named statement's error names it, not the unnamed statement the coalescer ran.
  out.clear();
  outcome.error = message('E', std::string("SERROR\0C08P01\0Mbind message supplies 2 parameters, but prepared statement \"\" requires 1\0\0", 89));
  REQUIRE(pgsluice::coalesce::render(Steps{"BE", {}, "s1"}, outcome, out));
  CHECK(str(out).find("prepared statement \"s1\" requires 1") != std::string::npos);
  CHECK(pgsluice::coalesce::select_complete(12) == message('C', std::string("SELECT 12\0", 10)));
}

TEST_CASE("a batched row gives its request's ordinal and the original columns", "[coalesce]") {
  Buffer row;
  pgsluice::protocol::MessageBuilder(row).begin('D').int16(3).int32(1).bytes("2").int32(1).bytes("1").int32(1)
      .bytes("x").end();
  auto split = pgsluice::coalesce::split_batch_row(row, /*text_numbers=*/true);
  REQUIRE(split);
  CHECK(split->ordinal == 2);
  CHECK(split->row == message('D', std::string("\0\1\0\0\0\1x", 7)));
  CHECK_FALSE(pgsluice::coalesce::split_batch_row(row, /*text_numbers=*/false));
}

TEST_CASE("expressions of parameters alone, which Postgres evaluates while planning, are not batched",
          "[coalesce]") {
  CHECK(analyze_select("SELECT id, 1000 / $2 AS q FROM t WHERE id = $1").computed_parameters);
  CHECK(analyze_select("SELECT * FROM t WHERE id = $1 + 1").computed_parameters);
  CHECK(analyze_select("SELECT * FROM t WHERE name = lower($1)").computed_parameters);
  CHECK(analyze_select("SELECT * FROM t WHERE amount = $1::numeric(8,2)").computed_parameters);
  CHECK_FALSE(analyze_select("SELECT * FROM t WHERE id = $1").computed_parameters);
  CHECK_FALSE(analyze_select("SELECT * FROM t WHERE id IN ($1, $2) AND name LIKE $3").computed_parameters);
  CHECK_FALSE(analyze_select("SELECT * FROM t WHERE ($1::int IS NULL OR id = $1) LIMIT $2").computed_parameters);
  CHECK_FALSE(analyze_select("SELECT count(*), now() FROM t WHERE k = $1").computed_parameters);
  auto cast = analyze_select("SELECT * FROM t WHERE id = $1::int AND u = $2::uuid");
  CHECK_FALSE(cast.computed_parameters);
  CHECK(cast.cast_parameters == std::vector<int>{1, 2});
}
