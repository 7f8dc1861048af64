// SCRAM-SHA-256: the RFC 7677 §3 example, both ends against each other, and bad input.
#include <catch.hpp>

#include <algorithm>
#include <set>
#include <string>

#include "pgsluice/protocol/digest.hpp"
#include "pgsluice/protocol/scram.hpp"

namespace scram = pgsluice::protocol::scram;
using pgsluice::protocol::ProtocolError;

namespace {

// RFC 7677 §3. The RFC puts "n=user" in the client-first-message where Postgres clients send "n=";
// the user name is part of AuthMessage, so the vector is only reproduced with it.
constexpr std::string_view kRfcPassword = "pencil";
constexpr std::string_view kRfcClientNonce = "rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kRfcServerNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
constexpr std::string_view kRfcSalt = "W22ZaJ0SNY7soEsUEjb6gQ==";
constexpr std::string_view kRfcClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kRfcServerFirst =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
constexpr std::string_view kRfcClientFinal =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
constexpr std::string_view kRfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

// Computed independently with Python: hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096) and the
// RFC 5802 §3 key derivations, salt = base64 "W22ZaJ0SNY7soEsUEjb6gQ==".
constexpr std::string_view kRfcVerifier =
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

scram::Verifier rfc_verifier() { return scram::make_verifier(kRfcPassword, *scram::base64_decode(kRfcSalt), 4096); }

// Low iteration count keeps the tests fast; the exchange does not depend on it.
scram::Verifier test_verifier(std::string_view password) {
  return scram::make_verifier(password, "0123456789abcdef", 16);
}

struct ExchangeOutcome {
  std::optional<ProtocolError> server_error;  // the server's verdict on the client-final-message
  bool client_verified_server = false;
};

ExchangeOutcome run_exchange(const scram::Verifier& verifier, std::string client_password) {
  scram::ServerExchange server(verifier);
  scram::ClientExchange client(std::move(client_password));
  auto server_first = server.handle_client_first(client.client_first());
  REQUIRE(server_first.ok());
  auto client_final = client.handle_server_first(*server_first);
  REQUIRE(client_final.ok());
  auto server_final = server.handle_client_final(*client_final);
  if (!server_final.ok()) return {.server_error = server_final.error()};
  return {.server_error = std::nullopt, .client_verified_server = client.verify_server_final(*server_final).ok()};
}

// Runs client-first (which must start with `first_prefix`) and server-first between the two ends:
// the client's client-final-message, for the server to judge.
std::string client_final_of(scram::ServerExchange& server, scram::ClientExchange& client,
                            std::string_view first_prefix) {
  const auto first = client.client_first();
  CHECK(first.starts_with(first_prefix));
  auto server_first = server.handle_client_first(first);
  REQUIRE(server_first.ok());
  auto client_final = client.handle_server_first(*server_first);
  REQUIRE(client_final.ok());
  return *client_final;
}

// Drives a server exchange to the point where it expects the client-final-message.
scram::ServerExchange server_after_first(std::string_view client_first = "n,,n=,r=clientnonce") {
  scram::ServerExchange server(test_verifier("secret"), "servernonce");
  REQUIRE(server.handle_client_first(client_first).ok());
  return server;
}

}  // namespace

TEST_CASE("scram client reproduces the RFC 7677 example exactly", "[protocol][scram]") {
  scram::ClientExchange client(std::string(kRfcPassword), std::string(kRfcClientNonce), "user");
  CHECK(client.client_first() == kRfcClientFirst);
  auto client_final = client.handle_server_first(kRfcServerFirst);
  REQUIRE(client_final.ok());
  CHECK(*client_final == kRfcClientFinal);
  CHECK(client.verify_server_final(kRfcServerFinal).ok());
}

TEST_CASE("scram server reproduces the RFC 7677 example exactly", "[protocol][scram]") {
  scram::ServerExchange server(rfc_verifier(), std::string(kRfcServerNonce));
  auto server_first = server.handle_client_first(kRfcClientFirst);
  REQUIRE(server_first.ok());
  CHECK(*server_first == kRfcServerFirst);
  auto server_final = server.handle_client_final(kRfcClientFinal);
  REQUIRE(server_final.ok());
  CHECK(*server_final == kRfcServerFinal);
}

