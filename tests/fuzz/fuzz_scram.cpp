// libFuzzer target: SCRAM-SHA-256 (RFC 5802, RFC 7677) on both sides. The input is two messages on
// two lines: pgsluice as the server reads them as client-first and client-final, and as the client as
// server-first and server-final. Both sides use the RFC 7677 example's user, password, salt and
// nonces, so the example's messages (the seed corpus) complete both exchanges and the fuzzer starts
// from the success path; the server side also runs with channel binding offered, and chosen. The
// whole input is also read as a stored verifier and as base64.
// None may crash, read out of bounds or allocate by an unchecked length; a verifier or base64 text
// pgsluice writes must read back as what it wrote.
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "pgsluice/protocol/scram.hpp"

using namespace pgsluice::protocol;

namespace {

// RFC 7677 §3.
constexpr std::string_view kPassword = "pencil";
constexpr std::string_view kSalt = "W22ZaJ0SNY7soEsUEjb6gQ==";
constexpr std::string_view kClientNonce = "rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kServerNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";

// The client derives its keys with as many PBKDF2 iterations as server-first's "i=" asks for, and
// pgsluice puts no bound on it (nor does libpq): 2^31 - 1 would take this target minutes per input.
// Inputs that ask for more than the example's 4096 are left out, so that a run spends its time on
// parsing rather than hashing.
constexpr int kMaxIterations = 4096;

bool asks_for_too_many_iterations(std::string_view server_first) {
  // "r=...,s=...,i=..." : the third attribute, as ClientExchange reads it.
  for (int skip = 0; skip < 2; ++skip) {
    const auto comma = server_first.find(',');
    if (comma == std::string_view::npos) return false;
    server_first.remove_prefix(comma + 1);
  }
  if (!server_first.starts_with("i=")) return false;
  const auto digits = server_first.substr(2, server_first.find(',') - 2);
  long long iterations = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), iterations);
  return ec == std::errc::result_out_of_range || (ec == std::errc{} && iterations > kMaxIterations);
}

// Channel binding on offer or not (plain text / TLS), and SCRAM-SHA-256-PLUS chosen or not.
enum class Binding { none, offered, chosen };

void run_server(std::string_view client_first, std::string_view client_final, bool has_final,
                Binding binding) {
  static const auto verifier = scram::make_verifier(kPassword, *scram::base64_decode(kSalt), 4096);
  scram::ServerExchange exchange(verifier, std::string(kServerNonce));
  if (binding != Binding::none) exchange.offer_channel_binding(std::string(32, '\x5a'));
  exchange.select(binding == Binding::chosen);
  auto server_first = exchange.handle_client_first(client_first);
  if (!server_first) {
    FUZZ_CHECK(!server_first.error().sqlstate.empty());
    return;
  }
  FUZZ_CHECK(server_first->starts_with("r="));
  if (!has_final) return;
  auto server_final = exchange.handle_client_final(client_final);
  if (server_final) FUZZ_CHECK(server_final->starts_with("v=") && server_final->size() == 46);
  // Out of order: always refused.
  FUZZ_CHECK(!exchange.handle_client_final(client_final).ok());
}

void run_client(std::string_view server_first, std::string_view server_final, bool has_final) {
  if (asks_for_too_many_iterations(server_first)) return;
  scram::ClientExchange exchange(std::string(kPassword), std::string(kClientNonce), "user");
  FUZZ_CHECK(exchange.client_first() == "n,,n=user,r=" + std::string(kClientNonce));
  auto client_final = exchange.handle_server_first(server_first);
  if (!client_final) return;
  FUZZ_CHECK(client_final->starts_with("c=biws,r=" + std::string(kClientNonce)));
  if (!has_final) return;
  (void)exchange.verify_server_final(server_final);
  FUZZ_CHECK(!exchange.verify_server_final(server_final).ok());
}

void check_verifier(std::string_view text) {
  auto verifier = scram::parse_verifier(text);
  if (!verifier) return;
  FUZZ_CHECK(verifier->iterations > 0 && !verifier->salt.empty());
  auto again = scram::parse_verifier(scram::format_verifier(*verifier));
  FUZZ_CHECK(again && again->iterations == verifier->iterations && again->salt == verifier->salt);
  FUZZ_CHECK(again->stored_key == verifier->stored_key && again->server_key == verifier->server_key);
}

void check_base64(std::string_view text) {
  if (auto decoded = scram::base64_decode(text)) FUZZ_CHECK(decoded->size() <= text.size() / 4 * 3);
  auto round_trip = scram::base64_decode(scram::base64_encode(text));
  FUZZ_CHECK(round_trip && *round_trip == text);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto newline = text.find('\n');
  const bool has_final = newline != std::string_view::npos;
  const auto first = text.substr(0, newline);
  const auto final = has_final ? text.substr(newline + 1) : std::string_view();
  for (auto binding : {Binding::none, Binding::offered, Binding::chosen})
    run_server(first, final, has_final, binding);
  run_client(first, final, has_final);
  check_verifier(text);
  check_base64(text);
  return 0;
}
