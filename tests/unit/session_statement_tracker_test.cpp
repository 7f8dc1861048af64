// The transaction-mode statement mapping, message by message, with no network: what goes to the
// server, which server replies the client sees, and which replies pgsluice makes itself.
#include <catch.hpp>

#include "pgsluice/protocol/backend_messages.hpp"
#include "pgsluice/protocol/builder.hpp"
#include "pgsluice/protocol/frontend_messages.hpp"
#include "pgsluice/session/statement_tracker.hpp"

using namespace pgsluice;
using protocol::Buffer;
using session::Outgoing;
using session::StatementTracker;

namespace {

const Buffer kNoTypes{0, 0};

// Feeds every message in `bytes` to the tracker; returns the types (and names) sent to the server.
std::string feed(StatementTracker& tracker, server::ServerStatements& server, const Buffer& bytes) {
  Outgoing out;
  std::size_t at = 0;
  bool held = false;
  while (at < bytes.size() && !held) {
    auto frame = protocol::next_frame(protocol::Bytes(bytes).subspan(at), 1 << 20);
    REQUIRE(frame.status == protocol::FrameStatus::complete);
    held = !tracker.client_message(frame.message, server, out);
    at += frame.message.frame.size();
  }
  std::string sent;
  for (auto piece : out.pieces()) {
    std::size_t offset = 0;
    while (offset < piece.size()) {
      auto frame = protocol::next_frame(piece.subspan(offset), 1 << 20);
      REQUIRE(frame.status == protocol::FrameStatus::complete);
      sent.push_back(frame.message.type);
      if (frame.message.type == 'P') {
        auto parse = protocol::parse_parse(frame.message.payload);
        sent += "(" + std::string(parse->statement) + ")";
      } else if (frame.message.type == 'B') {
        auto bind = protocol::parse_bind(frame.message.payload);
        sent += "(" + std::string(bind->statement) + ")";
      }
      offset += frame.message.frame.size();
    }
  }
  if (held) sent += "|held";  // the last message fed waits (StatementTracker::client_message)
  return sent;
}

// Server replies in order; returns what the client receives: relayed types, and pgsluice's own
// replies marked with '+'.
std::string answer(StatementTracker& tracker, server::ServerStatements& server, const std::string& replies) {
  std::string client;
  auto take = [&] {
    Outgoing due;
    tracker.take_due_replies(due);
    for (auto piece : due.pieces()) {
      std::size_t offset = 0;
      while (offset < piece.size()) {
        auto frame = protocol::next_frame(piece.subspan(offset), 1 << 20);
        client += "+";
        client.push_back(frame.message.type);
        offset += frame.message.frame.size();
      }
    }
  };
  for (char type : replies) {
    take();
    Buffer reply;
    if (type == 'C') {
      protocol::MessageBuilder(reply).begin('C').cstring("SELECT 1").end();
    } else if (type == 'X') {  // stands for CommandComplete "DEALLOCATE ALL"
      protocol::MessageBuilder(reply).begin('C').cstring("DEALLOCATE ALL").end();
    } else {
      protocol::MessageBuilder(reply).begin(type).end();
    }
    auto frame = protocol::next_frame(protocol::Bytes(reply), 1 << 20);
    if (tracker.server_message(frame.message, server) == StatementTracker::Disposition::relay) {
      client.push_back(type == 'X' ? 'C' : type);
    }
  }
  take();
  return client;
}

Buffer parse(std::string_view name, std::string_view query) {
  Buffer out;
  protocol::append_parse(out, name, query, protocol::Bytes(kNoTypes));
  return out;
}

Buffer bind(std::string_view statement) {
  Buffer out;
  const Buffer rest{0, 0, 0, 0, 0, 0};  // no formats, no parameters, no result formats
  protocol::append_bind(out, "", statement, protocol::Bytes(rest));
  return out;
}

// A RowDescription of text columns with these names, or of one column of type `type`.
Buffer row_description(const std::vector<std::string>& names, std::int32_t type = 25) {
  Buffer out;
  protocol::MessageBuilder b(out);
  b.begin('T').int16(static_cast<std::int16_t>(names.size()));
  for (const auto& name : names) b.cstring(name).int32(16384).int16(1).int32(type).int16(-1).int32(-1).int16(0);
  b.end();
  return out;
}

// One server message through the tracker: what the client gets of it.
StatementTracker::Disposition reply(StatementTracker& tracker, server::ServerStatements& server, const Buffer& message) {
  auto frame = protocol::next_frame(protocol::Bytes(message), 1 << 20);
  REQUIRE(frame.status == protocol::FrameStatus::complete);
  return tracker.server_message(frame.message, server);
}

Buffer describe_statement(std::string_view name) {
  Buffer out;
  protocol::append_describe(out, 'S', name);
  return out;
}

Buffer then(Buffer a, const Buffer& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

Buffer sync_only() {
  Buffer out;
  protocol::append_sync(out);
  return out;
}

Buffer execute_only() {
  Buffer out;
  protocol::append_execute(out, "");
  return out;
}

Buffer execute_sync() {
  Buffer out;
  protocol::append_execute(out, "");
  protocol::append_sync(out);
  return out;
}

}  // namespace

TEST_CASE("a named Parse is sent under the shared server name and its reply relayed", "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements server;
  const auto name = StatementTracker::server_name("select 1", protocol::Bytes(kNoTypes));
  CHECK(feed(tracker, server, then(parse("s1", "select 1"), execute_sync())) == "P(" + name + ")DES");  // and a Describe to learn its parameters (swallowed)
  CHECK(server.contains(name));
  CHECK(answer(tracker, server, "1tnCZ") == "1CZ");
  CHECK(tracker.idle());
}

TEST_CASE("a client's Parse of a text the connection has is closed and parsed anew; a Bind shares the copy",
          "[session][statements]") {
  server::ServerStatements server;
  StatementTracker first;
  feed(first, server, then(parse("a", "select 1"), execute_sync()));
  answer(first, server, "1tnCZ");

  // Another client, same text, same server connection: its copy may predate DDL, so the client's own
  // Parse (which it may Describe next) gets a fresh one; the Close's reply is pgsluice's to swallow.
  StatementTracker second;
  Buffer sync;
  protocol::append_sync(sync);
  const auto name = StatementTracker::server_name("select 1", protocol::Bytes(kNoTypes));
  CHECK(feed(second, server, then(parse("b", "select 1"), sync)) == "CP(" + name + ")DS");
  CHECK(answer(second, server, "31Z") == "1Z");
  CHECK(server.contains(name));
  // The first client binds its statement on that connection: the new copy is used as it is.
  CHECK(feed(first, server, then(bind("a"), execute_sync())) == "B(" + name + ")ES");
  CHECK(answer(first, server, "2CZ") == "2CZ");
}

TEST_CASE("Bind on a server connection without the statement injects a Parse and swallows its reply",
          "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements first_server;
  feed(tracker, first_server, then(parse("s1", "select 2"), execute_sync()));
  answer(tracker, first_server, "1tnCZ");

  server::ServerStatements second_server;  // the client was given another connection
  const auto name = StatementTracker::server_name("select 2", protocol::Bytes(kNoTypes));
  CHECK(feed(tracker, second_server, then(bind("s1"), execute_sync())) == "P(" + name + ")B(" + name + ")ES");
  CHECK(answer(tracker, second_server, "12DCZ") == "2DCZ");
  CHECK(second_server.contains(name));
}

TEST_CASE("a Bind refused for result formats pgsluice did not spell out is the client's own error",
          "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements first_server;
  feed(tracker, first_server, then(parse("s1", "select * from t"), execute_sync()));
  answer(tracker, first_server, "1tnCZ");

  auto reply = [&](server::ServerStatements& server, std::string_view sqlstate, std::string_view text) {
    Buffer error;
    protocol::append_error_response(error, protocol::Severity::error, sqlstate, text);
    auto frame = protocol::next_frame(protocol::Bytes(error), 1 << 20);
    return tracker.server_message(frame.message, server);
  };
  // The client's Bind itself names two result formats (pgsluice spells them out only for a
  // statement whose columns the client was told of): Postgres's 08P01 is the client's to read.
  server::ServerStatements second_server;
  feed(tracker, second_server, then(bind("s1"), execute_sync()));
  CHECK(answer(tracker, second_server, "1") == "");
  CHECK(reply(second_server, "08P01", "bind message has 2 result formats but query has 3 columns") ==
        StatementTracker::Disposition::relay);
  CHECK(answer(tracker, second_server, "Z") == "Z");
  CHECK(tracker.idle());

  // Any other Bind error is the client's to read as it is.
  feed(tracker, second_server, then(bind("s1"), execute_sync()));
  CHECK(reply(second_server, "22P02", "invalid input syntax for type integer") ==
        StatementTracker::Disposition::relay);
  CHECK(answer(tracker, second_server, "Z") == "Z");
}

TEST_CASE("a Bind of a described statement names one result format per column the client was told of",
          "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements server;
  Buffer describe;
  protocol::append_describe(describe, 'S', "s1");
  protocol::append_sync(describe);
  feed(tracker, server, then(parse("s1", "select * from t where id = $1"), describe));
  answer(tracker, server, "1t");
  Buffer row_description;  // two columns (only the count is read)
  protocol::MessageBuilder(row_description).begin('T').int16(2).end();
  auto frame = protocol::next_frame(protocol::Bytes(row_description), 1 << 20);
  CHECK(tracker.server_message(frame.message, server) == StatementTracker::Disposition::relay);
  CHECK(answer(tracker, server, "Z") == "Z");

  // The first Bind (postgres.js: no result formats), then one asking for binary (one format for all).
  auto sent_bind = [&](const Buffer& client_bind) {
    Outgoing out;
    auto message = protocol::next_frame(protocol::Bytes(client_bind), 1 << 20);
    tracker.client_message(message.message, server, out);
    REQUIRE(out.pieces().size() == 1);
    auto sent = protocol::next_frame(out.pieces().front(), 1 << 20);
    auto view = protocol::parse_bind(sent.message.payload);
    REQUIRE(view);
    auto formats = protocol::bind_result_formats(view->rest);
    REQUIRE(formats);
    CHECK(view->rest.first(formats->offset).size() == 2 + 2 + 4 + 1);  // one text parameter "7"
    return std::pair{formats->count, formats->first};
  };
  auto client_bind = [](std::int16_t result_formats) {
    Buffer out;
    protocol::MessageBuilder b(out);
    b.begin('B').cstring("").cstring("s1").int16(0).int16(1).int32(1).bytes("7").int16(result_formats);
    if (result_formats == 1) b.int16(1);
    b.end();
    return out;
  };
  CHECK(sent_bind(client_bind(0)) == std::pair<std::int16_t, std::int16_t>{2, 0});
  CHECK(sent_bind(client_bind(1)) == std::pair<std::int16_t, std::int16_t>{2, 1});
}

TEST_CASE("Close of a named statement is answered by pgsluice and keeps the server statement",
          "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements server;
  feed(tracker, server, then(parse("s1", "select 3"), execute_sync()));
  answer(tracker, server, "1tnCZ");
  Buffer close;
  protocol::append_close(close, 'S', "s1");
  protocol::append_sync(close);
  CHECK(feed(tracker, server, close) == "S");
  CHECK(answer(tracker, server, "Z") == "+3Z");
  CHECK(tracker.client_statement_count() == 0);
  CHECK(server.size() == 1);
}

TEST_CASE("an error unwinds up to the Sync: the failed statement exists neither for the client nor the server",
          "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements server;
  Buffer batch = then(then(parse("bad", "selec 1"), bind("bad")), execute_sync());
  feed(tracker, server, batch);
  CHECK(answer(tracker, server, "EZ") == "EZ");
  CHECK(tracker.idle());
  CHECK(tracker.client_statement_count() == 0);
  CHECK(server.size() == 0);
  // The name is free again, as in Postgres.
  feed(tracker, server, then(parse("bad", "select 1"), execute_sync()));
  CHECK(answer(tracker, server, "1tnCZ") == "1CZ");
}

TEST_CASE("re-Parsing a live name gets the server's own 42P05, told with the client's name",
          "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements server;
  feed(tracker, server, then(parse("dup", "select 4"), execute_sync()));
  answer(tracker, server, "1tnCZ");
  // The server itself refuses it (so that a transaction block is aborted as on a connection of the
  // client's own): the client's text parsed under a stand-in name made to exist first.
  const auto name = StatementTracker::server_name("select 4", protocol::Bytes(kNoTypes));
  CHECK(feed(tracker, server, then(then(parse("dup", "select 5"), bind("dup")), execute_sync())) ==
        "CP(pgsluice_duplicate)P(pgsluice_duplicate)B(" + name + ")ES");
  CHECK(answer(tracker, server, "31") == "");
  Buffer exists;
  protocol::append_error_response(exists, protocol::Severity::error, "42P05",
                                  "prepared statement \"pgsluice_duplicate\" already exists");
  CHECK(reply(tracker, server, exists) == StatementTracker::Disposition::rewritten);
  auto told = protocol::parse_error_response(protocol::Bytes(tracker.rewritten_reply()).subspan(5));
  REQUIRE(told);
  CHECK(told->message == "prepared statement \"dup\" already exists");
  CHECK(answer(tracker, server, "Z") == "Z");
  CHECK(tracker.client_statement_count() == 1);
}

TEST_CASE("the unnamed statement is parsed again when the client moved to another connection",
          "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements first_server;
  Buffer describe;
  protocol::append_describe(describe, 'S', "");
  protocol::append_sync(describe);
  CHECK(feed(tracker, first_server, then(parse("", "select $1"), describe)) == "P()DS");
  CHECK(answer(tracker, first_server, "1tTZ") == "1tTZ");

  server::ServerStatements second_server;
  CHECK(feed(tracker, second_server, then(bind(""), execute_sync())) == "P()B()ES");
  CHECK(answer(tracker, second_server, "12DCZ") == "2DCZ");
  // Same connection again: no second Parse.
  CHECK(feed(tracker, second_server, then(bind(""), execute_sync())) == "B()ES");
}

TEST_CASE("a client back on a connection where another client parsed the unnamed statement parses its own again",
          "[session][statements]") {
  // asyncpg, Bun, diesel: Parse/Describe/Sync of the unnamed statement, later Bind/Execute/Sync.
  StatementTracker mine;
  StatementTracker other;
  server::ServerStatements server;
  CHECK(feed(mine, server, then(then(parse("", "select $1::int * 4"), describe_statement("")), sync_only())) ==
        "P()DS");
  CHECK(answer(mine, server, "1tTZ") == "1tTZ");
  CHECK(feed(other, server, then(then(parse("", "select $1::int * 6"), describe_statement("")), sync_only())) ==
        "P()DS");
  CHECK(answer(other, server, "1tTZ") == "1tTZ");
  // Same connection, another client's statement in between: parsed again, its reply swallowed.
  CHECK(feed(mine, server, then(bind(""), execute_sync())) == "P()B()ES");
  CHECK(answer(mine, server, "12DCZ") == "2DCZ");
  // Nobody else came: nothing to parse.
  CHECK(feed(mine, server, then(bind(""), execute_sync())) == "B()ES");
}

TEST_CASE("a client without an unnamed statement never binds the one another client left", "[session][statements]") {
  StatementTracker mine;
  StatementTracker other;
  server::ServerStatements server;
  feed(other, server, then(parse("", "select 6"), sync_only()));
  answer(other, server, "1tnZ");
  // Postgres says 26000 to a client that never parsed one: the other client's is closed first.
  CHECK(feed(mine, server, then(bind(""), execute_sync())) == "CB()ES");
  CHECK(answer(mine, server, "3EZ") == "EZ");
  // A simple query drops the unnamed statement, for the client and on the server.
  Buffer query;
  protocol::append_query(query, "select 1");
  feed(mine, server, query);
  answer(mine, server, "CZ");
  CHECK(feed(mine, server, then(bind(""), execute_sync())) == "B()ES");
}

TEST_CASE("an unnamed Parse the server skipped after an error leaves the one before it", "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements server;
  feed(tracker, server, then(parse("", "select 1"), sync_only()));
  answer(tracker, server, "1tnZ");
  // Bind of a missing statement fails; the Parse after it is skipped by the server.
  CHECK(feed(tracker, server, then(then(bind("missing"), parse("", "select 2")), sync_only())) == "B(missing)P()S");
  CHECK(answer(tracker, server, "EZ") == "EZ");
  // The server still has "select 1" as the unnamed statement: bound as it is, nothing re-parsed.
  CHECK(feed(tracker, server, then(bind(""), execute_sync())) == "B()ES");
  CHECK(answer(tracker, server, "2CZ") == "2CZ");
  // Elsewhere, what is parsed is "select 1" again.
  server::ServerStatements elsewhere;
  CHECK(feed(tracker, elsewhere, then(bind(""), execute_sync())) == "P()B()ES");
  CHECK(answer(tracker, elsewhere, "12CZ") == "2CZ");
  // A failed unnamed Parse leaves none: the next Bind gets Postgres's 26000, not a re-parse.
  feed(tracker, server, then(parse("", "selec 3"), sync_only()));
  CHECK(answer(tracker, server, "EZ") == "EZ");
  server::ServerStatements third;
  CHECK(feed(tracker, third, then(bind(""), execute_sync())) == "B()ES");
}

TEST_CASE("DEALLOCATE ALL in a pipeline forgets only the statements parsed before it", "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements server;
  feed(tracker, server, then(parse("old", "select 0"), sync_only()));
  answer(tracker, server, "1tnZ");
  // One pipeline: DEALLOCATE ALL (unnamed), then a new named statement, bound and executed.
  Buffer pipeline = then(then(then(parse("", "DEALLOCATE ALL"), bind("")), execute_only()),
                         then(then(parse("fresh", "select 7"), bind("fresh")), execute_sync()));
  feed(tracker, server, pipeline);
  CHECK(answer(tracker, server, "12X1tn2CZ") == "12C12CZ");
  CHECK(tracker.client_statement_count() == 1);
  CHECK(server.size() == 1);
  CHECK(server.contains(StatementTracker::server_name("select 7", protocol::Bytes(kNoTypes))));
  // The later Bind finds it.
  CHECK(feed(tracker, server, then(bind("fresh"), execute_sync())) ==
        "B(" + StatementTracker::server_name("select 7", protocol::Bytes(kNoTypes)) + ")ES");
}

TEST_CASE("DEALLOCATE of a client statement is answered with the server's ReadyForQuery", "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements server;
  feed(tracker, server, then(parse("s9", "select 9"), execute_sync()));
  answer(tracker, server, "1tnCZ");
  Buffer query;
  protocol::append_query(query, "DEALLOCATE s9;");
  CHECK(feed(tracker, server, query) == "S");
  CHECK(answer(tracker, server, "Z") == "+CZ");
  CHECK(tracker.client_statement_count() == 0);
  CHECK(server.size() == 1);
}

TEST_CASE("the per-connection LRU closes the least recently used statement", "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements server(2);
  for (int i = 0; i < 3; ++i) {
    const std::string query = "select " + std::to_string(i);
    const std::string sent = feed(tracker, server, then(parse("s" + std::to_string(i), query), execute_sync()));
    if (i < 2) {
      CHECK(sent.front() == 'P');
      CHECK(answer(tracker, server, "1tnCZ") == "1CZ");
    } else {
      CHECK(sent.front() == 'C');  // eviction Close first, its CloseComplete swallowed
      CHECK(answer(tracker, server, "31tnCZ") == "1CZ");
    }
  }
  CHECK(server.size() == 2);
  CHECK_FALSE(server.contains(StatementTracker::server_name("select 0", protocol::Bytes(kNoTypes))));
}

TEST_CASE("DEALLOCATE ALL run on the server, however sent, clears both maps", "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements server;
  feed(tracker, server, then(parse("s1", "select 1"), execute_sync()));
  answer(tracker, server, "1tnCZ");
  REQUIRE(server.size() == 1);
  // Extended protocol through the unnamed statement: passed on, and its tag noticed.
  CHECK(feed(tracker, server, then(then(parse("", "deallocate all"), bind("")), execute_sync())) == "P()B()ES");
  CHECK(answer(tracker, server, "12XZ") == "12CZ");
  CHECK(server.size() == 0);
  CHECK(tracker.client_statement_count() == 0);
}

TEST_CASE("DEALLOCATE of a client statement through the extended protocol deallocates a stand-in",
          "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements server;
  feed(tracker, server, then(parse("_pg3_1", "select 1"), execute_sync()));
  answer(tracker, server, "1tnCZ");
  CHECK(feed(tracker, server, then(then(parse("", "DEALLOCATE _pg3_1"), bind("")), execute_sync())) ==
        "P(pgsluice_deallocate_1)P()B()ES");
  CHECK(answer(tracker, server, "112CZ") == "12CZ");
  CHECK(tracker.client_statement_count() == 0);
  CHECK(server.size() == 1);  // the shared statement stays for other clients
}

namespace {

// A client that prepared and described `select * from t` (columns id, a) on a first connection.
struct DescribedClient {
  StatementTracker tracker;
  server::ServerStatements first_server;
  std::string name = StatementTracker::server_name("select * from t", protocol::Bytes(kNoTypes));