TEST_CASE("scram client sends the Postgres form n,,n=,r=<nonce> with a random printable nonce",
          "[protocol][scram]") {
  scram::ClientExchange a("pw");
  scram::ClientExchange b("pw");
  std::string first_a = a.client_first();
  std::string first_b = b.client_first();
  REQUIRE(first_a.starts_with("n,,n=,r="));
  CHECK(first_a.size() == std::string_view("n,,n=,r=").size() + 24);
  CHECK(first_a.find(',', 8) == std::string::npos);
  CHECK(first_a != first_b);
}

TEST_CASE("scram client escapes ',' and '=' in the user name", "[protocol][scram]") {
  scram::ClientExchange client("pw", "nonce", "a,b=c");
  CHECK(client.client_first() == "n,,n=a=2Cb=3Dc,r=nonce");
}

TEST_CASE("scram client and server agree with the right password", "[protocol][scram]") {
  auto outcome = run_exchange(test_verifier("correct horse"), "correct horse");
  CHECK_FALSE(outcome.server_error.has_value());
  CHECK(outcome.client_verified_server);
}

TEST_CASE("scram exchange with the wrong password fails with 28P01", "[protocol][scram]") {
  auto outcome = run_exchange(test_verifier("correct horse"), "correct horsE");
  REQUIRE(outcome.server_error.has_value());
  CHECK(outcome.server_error->sqlstate == "28P01");
  CHECK(outcome.server_error->message == "password authentication failed");
}

TEST_CASE("scram server accepts n=* and any user name, since the user comes from the startup packet",
          "[protocol][scram]") {
  for (std::string_view first : {"n,,n=*,r=abc", "n,,n=someone,r=abc", "n,,n=,r=abc,x=ignored"}) {
    scram::ServerExchange server(test_verifier("pw"), "def");
    auto server_first = server.handle_client_first(first);
    REQUIRE(server_first.ok());
    CHECK(*server_first == "r=abcdef,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=16");
  }
}

TEST_CASE("scram server accepts the y,, flag and then requires c=eSws", "[protocol][scram]") {
  scram::Verifier verifier = test_verifier("pw");
  scram::ClientExchange client("pw", "abc");
  std::string first = client.client_first();
  first[0] = 'y';

  scram::ServerExchange server(verifier, "def");
  REQUIRE(server.handle_client_first(first).ok());
  // Our client writes c=biws (base64 "n,,"), which no longer matches the gs2 header "y,,".
  scram::ClientExchange replay("pw", "abc");
  (void)replay.client_first();
  auto client_final = replay.handle_server_first("r=abcdef,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=16");
  REQUIRE(client_final.ok());
  auto mismatched = server.handle_client_final(*client_final);
  REQUIRE_FALSE(mismatched.ok());
  CHECK(mismatched.error().sqlstate == "08P01");

  // The same exchange with c=eSws gets to the proof check; the proof was computed over c=biws, so
  // it is wrong for this AuthMessage, which is the point: "c=" is part of what is signed.
  scram::ServerExchange server2(verifier, "def");
  REQUIRE(server2.handle_client_first(first).ok());
  std::string with_y = *client_final;
  with_y.replace(0, 6, "c=eSws");
  auto result = server2.handle_client_final(with_y);
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().sqlstate == "28P01");
}

TEST_CASE("scram server ignores well-formed extensions after the nonce, as Postgres does", "[protocol][scram]") {
  scram::ServerExchange server(test_verifier("pw"));
  CHECK(server.handle_client_first("n,,n=,r=abc,x=anything,y=").ok());
}

TEST_CASE("scram server rejects channel binding p= with 08P01 when it offered none", "[protocol][scram]") {
  scram::ServerExchange server(test_verifier("pw"));
  auto result = server.handle_client_first("p=tls-server-end-point,,n=,r=abc");
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().sqlstate == "08P01");
  CHECK(result.error().message.find("channel binding") != std::string::npos);
}

