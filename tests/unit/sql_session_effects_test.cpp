// What the Postgres parser says a statement does to the session (sql/session_effects).
#include <catch.hpp>

#include "pgsluice/sql/session_effects.hpp"

using pgsluice::sql::analyze;
using pgsluice::sql::Analyzer;
using pgsluice::sql::may_have_session_effects;
using Names = std::vector<std::string>;

TEST_CASE("ordinary statements are let through without a parse", "[sql]") {
  CHECK_FALSE(may_have_session_effects("SELECT abalance FROM pgbench_accounts WHERE aid = $1"));
  CHECK_FALSE(may_have_session_effects("  insert into t values (1);"));
  CHECK_FALSE(may_have_session_effects("BEGIN"));
  CHECK(may_have_session_effects("set work_mem = '64kB'"));
  CHECK(may_have_session_effects("/* app */ SET search_path TO a"));
  CHECK(may_have_session_effects("SELECT 1; SET x.y = 1"));
  CHECK(may_have_session_effects("select pg_advisory_lock(1)"));
  CHECK(may_have_session_effects("listen ch"));
  CHECK(may_have_session_effects("SELECT id INTO TEMP TABLE t2 FROM t"));
  CHECK(analyze("SELECT id INTO TEMP TABLE t2 FROM t").pins);
  CHECK(analyze("select id into temporary t2 from t").pins);
  CHECK(analyze("SELECT id INTO pg_temp.t2 FROM t").pins);
  CHECK_FALSE(analyze("SELECT id INTO t2 FROM t").pins);
}

TEST_CASE("session-level SET and RESET name their settings; SET LOCAL and SET TRANSACTION do not", "[sql]") {
  CHECK(analyze("SET work_mem = '64kB'").settings == Names{"work_mem"});
  CHECK(analyze("set session statement_timeout to 5000; reset search_path").settings ==
        Names{"statement_timeout", "search_path"});
  CHECK(analyze("SET TIME ZONE 'UTC'").settings == Names{"timezone"});
  CHECK(analyze("SET app.tenant TO DEFAULT").settings == Names{"app.tenant"});
  CHECK(analyze("SET LOCAL work_mem = '1MB'").settings.empty());
  CHECK(analyze("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").settings.empty());
  CHECK(analyze("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").settings.size() == 3);
  CHECK(analyze("RESET ALL").reset_all);
  CHECK(analyze("DISCARD ALL").reset_all);
  // A SET clause of a function definition is not a session SET.
  CHECK_FALSE(analyze("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET work_mem = '1MB' AS 'select 1'").any());
}

TEST_CASE("state that cannot move pins; what may release it is noticed", "[sql]") {
  CHECK(analyze("LISTEN ch").pins);
  CHECK(analyze("select pg_advisory_lock(42)").pins);
  CHECK(analyze("select pg_catalog.pg_try_advisory_lock_shared(1, 2)").pins);
  CHECK_FALSE(analyze("select pg_advisory_xact_lock(42)").any());
  CHECK(analyze("create temp table t (a int)").pins);
  CHECK(analyze("create table pg_temp.t as select 1").pins);
  CHECK(analyze("DECLARE c CURSOR WITH HOLD FOR SELECT 1").pins);
  CHECK_FALSE(analyze("DECLARE c CURSOR FOR SELECT 1").pins);
  CHECK(analyze("UNLISTEN *").may_unpin);
  CHECK(analyze("select pg_advisory_unlock_all()").may_unpin);
  CHECK(analyze("DISCARD TEMP").may_unpin);
  CHECK(analyze("CLOSE c").may_unpin);
}

TEST_CASE("text Postgres cannot parse has no effects pgsluice follows", "[sql]") {
  auto effects = analyze("SET = nonsense");
  CHECK_FALSE(effects.valid);
  CHECK_FALSE(effects.any());
}

TEST_CASE("the analyzer caches by text and stays bounded", "[sql]") {
  Analyzer analyzer(2);
  auto first = analyzer.effects_of("SET a.b = 1");
  REQUIRE(first);
  CHECK(first == analyzer.effects_of("SET a.b = 1"));  // the same analysis, not a new parse
  CHECK_FALSE(analyzer.effects_of("select 1"));
  CHECK_FALSE(analyzer.effects_of("SET a.b = 1; select 1") == first);
  analyzer.effects_of("SET a.c = 1");
  analyzer.effects_of("SET a.d = 1");
  CHECK_FALSE(first == analyzer.effects_of("SET a.b = 1"));  // evicted, parsed again
}