  DescribedClient() {
    Buffer sync;
    protocol::append_sync(sync);
    feed(tracker, first_server, then(then(parse("s1", "select * from t"), describe_statement("s1")), sync));
    answer(tracker, first_server, "1t");
    CHECK(reply(tracker, first_server, row_description({"id", "a"})) == StatementTracker::Disposition::relay);
    CHECK(answer(tracker, first_server, "Z") == "Z");
  }
};

}  // namespace

TEST_CASE("a described statement parsed afresh elsewhere is described first; the same columns let its Bind go",
          "[session][statements]") {
  DescribedClient client;
  server::ServerStatements second_server;
  const auto& name = client.name;
  // The Bind waits: the copy parsed here is described first, and that reply (with a Flush) comes now.
  CHECK(feed(client.tracker, second_server, then(bind("s1"), execute_sync())) == "P(" + name + ")DH|held");
  CHECK(client.tracker.awaiting_server());
  CHECK(client.tracker.has_due_replies() == false);
  CHECK(answer(client.tracker, second_server, "1t") == "");
  CHECK(reply(client.tracker, second_server, row_description({"id", "a"})) == StatementTracker::Disposition::swallow);
  CHECK_FALSE(client.tracker.awaiting_server());
  // Offered again, the Bind goes; the copy's shape is known from now on, for every client.
  CHECK(feed(client.tracker, second_server, then(bind("s1"), execute_sync())) == "B(" + name + ")ES");
  CHECK(answer(client.tracker, second_server, "2DCZ") == "2DCZ");
  CHECK(feed(client.tracker, second_server, then(bind("s1"), execute_sync())) == "B(" + name + ")ES");
}

TEST_CASE("a described statement whose columns changed type or name under DDL gets 0A000, not rows of the new shape",
          "[session][statements]") {
  for (const bool renamed : {false, true}) {
    DescribedClient client;
    server::ServerStatements second_server;
    CHECK(feed(client.tracker, second_server, then(bind("s1"), execute_sync())) == "P(" + client.name + ")DH|held");
    answer(client.tracker, second_server, "1t");
    const Buffer now = renamed ? row_description({"id", "b"}) : row_description({"id", "a"}, 23);
    CHECK(reply(client.tracker, second_server, now) == StatementTracker::Disposition::swallow);
    // Offered again: pgsluice answers the Bind itself (the stale plan), the server skips to the Sync.
    CHECK(feed(client.tracker, second_server, then(bind("s1"), execute_sync())) == "S");
    CHECK(answer(client.tracker, second_server, "Z") == "+EZ");
    CHECK(client.tracker.idle());
  }
}

TEST_CASE("a copy known to differ is parsed anew before the client is told its plan is stale",
          "[session][statements]") {
  // The copy here was parsed (and described, by another client) before the DDL the client has seen.
  DescribedClient client;
  server::ServerStatements second_server;
  second_server.add(client.name);
  second_server.set_shape(client.name, 12345);
  CHECK(feed(client.tracker, second_server, then(bind("s1"), execute_sync())) ==
        "CP(" + client.name + ")DH|held");
  CHECK(answer(client.tracker, second_server, "31t") == "");
  CHECK(reply(client.tracker, second_server, row_description({"id", "a"})) == StatementTracker::Disposition::swallow);
  CHECK(feed(client.tracker, second_server, then(bind("s1"), execute_sync())) == "B(" + client.name + ")ES");
}

TEST_CASE("a verification skipped by an error skips the Bind that waited for it, up to the Sync",
          "[session][statements]") {
  DescribedClient client;
  server::ServerStatements second_server;
  CHECK(feed(client.tracker, second_server, then(bind("s1"), execute_sync())) == "P(" + client.name + ")DH|held");
  // The injected Parse fails (the table was dropped): the client learns why, the server skips the
  // Describe and everything else up to the Sync.
  CHECK(answer(client.tracker, second_server, "E") == "E");
  CHECK_FALSE(client.tracker.awaiting_server());
  CHECK_FALSE(second_server.contains(client.name));
  CHECK(feed(client.tracker, second_server, then(bind("s1"), execute_sync())) == "S");
  CHECK(answer(client.tracker, second_server, "Z") == "Z");
  CHECK(client.tracker.idle());
}

TEST_CASE("a statement the client never described binds without a verification", "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements first_server;
  feed(tracker, first_server, then(parse("s1", "select * from t"), execute_sync()));
  answer(tracker, first_server, "1tnDCZ");
  server::ServerStatements second_server;
  const auto name = StatementTracker::server_name("select * from t", protocol::Bytes(kNoTypes));
  CHECK(feed(tracker, second_server, then(bind("s1"), execute_sync())) == "P(" + name + ")B(" + name + ")ES");
}

TEST_CASE("the columns a client learnt from a Describe of its portal are verified like a statement's",
          "[session][statements]") {
  // pgjdbc: Parse, Bind, Describe of the (unnamed) portal, Execute, Sync; later Bind/Execute alone.
  StatementTracker tracker;
  server::ServerStatements first_server;
  Buffer describe_portal;
  protocol::append_describe(describe_portal, 'P', "");
  feed(tracker, first_server, then(then(then(parse("S_1", "select * from t"), bind("S_1")), describe_portal),
                                       execute_sync()));
  answer(tracker, first_server, "1tT2");  // pgsluice's own Describe of S_1 went before the Bind
  CHECK(reply(tracker, first_server, row_description({"id", "a"})) == StatementTracker::Disposition::relay);
  CHECK(answer(tracker, first_server, "DCZ") == "DCZ");

  server::ServerStatements second_server;
  const auto name = StatementTracker::server_name("select * from t", protocol::Bytes(kNoTypes));
  CHECK(feed(tracker, second_server, then(bind("S_1"), execute_sync())) == "P(" + name + ")DH|held");
  answer(tracker, second_server, "1t");
  CHECK(reply(tracker, second_server, row_description({"id", "n"}, 23)) == StatementTracker::Disposition::swallow);
  CHECK(feed(tracker, second_server, then(bind("S_1"), execute_sync())) == "S");
  CHECK(answer(tracker, second_server, "Z") == "+EZ");

  // A portal of the unnamed statement teaches nothing about S_1.
  server::ServerStatements third_server;
  Buffer unnamed = then(then(parse("", "select 1"), bind("")), describe_portal);
  feed(tracker, third_server, then(unnamed, execute_sync()));
  answer(tracker, third_server, "12");
  CHECK(reply(tracker, third_server, row_description({"x"})) == StatementTracker::Disposition::relay);
  CHECK(answer(tracker, third_server, "DCZ") == "DCZ");
  CHECK(third_server.shape(name) == 0);
}

TEST_CASE("a pipeline that never drains keeps its replies in order", "[session][statements]") {
  // A client 100 statements ahead of the server for 1,000 statements: the queue of expectations
  // compacts as it goes and never loses its place.
  StatementTracker tracker;
  server::ServerStatements server;
  Buffer sync;
  protocol::append_sync(sync);
  feed(tracker, server, then(parse("s1", "select 1"), sync));
  CHECK(answer(tracker, server, "1Z") == "1Z");
  std::string replies;
  for (int i = 0; i < 1000; ++i) {
    // Every tenth is a Close (answered by pgsluice once everything before it was) and a Parse of the
    // same name (and pgsluice's Describe of it, swallowed). A name and a text of its own each time:
    // a name whose Close, or a copy whose Parse, is still in doubt behind a Sync would wait.
    if (i % 10 == 9) {
      const auto name = "c" + std::to_string(i);
      Buffer close;
      protocol::append_close(close, 'S', name);
      CHECK(feed(tracker, server, then(then(close, parse(name, "select " + std::to_string(i + 2))), sync)).find("held") ==
            std::string::npos);
    } else {
      feed(tracker, server, then(bind("s1"), execute_sync()));
    }
    if (i >= 100) {
      const bool closing = (i - 100) % 10 == 9;
      replies += answer(tracker, server, closing ? "1tnZ" : "2CZ");
    }
  }
  for (int i = 900; i < 1000; ++i) replies += answer(tracker, server, i % 10 == 9 ? "1tnZ" : "2CZ");
  std::string expected;
  for (int i = 0; i < 1000; ++i) expected += i % 10 == 9 ? "+31Z" : "2CZ";
  CHECK(replies == expected);
  CHECK(tracker.idle());
}

TEST_CASE("a shared statement missing from the server (26000) is parsed again at its next use",
          "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements server;
  const auto name = StatementTracker::server_name("select 1", protocol::Bytes(kNoTypes));
  feed(tracker, server, then(parse("s", "select 1"), sync_only()));
  answer(tracker, server, "1tnZ");
  CHECK(feed(tracker, server, then(bind("s"), execute_sync())) == "B(" + name + ")ES");
  Buffer missing;
  protocol::append_error_response(missing, protocol::Severity::error, "26000",
                                  "prepared statement \"" + name + "\" does not exist");
  CHECK(reply(tracker, server, missing) == StatementTracker::Disposition::rewritten);  // told as "s"
  auto told = protocol::parse_error_response(protocol::Bytes(tracker.rewritten_reply()).subspan(5));
  REQUIRE(told);
  CHECK(told->message == "prepared statement \"s\" does not exist");
  CHECK(answer(tracker, server, "Z") == "Z");
  CHECK_FALSE(server.contains(name));
  CHECK(feed(tracker, server, then(bind("s"), execute_sync())) == "P(" + name + ")B(" + name + ")ES");
}

TEST_CASE("a Close and a Sync read after a flushed error are skipped: the statement stays",
          "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements server;
  const auto name = StatementTracker::server_name("select 1", protocol::Bytes(kNoTypes));
  feed(tracker, server, then(parse("s1", "select 1"), execute_only()));
  CHECK(answer(tracker, server, "1E") == "1E");
  Buffer close;
  protocol::append_close(close, 'S', "s1");
  // Postgres skips the Close; the Parse of the live name after the Sync gets 42P05 from the server.
  CHECK(feed(tracker, server, then(then(close, sync_only()), then(parse("s1", "select 2"), sync_only()))) ==
        "SCP(pgsluice_duplicate)P(pgsluice_duplicate)S");
}

TEST_CASE("a Parse of a name whose Close is in doubt behind a Sync waits for the Sync's answer",
          "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements server;
  feed(tracker, server, then(parse("s1", "select 1"), sync_only()));
  answer(tracker, server, "1tnZ");
  Buffer close;
  protocol::append_close(close, 'S', "s1");
  const auto old_name = StatementTracker::server_name("select 1", protocol::Bytes(kNoTypes));
  CHECK(feed(tracker, server, then(execute_only(), then(close, sync_only()))) == "ES");
  // Whether s1 is still there depends on the Execute: the Parse is held.
  CHECK(feed(tracker, server, parse("s1", "select 2")) == "|held");
  CHECK(tracker.awaiting_server());
  CHECK(answer(tracker, server, "EZ") == "EZ");  // the Execute failed: Postgres skipped the Close
  CHECK_FALSE(tracker.awaiting_server());
  CHECK(feed(tracker, server, then(parse("s1", "select 2"), sync_only())) ==
        "CP(pgsluice_duplicate)P(pgsluice_duplicate)S");  // 42P05 there
}

TEST_CASE("a skipped Close and Parse of one name leave the statement as it was", "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements server;
  const auto old_name = StatementTracker::server_name("select 1", protocol::Bytes(kNoTypes));
  feed(tracker, server, then(parse("s1", "select 1"), sync_only()));
  answer(tracker, server, "1tnZ");
  Buffer close;
  protocol::append_close(close, 'S', "s1");
  feed(tracker, server, then(then(bind("s1"), close), then(parse("s1", "select 2"), sync_only())));
  CHECK(answer(tracker, server, "EZ") == "EZ");  // the Bind failed: the Close and Parse were skipped
  CHECK(feed(tracker, server, then(bind("s1"), execute_sync())) == "B(" + old_name + ")ES");
}

TEST_CASE("in a failed transaction a statement missing from the connection is described and checked as Postgres would",
          "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements first_server;
  const auto name = StatementTracker::server_name("update t set a = $1", protocol::Bytes(kNoTypes));
  // After the client's Parse pgsluice describes the statement itself (the client did not).
  CHECK(feed(tracker, first_server, then(parse("s1", "update t set a = $1"), sync_only())) == "P(" + name + ")DS");
  CHECK(answer(tracker, first_server, "1") == "1");
  Buffer parameters;
  protocol::MessageBuilder(parameters).begin('t').int16(1).int32(23).end();
  CHECK(reply(tracker, first_server, parameters) == StatementTracker::Disposition::swallow);
  CHECK(answer(tracker, first_server, "nZ") == "Z");

  // Another connection, in a transaction that failed there: the statement cannot be parsed now.
  server::ServerStatements second_server;
  Buffer failed;
  protocol::append_ready_for_query(failed, 'E');
  feed(tracker, second_server, sync_only());
  CHECK(reply(tracker, second_server, failed) == StatementTracker::Disposition::relay);
  CHECK(feed(tracker, second_server, then(describe_statement("s1"), sync_only())) == "S");
  CHECK(answer(tracker, second_server, "Z") == "+t+nZ");  // no rows: described (with rows: 25P02)
  // A Bind with one parameter too few: Postgres's 08P01 (it checks before refusing the Bind), not 25P02.
  CHECK(feed(tracker, second_server, then(bind("s1"), execute_sync())) == "S");
  CHECK(answer(tracker, second_server, "Z") == "+EZ");
  CHECK(tracker.idle());
}

TEST_CASE("an unnamed Parse skipped before a Sync does not undo the client's unnamed Parse after it",
          "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements server;
  feed(tracker, server, then(parse("", "select 1"), sync_only()));
  answer(tracker, server, "1Z");
  // One pipeline: an error, a skipped unnamed Parse, Sync; a new unnamed Parse, Sync.
  feed(tracker, server, then(then(execute_only(), parse("", "select 2")), sync_only()));
  feed(tracker, server, then(parse("", "select 3"), sync_only()));
  CHECK(answer(tracker, server, "EZ1Z") == "EZ1Z");
  // The client's unnamed statement is "select 3", and this connection holds it: bound as it is.
  CHECK(feed(tracker, server, then(bind(""), execute_sync())) == "B()ES");
  // On another connection it is parsed again, from its own text.
  server::ServerStatements other;
  Outgoing out;
  const Buffer bound = bind("");
  REQUIRE(tracker.client_message(protocol::next_frame(protocol::Bytes(bound), 1 << 20).message, other, out));
  auto sent = protocol::next_frame(out.pieces().front(), 1 << 20);
  REQUIRE(sent.message.type == 'P');
  CHECK(protocol::parse_parse(sent.message.payload)->query == "select 3");
}

TEST_CASE("a skipped injected unnamed Parse does not keep the client's skipped one after it", "[session][statements]") {
  StatementTracker tracker;
  server::ServerStatements first_server;
  feed(tracker, first_server, then(parse("", "select 1"), sync_only()));
  answer(tracker, first_server, "1Z");
  // Elsewhere: an error, then a Bind of the unnamed statement (parsed there first) and a new one.
  server::ServerStatements second_server;
  CHECK(feed(tracker, second_server, then(then(execute_only(), bind("")), then(parse("", "select 2"), sync_only()))) ==
        "EP()B()P()S");
  CHECK(answer(tracker, second_server, "EZ") == "EZ");  // all skipped: the client's is "select 1" still
  Outgoing out;
  const Buffer bound = bind("");
  REQUIRE(tracker.client_message(protocol::next_frame(protocol::Bytes(bound), 1 << 20).message, second_server, out));
  auto sent = protocol::next_frame(out.pieces().front(), 1 << 20);
  REQUIRE(sent.message.type == 'P');
  CHECK(protocol::parse_parse(sent.message.payload)->query == "select 1");
}

TEST_CASE("a tracker carries nothing once its statements are closed and the server has answered",
          "[session][statements]") {
  // ClientSession drops such a tracker between transactions: an idle client costs no tracker.
  StatementTracker tracker;
  server::ServerStatements server;
  CHECK(tracker.carries_nothing());
  Buffer query;
  protocol::MessageBuilder(query).begin('Q').cstring("select 1").end();
  CHECK(feed(tracker, server, query) == "Q");
  CHECK_FALSE(tracker.carries_nothing());  // its reply is owed
  answer(tracker, server, "CZ");
  CHECK(tracker.carries_nothing());

  feed(tracker, server, then(parse("s1", "select 3"), execute_sync()));
  answer(tracker, server, "1tnCZ");
  CHECK_FALSE(tracker.carries_nothing());  // s1 is the client's
  Buffer close;
  protocol::append_close(close, 'S', "s1");
  protocol::append_sync(close);
  feed(tracker, server, close);
  answer(tracker, server, "Z");
  CHECK(tracker.carries_nothing());

  feed(tracker, server, then(parse("", "select 4"), sync_only()));
  answer(tracker, server, "1Z");
  CHECK_FALSE(tracker.carries_nothing());  // the unnamed statement lives until the next one
}