TEST_CASE("scram with channel binding: both ends bind to the certificate's hash", "[protocol][scram]") {
  const std::string end_point(32, '\x5a');  // stands for SHA-256 of the server certificate
  scram::ServerExchange server(test_verifier("pw"));
  server.offer_channel_binding(end_point);
  server.select(true);
  scram::ClientExchange client("pw");
  client.bind_channel(end_point);
  const auto client_final = client_final_of(server, client, "p=tls-server-end-point,,n=,r=");
  CHECK(client_final.starts_with("c=" + scram::base64_encode("p=tls-server-end-point,," + end_point) + ",r="));
  auto server_final = server.handle_client_final(client_final);
  REQUIRE(server_final.ok());
  CHECK(client.verify_server_final(*server_final).ok());
}

TEST_CASE("scram with channel binding: another certificate's hash is refused with 08P01",
          "[protocol][scram]") {
  // A man in the middle terminates the client's TLS with its own certificate: the client binds to
  // that certificate's hash, which is not pgsluice's.
  scram::ServerExchange server(test_verifier("pw"));
  server.offer_channel_binding(std::string(32, 'a'));
  server.select(true);
  scram::ClientExchange client("pw");
  client.bind_channel(std::string(32, 'b'));
  auto result = server.handle_client_final(client_final_of(server, client, "p=tls-server-end-point,,"));
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().sqlstate == "08P01");
  CHECK(result.error().message == "SCRAM channel binding check failed");
}

TEST_CASE("scram server offering channel binding refuses a flag that disagrees with the mechanism",
          "[protocol][scram]") {
  struct Case {
    bool plus;
    std::string_view first;
    std::string_view says;
  };
  const Case cases[] = {
      {true, "n,,n=,r=abc", "does not include channel binding data"},
      {true, "y,,n=,r=abc", "does not include channel binding data"},
      {false, "y,,n=,r=abc", "negotiation error"},  // a downgrade: the client was told there is no -PLUS
      {false, "p=tls-server-end-point,,n=,r=abc", "includes channel binding data"},
      {true, "p=tls-unique,,n=,r=abc", "unsupported SCRAM channel-binding type \"tls-unique\""},
      {true, "p=tls-server-end-point", "expected ','"},
  };
  for (const auto& each : cases) {
    INFO(each.first);
    scram::ServerExchange server(test_verifier("pw"));
    server.offer_channel_binding(std::string(32, 'a'));
    server.select(each.plus);
    auto result = server.handle_client_first(each.first);
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().sqlstate == "08P01");
    CHECK(result.error().message.find(each.says) != std::string::npos);
  }
  // Without -PLUS on offer (plain text), "y" is what a binding-capable client must send: accepted.
  scram::ServerExchange plain(test_verifier("pw"));
  CHECK(plain.handle_client_first("y,,n=,r=abc").ok());
}

TEST_CASE("scram client that could bind sends y and c=eSws", "[protocol][scram]") {
  scram::ServerExchange server(test_verifier("pw"));
  scram::ClientExchange client("pw");
  client.could_bind();
  const auto client_final = client_final_of(server, client, "y,,n=,r=");
  CHECK(client_final.starts_with("c=eSws,r="));
  CHECK(server.handle_client_final(client_final).ok());
}

TEST_CASE("scram server rejects an authzid or a mandatory extension with 0A000 like Postgres",
          "[protocol][scram]") {
  for (std::string_view first : {"n,a=admin,n=,r=abc", "n,,m=ext,n=,r=abc"}) {
    scram::ServerExchange server(test_verifier("pw"));
    auto result = server.handle_client_first(first);
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().sqlstate == "0A000");
  }
}

TEST_CASE("scram server rejects malformed client-first-messages with 08P01", "[protocol][scram]") {
  std::string_view bad_first = GENERATE(as<std::string_view>{},  //
                                        "",                        // nothing
                                        "n",                       // truncated gs2 header
                                        "n,",                      //
                                        "n,,",                     // no bare message
                                        "x,,n=,r=abc",             // unknown gs2 flag
                                        "n,n=,r=abc",              // missing authzid separator
                                        "n,,r=abc",                // no user name attribute
                                        "n,,n=",                   // no nonce
                                        "n,,n=,s=abc",             // wrong attribute for nonce
                                        "n,,n=,r=",                // empty nonce
                                        "n,,n=,r=a\x01z",          // non-printable nonce
                                        "n,,n=,r=caf\xc3\xa9",     // non-ASCII nonce
                                        "n,,n=,r=abc,\xfe\xff",    // not an attribute after the nonce
                                        "n,,n=,r=abc,x",           // an attribute without '='
                                        "n,,n=,r=abc,");           // an empty one
  scram::ServerExchange server(test_verifier("pw"));
  auto result = server.handle_client_first(bad_first);
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().sqlstate == "08P01");
}