TEST_CASE("SQL PREPARE, EXECUTE and DEALLOCATE names are found where the text spells them", "[sql]") {
  using Kind = pgsluice::sql::PreparedNameRef::Kind;
  const std::string text =
      "PREPARE \"Acc X\" (int) AS SELECT $1; EXECUTE acc_y(1); explain execute z; DEALLOCATE PREPARE w; "
      "DEALLOCATE ALL; create table t as execute v";
  auto effects = analyze(text);
  REQUIRE(effects.prepared.size() == 5);
  auto spelled = [&](const pgsluice::sql::PreparedNameRef& ref) {
    return text.substr(ref.name_begin, ref.name_end - ref.name_begin);
  };
  CHECK(effects.prepared[0].kind == Kind::prepare);
  CHECK(effects.prepared[0].name == "Acc X");
  CHECK(spelled(effects.prepared[0]) == "\"Acc X\"");
  CHECK(text.substr(effects.prepared[0].statement_begin,
                    effects.prepared[0].statement_end - effects.prepared[0].statement_begin) ==
        "PREPARE \"Acc X\" (int) AS SELECT $1");
  CHECK(effects.prepared[1].kind == Kind::execute);
  CHECK(spelled(effects.prepared[1]) == "acc_y");
  CHECK(spelled(effects.prepared[2]) == "z");
  CHECK(effects.prepared[3].kind == Kind::deallocate);
  CHECK(spelled(effects.prepared[3]) == "w");
  CHECK(spelled(effects.prepared[4]) == "v");
  CHECK(effects.statements == 6);
}

TEST_CASE("a SET of one setting to constants is a literal one; others are not", "[sql]") {
  CHECK(analyze("SET work_mem = '64kB'").literal);
  CHECK(analyze("set search_path to a, \"B c\"").literal);
  CHECK_FALSE(analyze("SET work_mem TO DEFAULT").literal);
  CHECK_FALSE(analyze("SET DateStyle = 'ISO'").literal);
  CHECK_FALSE(analyze("SET work_mem = '64kB'; SET search_path = a").literal);
  CHECK_FALSE(analyze("RESET work_mem").literal);
}

TEST_CASE("LISTEN and UNLISTEN name their channels as Postgres folds them", "[sql][listen]") {
  auto listen = analyze("LISTEN Orders");
  REQUIRE(listen.listens.size() == 1);
  CHECK(listen.listens[0].listen);
  CHECK(listen.listens[0].channel == "orders");
  CHECK(listen.only_listens());
  auto quoted = analyze(R"(listen "Mixed Case"; UNLISTEN other; unlisten *)");
  REQUIRE(quoted.listens.size() == 3);
  CHECK(quoted.listens[0].channel == "Mixed Case");
  CHECK_FALSE(quoted.listens[1].listen);
  CHECK(quoted.listens[1].channel == "other");
  CHECK(quoted.listens[2].channel.empty());  // UNLISTEN *
  CHECK(quoted.only_listens());
  CHECK_FALSE(analyze("LISTEN a; SELECT 1").only_listens());
  CHECK_FALSE(analyze("SELECT 1").only_listens());
  CHECK(analyze("DISCARD ALL").discard_all);
  CHECK_FALSE(analyze("RESET ALL").discard_all);
}

#include "pgsluice/sql/statement_shape.hpp"

TEST_CASE("a statement's shape has no values: constants become $n, one fingerprint for one shape") {
  auto a = pgsluice::sql::statement_shape("SELECT * FROM accounts WHERE id = 42 AND name = 'alice'");
  auto b = pgsluice::sql::statement_shape("select *  from accounts where id = 7 and name = 'bob'");
  REQUIRE(a);
  REQUIRE(b);
  CHECK(a->normalized == "SELECT * FROM accounts WHERE id = $1 AND name = $2");
  CHECK(a->normalized.find("alice") == std::string::npos);
  CHECK(a->fingerprint == b->fingerprint);
  CHECK(a->fingerprint.size() == 16);
  auto other = pgsluice::sql::statement_shape("SELECT * FROM accounts WHERE id = 42");
  REQUIRE(other);
  CHECK(other->fingerprint != a->fingerprint);
  CHECK_FALSE(pgsluice::sql::statement_shape("SELEKT nothing"));
  auto with_nul = std::string("SELECT 1") + '\0';
  CHECK(pgsluice::sql::statement_shape(with_nul));
}
