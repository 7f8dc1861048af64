#pragma once
// SCRAM-SHA-256 (RFC 5802, RFC 7677) as Postgres uses it (protocol docs §55.3 "SASL Authentication"):
// empty authzid, the user name is taken from the startup packet ("n=" is empty). Over TLS, channel
// binding: SCRAM-SHA-256-PLUS with "tls-server-end-point" (RFC 5929: a hash of the server's
// certificate), which a man in the middle holding another certificate cannot answer.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "pgsluice/protocol/result.hpp"

namespace pgsluice::protocol::scram {

inline constexpr std::string_view kMechanism = "SCRAM-SHA-256";
inline constexpr std::string_view kMechanismPlus = "SCRAM-SHA-256-PLUS";
inline constexpr std::string_view kChannelBindingType = "tls-server-end-point";
inline constexpr int kDefaultIterations = 4096;
// The most iterations pgsluice computes for a server that asks (its login runs on a worker thread:
// a hostile or misconfigured server asking for 2^31 would hold the worker for hours). About half a
// second of one core; Postgres's default is 4096.
inline constexpr int kMaxServerIterations = 1'000'000;

// What a server stores instead of a password: "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>".
struct Verifier {
  int iterations = kDefaultIterations;
  std::string salt;  // raw bytes
  std::array<std::uint8_t, 32> stored_key{};
  std::array<std::uint8_t, 32> server_key{};
};

std::optional<Verifier> parse_verifier(std::string_view text);
std::string format_verifier(const Verifier& verifier);
Verifier make_verifier(std::string_view password, std::string_view salt, int iterations = kDefaultIterations);
// A fresh random 16-byte salt.
Verifier make_verifier(std::string_view password);
// A deterministic verifier for a user that does not exist, so that an unknown user goes through the
// same exchange as a known one and fails at the same step (Postgres's scram_mock_salt idea).
Verifier mock_verifier(std::string_view user, std::string_view server_secret);

// pgsluice as the SCRAM server, authenticating a client.
class ServerExchange {
 public:
  // `nonce` is the server's nonce part; empty = random. Tests pass a fixed one.
  explicit ServerExchange(Verifier verifier, std::string nonce = {});
  // Over TLS, before the client's first message: the connection's tls-server-end-point data (the
  // hash of pgsluice's certificate), so SCRAM-SHA-256-PLUS is offered; `plus` says the client chose
  // it. A client that chose SCRAM-SHA-256 with "y" (it could bind, but believes the server cannot)
  // is refused, as a downgrade (RFC 5802 §6).
  void offer_channel_binding(std::string end_point) { end_point_ = std::move(end_point); }
  bool offers_channel_binding() const { return !end_point_.empty(); }
  void select(bool plus) { plus_ = plus; }
  // client-first-message -> server-first-message. Errors are 08P01 (malformed, or a channel binding
  // flag that disagrees with the mechanism chosen) or 0A000 (authzid or a mandatory extension, as
  // Postgres answers).
  Result<std::string> handle_client_first(std::string_view client_first);
  // client-final-message -> server-final-message ("v=..."). A wrong proof or nonce is 28P01
  // "password authentication failed"; malformed input is 08P01.
  Result<std::string> handle_client_final(std::string_view client_final);

 private:
  enum class Step : std::uint8_t { kClientFirst, kClientFinal, kDone };
  Step step_ = Step::kClientFirst;
  Verifier verifier_;
  std::string gs2_header_;
  std::string end_point_;  // tls-server-end-point data; empty: no channel binding offered
  bool plus_ = false;      // the client chose SCRAM-SHA-256-PLUS
  std::string server_nonce_;
  std::string client_first_bare_;
  std::string server_first_;
  std::string combined_nonce_;
};

// pgsluice as the SCRAM client, authenticating to Postgres.
class ClientExchange {
 public:
  // `nonce` is the client nonce; empty = random. Tests pass a fixed one. `user` goes into "n=";
  // Postgres ignores it (the user comes from the startup packet), so only tests set it, to replay
  // the RFC 7677 example exactly.
  explicit ClientExchange(std::string password, std::string nonce = {}, std::string user = {});
  // Before client_first(), over TLS: bind_channel with the server certificate's tls-server-end-point
  // data when the server offered SCRAM-SHA-256-PLUS (the caller selects that mechanism); could_bind
  // when it did not ("y": a server that can bind takes it as a downgrade, RFC 5802 §6).
  void bind_channel(std::string end_point);
  void could_bind() { gs2_header_ = "y,,"; }
  // client-first-message, "n,,n=,r=<nonce>" (or "y,,", "p=tls-server-end-point,,").
  std::string client_first();
  // server-first-message -> client-final-message. Malformed input or a bad nonce is 08P01.
  Result<std::string> handle_server_first(std::string_view server_first);
  // Checks the server signature in server-final-message: 08P01 if malformed, 28000 if the server
  // sent "e=..." or a signature that proves it does not know the password.
  Status verify_server_final(std::string_view server_final);

 private:
  enum class Step : std::uint8_t { kClientFirst, kServerFirst, kServerFinal, kDone };
  Step step_ = Step::kClientFirst;
  std::string password_;
  std::string user_;
  std::string gs2_header_ = "n,,";
  std::string end_point_;  // channel binding data, after the gs2 header in c=
  std::string client_nonce_;
  std::string client_first_bare_;
  std::array<std::uint8_t, 32> expected_server_signature_{};
};

// Base64 (standard alphabet, with padding), used by SCRAM and the verifier format.
std::string base64_encode(std::string_view bytes);
std::optional<std::string> base64_decode(std::string_view text);
// CSPRNG bytes: OpenSSL's RAND_bytes, drawn 1 KiB at a time into a per-thread reserve (OpenSSL 3
// costs a few microseconds a call, which logins paid twice: the salt or nonce and the cancel key).
// pgsluice never forks, so no two processes can hand out the same reserve.
std::string random_bytes(std::size_t count);
void random_fill(std::uint8_t* out, std::size_t count);

}  // namespace pgsluice::protocol::scram