TEST_CASE("scram server rejects malformed client-final-messages with 08P01", "[protocol][scram]") {
  std::string_view bad_final =
      GENERATE(as<std::string_view>{},  //
               "",
               "c=biws,r=clientnonceservernonce",                                              // no proof
               "c=biws,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",                        // no nonce
               "r=clientnonceservernonce,c=biws,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",  // order
               "c=biws,r=clientnonceservernonce,p=AAAA",                                        // short proof
               "c=biws,r=clientnonceservernonce,p=not base64!",                                 // bad base64
               "c=biws,r=clientnonceservernonce,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,x=1",  // p not last
               "c=eSws,r=clientnonceservernonce,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",  // c= is not "n,,"
               "c=,r=clientnonceservernonce,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
  auto server = server_after_first();
  auto result = server.handle_client_final(bad_final);
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().sqlstate == "08P01");
}

TEST_CASE("scram server fails a nonce mismatch with 28P01", "[protocol][scram]") {
  auto server = server_after_first();
  auto result = server.handle_client_final("c=biws,r=clientnonceOTHER,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().sqlstate == "28P01");
  CHECK(result.error().message == "password authentication failed");
}

TEST_CASE("scram server rejects messages out of order and any message after the exchange ended",
          "[protocol][scram]") {
  scram::ServerExchange fresh(test_verifier("pw"));
  auto early = fresh.handle_client_final("c=biws,r=x,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
  REQUIRE_FALSE(early.ok());
  CHECK(early.error().sqlstate == "08P01");
  // The failed step ended the exchange: a valid client-first-message is no longer accepted.
  auto late = fresh.handle_client_first("n,,n=,r=abc");
  REQUIRE_FALSE(late.ok());
  CHECK(late.error().sqlstate == "08P01");

  auto server = server_after_first();
  auto second_first = server.handle_client_first("n,,n=,r=abc");
  REQUIRE_FALSE(second_first.ok());
  CHECK(second_first.error().sqlstate == "08P01");
}

TEST_CASE("scram client rejects a malformed or hostile server-first-message with 08P01", "[protocol][scram]") {
  std::string_view bad_first = GENERATE(as<std::string_view>{},  //
                                        "",
                                        "r=abcdef,s=MDEy",               // no iteration count
                                        "r=abcdef,i=16,s=MDEy",          // out of order
                                        "r=abc,s=MDEy,i=16",             // nonce not extended
                                        "r=xbcdef,s=MDEy,i=16",          // nonce does not start with ours
                                        "r=abcdef,s=,i=16",              // empty salt
                                        "r=abcdef,s=MDE,i=16",           // bad base64 salt
                                        "r=abcdef,s=MDEy,i=0",           // zero iterations
                                        "r=abcdef,s=MDEy,i=-1",          // negative iterations
                                        "r=abcdef,s=MDEy,i=16x",         // trailing garbage
                                        "r=abcdef,s=MDEy,i=99999999999",  // overflow
                                        "r=abcdef,s=MDEy,i=1000001",      // more than pgsluice computes
                                        "r=abcdef,s=MDEy,i=2147483647",   // a worker held for hours
                                        "m=ext,r=abcdef,s=MDEy,i=16");   // mandatory extension
  scram::ClientExchange client("pw", "abc");
  (void)client.client_first();
  auto result = client.handle_server_first(bad_first);
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().sqlstate == "08P01");
}

TEST_CASE("scram client rejects a wrong server signature or a server error with 28000", "[protocol][scram]") {
  std::string_view server_final = GENERATE(as<std::string_view>{},  //
                                           "v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                                           "e=invalid-proof");
  scram::ClientExchange client(std::string(kRfcPassword), std::string(kRfcClientNonce), "user");
  (void)client.client_first();
  REQUIRE(client.handle_server_first(kRfcServerFirst).ok());
  auto result = client.verify_server_final(server_final);
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().sqlstate == "28000");
}

TEST_CASE("scram client rejects a malformed server-final-message with 08P01", "[protocol][scram]") {
  std::string_view server_final = GENERATE(as<std::string_view>{}, "", "x=1", "v=AAAA", "v=!!!!");
  scram::ClientExchange client(std::string(kRfcPassword), std::string(kRfcClientNonce), "user");
  (void)client.client_first();
  REQUIRE(client.handle_server_first(kRfcServerFirst).ok());
  auto result = client.verify_server_final(server_final);
  REQUIRE_FALSE(result.ok());
  CHECK(result.error().sqlstate == "08P01");
}

TEST_CASE("scram client rejects messages out of order with 08P01", "[protocol][scram]") {
  scram::ClientExchange client("pw", "abc");
  auto early = client.handle_server_first("r=abcdef,s=MDEy,i=16");
  REQUIRE_FALSE(early.ok());
  CHECK(early.error().sqlstate == "08P01");

  scram::ClientExchange other("pw", "abc");
  (void)other.client_first();
  auto no_signature_yet = other.verify_server_final("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
  REQUIRE_FALSE(no_signature_yet.ok());
  CHECK(no_signature_yet.error().sqlstate == "08P01");
}

TEST_CASE("scram make_verifier matches an independently computed verifier", "[protocol][scram]") {
  CHECK(scram::format_verifier(rfc_verifier()) == kRfcVerifier);
}

TEST_CASE("scram verifier format and parse round-trip", "[protocol][scram]") {
  auto parsed = scram::parse_verifier(kRfcVerifier);
  REQUIRE(parsed.has_value());
  CHECK(parsed->iterations == 4096);
  CHECK(parsed->salt == *scram::base64_decode(kRfcSalt));
  CHECK(parsed->stored_key == rfc_verifier().stored_key);
  CHECK(parsed->server_key == rfc_verifier().server_key);
  CHECK(scram::format_verifier(*parsed) == kRfcVerifier);

  scram::Verifier random_salt = scram::make_verifier("pw");
  CHECK(random_salt.iterations == scram::kDefaultIterations);
  CHECK(random_salt.salt.size() == 16);
  CHECK(random_salt.salt != scram::make_verifier("pw").salt);
  auto reparsed = scram::parse_verifier(scram::format_verifier(random_salt));
  REQUIRE(reparsed.has_value());
  CHECK(reparsed->salt == random_salt.salt);
  CHECK(reparsed->stored_key == random_salt.stored_key);
  CHECK(reparsed->server_key == random_salt.server_key);
}

TEST_CASE("scram parse_verifier rejects malformed verifiers", "[protocol][scram]") {
  const std::string key = "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=";
  std::string bad = GENERATE_COPY(as<std::string>{},  //
                                  "",
                                  "md553f48b7c4b76a86ce72276c5755f217d",
                                  "SCRAM-SHA-1$4096:W22ZaJ0SNY7soEsUEjb6gQ==$" + key + ":" + key,
                                  "SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==$" + key + ":" + key,
                                  "SCRAM-SHA-256$x:W22ZaJ0SNY7soEsUEjb6gQ==$" + key + ":" + key,
                                  "SCRAM-SHA-256$4096:$" + key + ":" + key,
                                  "SCRAM-SHA-256$4096:W22Z*J0SNY7soEsUEjb6gQ==$" + key + ":" + key,
                                  "SCRAM-SHA-256$4096W22ZaJ0SNY7soEsUEjb6gQ==$" + key + ":" + key,
                                  "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$" + key,
                                  "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$" + key + ":AAAA",
                                  "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==" + key + ":" + key);
  CHECK_FALSE(scram::parse_verifier(bad).has_value());
}

TEST_CASE("scram a stored verifier authenticates the password it was made from", "[protocol][scram]") {
  auto verifier = scram::parse_verifier(kRfcVerifier);
  REQUIRE(verifier.has_value());
  CHECK(run_exchange(*verifier, "pencil").client_verified_server);
  CHECK(run_exchange(*verifier, "pencil2").server_error->sqlstate == "28P01");
}

TEST_CASE("scram mock_verifier is deterministic per user and secret", "[protocol][scram]") {
  scram::Verifier a = scram::mock_verifier("ghost", "server-secret");
  scram::Verifier again = scram::mock_verifier("ghost", "server-secret");
  CHECK(scram::format_verifier(a) == scram::format_verifier(again));
  CHECK(a.iterations == scram::kDefaultIterations);
  CHECK(a.salt.size() == 16);
  CHECK(a.stored_key != a.server_key);

  scram::Verifier other_user = scram::mock_verifier("ghost2", "server-secret");
  scram::Verifier other_secret = scram::mock_verifier("ghost", "other-secret");
  CHECK(other_user.salt != a.salt);
  CHECK(other_user.stored_key != a.stored_key);
  CHECK(other_secret.salt != a.salt);
  CHECK(other_secret.stored_key != a.stored_key);
}

TEST_CASE("scram an unknown user's exchange reaches the final step and fails with 28P01", "[protocol][scram]") {
  scram::Verifier mock = scram::mock_verifier("ghost", "server-secret");
  for (std::string password : {"", "ghost", "server-secret", "pencil"}) {
    auto outcome = run_exchange(mock, password);
    REQUIRE(outcome.server_error.has_value());
    CHECK(outcome.server_error->sqlstate == "28P01");
    CHECK(outcome.server_error->message == "password authentication failed");
  }
}

TEST_CASE("base64 matches the RFC 4648 test vectors", "[protocol][scram]") {
  CHECK(scram::base64_encode("") == "");
  CHECK(scram::base64_encode("f") == "Zg==");
  CHECK(scram::base64_encode("fo") == "Zm8=");
  CHECK(scram::base64_encode("foo") == "Zm9v");
  CHECK(scram::base64_encode("foob") == "Zm9vYg==");
  CHECK(scram::base64_encode("fooba") == "Zm9vYmE=");
  CHECK(scram::base64_encode("foobar") == "Zm9vYmFy");
  CHECK(scram::base64_decode("") == std::string());
  CHECK(scram::base64_decode("Zg==") == std::string("f"));
  CHECK(scram::base64_decode("Zm8=") == std::string("fo"));
  CHECK(scram::base64_decode("Zm9vYmFy") == std::string("foobar"));
  CHECK(scram::base64_encode(std::string("\x00\xff\xfe", 3)) == "AP/+");
}

TEST_CASE("base64 round-trips every byte value at every length up to 70", "[protocol][scram]") {
  std::string bytes;
  for (int i = 0; i < 70; ++i) {
    auto decoded = scram::base64_decode(scram::base64_encode(bytes));
    REQUIRE(decoded.has_value());
    CHECK(*decoded == bytes);
    bytes += static_cast<char>((i * 97 + 255) & 0xff);
  }
  std::string all;
  for (int c = 0; c < 256; ++c) all += static_cast<char>(c);
  CHECK(scram::base64_decode(scram::base64_encode(all)) == all);
}

TEST_CASE("base64 rejects invalid input", "[protocol][scram]") {
  std::string_view bad = GENERATE(as<std::string_view>{},  //
                                  "Z", "Zg", "Zg=", "Zg===", "====", "=Zg=", "Z=g=", "Zm=v", "Zg==Zg==",
                                  "Zm9*", "Zm9v\n", "Zm 9v", "Zm9-", "Zm9_");
  CHECK_FALSE(scram::base64_decode(bad).has_value());
}

TEST_CASE("random_bytes returns the requested number of distinct-looking bytes", "[protocol][scram]") {
  CHECK(scram::random_bytes(0).empty());
  std::set<std::string> seen;
  for (int i = 0; i < 8; ++i) {
    std::string bytes = scram::random_bytes(32);
    CHECK(bytes.size() == 32);
    seen.insert(bytes);
  }
  CHECK(seen.size() == 8);
}

TEST_CASE("random_fill serves small requests from its reserve without repeating bytes", "[protocol][scram]") {
  // 8-byte draws (cancel keys) across several refills of the 1 KiB reserve never repeat, and requests
  // larger than the reserve's quarter come straight from OpenSSL.
  std::set<std::uint64_t> keys;
  for (int i = 0; i < 1000; ++i) {
    std::uint64_t key = 0;
    scram::random_fill(reinterpret_cast<std::uint8_t*>(&key), sizeof key);
    keys.insert(key);
  }
  CHECK(keys.size() == 1000);
  std::string big = scram::random_bytes(5000);
  REQUIRE(big.size() == 5000);
  CHECK(std::count(big.begin(), big.end(), '\0') < 100);  // about 20 expected
}

TEST_CASE("scram handles empty passwords, user names and secrets", "[protocol][scram]") {
  // Python: hashlib.pbkdf2_hmac("sha256", b"", b"salt", 1) through the RFC 5802 §3 derivations.
  CHECK(scram::format_verifier(scram::make_verifier(std::string_view{}, "salt", 1)) ==
        "SCRAM-SHA-256$1:c2FsdA==$ZLuasIkXZj0o2fqXcPLYzzpuBYpt3tJtvx/2hUNTwXo=:"
        "F4IbwS68ORUj5EQrkiAz/2EVcQ4SbxB346aV8BbbDbk=");
  // Python: base64(hmac.new(b"", b"\0StoredKey", "sha256").digest()).
  scram::Verifier mock = scram::mock_verifier(std::string_view{}, std::string_view{});
  std::string stored_key(mock.stored_key.begin(), mock.stored_key.end());
  CHECK(scram::base64_encode(stored_key) == "hmeSgJBWQzpaWT+wWlNR/M7ef977fF/iwWBJSfpjYC4=");
  auto outcome = run_exchange(test_verifier(""), "");
  CHECK_FALSE(outcome.server_error.has_value());
  CHECK(outcome.client_verified_server);
}

TEST_CASE("scram accepts a verifier that Postgres itself produced", "[protocol][scram]") {
  // pg_authid.rolpassword after "CREATE ROLE alice PASSWORD 'pencil'" on PostgreSQL 15.
  constexpr std::string_view kPostgresVerifier =
      "SCRAM-SHA-256$4096:49yEKPwqnvPoIdsWRoyjnA==$CHFtY/zgVLMBDCqz1ycFrLV/8naqFGtNOGR59I0c1BI=:"
      "NJaZKJUGlJfbCZG8jNv5cIS8xS0UxTFxmqt5xCerSG4=";
  auto verifier = scram::parse_verifier(kPostgresVerifier);
  REQUIRE(verifier.has_value());
  CHECK(scram::format_verifier(scram::make_verifier("pencil", verifier->salt, verifier->iterations)) ==
        kPostgresVerifier);
  CHECK(run_exchange(*verifier, "pencil").client_verified_server);
  CHECK(run_exchange(*verifier, "Pencil").server_error->sqlstate == "28P01");
}

namespace {

std::string hex(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += kHex[c >> 4];
    out += kHex[c & 0x0f];
  }
  return out;
}

}  // namespace

TEST_CASE("digest SHA-256 and HMAC-SHA-256 match FIPS 180-2 and RFC 4231, in parts and repeated", "[protocol][scram]") {
  namespace digest = pgsluice::protocol::digest;
  for (int round = 0; round < 3; ++round) {  // the thread's context is reused: every round the same
    CHECK(hex(digest::view_of(digest::sha256({"abc"}))) ==
          "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(hex(digest::view_of(digest::sha256({"a", "", "bc"}))) ==
          "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    // RFC 4231 test case 2, the message given in two parts.
    CHECK(hex(digest::view_of(digest::hmac_sha256("Jefe", {"what do ya want ", "for nothing?"}))) ==
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    // Test case 6: a key longer than the block is hashed first.
    CHECK(hex(digest::view_of(digest::hmac_sha256(std::string(131, '\xaa'),
                                                  {"Test Using Larger Than Block-Size Key - Hash Key First"}))) ==
          "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    CHECK(hex(digest::view_of(digest::hmac_sha256("", {}))) ==
          "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
    const auto md5 = digest::md5({"ab", "c"});
    CHECK(hex(std::string_view(reinterpret_cast<const char*>(md5.data()), md5.size())) ==
          "900150983cd24fb0d6963f7d28e17f72");
  }
}
