// SCRAM-SHA-256 (RFC 5802 §3, §5, §7; RFC 7677) as Postgres speaks it (protocol docs §55.3
// "SASL Authentication", and src/backend/libpq/auth-scram.c for the server's exact rules).
#include "pgsluice/protocol/scram.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <cctype>
#include <charconv>
#include <limits>
#include <stdexcept>
#include <vector>

#include "pgsluice/protocol/digest.hpp"

namespace pgsluice::protocol::scram {
namespace {

using Key = std::array<std::uint8_t, 32>;

constexpr std::string_view kAuthFailed = "password authentication failed";
// 18 random bytes give a 24-character base64 nonce with no padding, the size Postgres uses
// (SCRAM_RAW_NONCE_LEN).
constexpr std::size_t kRawNonceLength = 18;
// Postgres's SCRAM_DEFAULT_SALT_LEN.
constexpr std::size_t kSaltLength = 16;

ProtocolError auth_failed() { return ProtocolError{"28P01", std::string(kAuthFailed)}; }
ProtocolError malformed(std::string_view what) {
  return protocol_violation("malformed SCRAM message: " + std::string(what));
}

// OpenSSL 3's HMAC() fails on a null key pointer even with length 0, and a default-constructed
// string_view has one; point empty input at a real (unread) byte instead.
const unsigned char* bytes_of(std::string_view text) {
  static constexpr unsigned char kEmpty = 0;
  return text.empty() ? &kEmpty : reinterpret_cast<const unsigned char*>(text.data());
}
std::string_view view_of(const Key& key) {
  return {reinterpret_cast<const char*>(key.data()), key.size()};
}

Key hmac_sha256(std::string_view key, std::string_view data) { return digest::hmac_sha256(key, {data}); }

Key sha256(const Key& data) { return digest::sha256({view_of(data)}); }

// Hi(password, salt, i) of RFC 5802 §2.2 is PBKDF2 with HMAC-SHA-256 and a 32-byte output.
//
// RFC 5802 asks for SASLprep of the password first. Postgres applies it and falls back to the raw
// bytes when the password is not valid UTF-8 or contains prohibited characters; for ASCII (and
// already NFKC-normalised UTF-8 without mapped characters) SASLprep is the identity, so using the
// bytes as they are agrees with Postgres for every password we expect in a YAML file.
Key salted_password(std::string_view password, std::string_view salt, int iterations) {
  Key out{};
  if (PKCS5_PBKDF2_HMAC(reinterpret_cast<const char*>(bytes_of(password)), static_cast<int>(password.size()),
                        bytes_of(salt), static_cast<int>(salt.size()), iterations, EVP_sha256(),
                        static_cast<int>(out.size()), out.data()) != 1) {
    throw std::runtime_error("OpenSSL PBKDF2-HMAC-SHA-256 failed");
  }
  return out;
}

Key xor_keys(const Key& a, const Key& b) {
  Key out{};
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::uint8_t>(a[i] ^ b[i]);
  return out;
}

std::optional<Key> decode_key(std::string_view text) {
  auto bytes = base64_decode(text);
  if (!bytes || bytes->size() != Key{}.size()) return std::nullopt;
  Key key{};
  std::copy(bytes->begin(), bytes->end(), key.begin());
  return key;
}

std::optional<int> parse_positive_int(std::string_view text) {
  int value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size() || value <= 0) return std::nullopt;
  return value;
}

// Messages are comma-separated "x=value" attributes (RFC 5802 §7). Values never contain ',':
// names escape it as "=2C", nonces exclude it, everything else is base64 or digits.
std::vector<std::string_view> split_attributes(std::string_view text) {
  std::vector<std::string_view> parts;
  parts.reserve(4);  // a client's messages have 3 or 4
  for (;;) {
    auto comma = text.find(',');
    parts.push_back(text.substr(0, comma));
    if (comma == std::string_view::npos) return parts;
    text.remove_prefix(comma + 1);
  }
}

// The value of attribute `name` ("r" in "r=abc"), or nothing if `attribute` is another one.
std::optional<std::string_view> attribute_value(std::string_view attribute, char name) {
  if (attribute.size() < 2 || attribute[0] != name || attribute[1] != '=') return std::nullopt;
  return attribute.substr(2);
}

// RFC 5802 §7: printable = %x21-2B / %x2D-7E (visible ASCII except ',').
bool is_printable_nonce(std::string_view nonce) {
  return !nonce.empty() && std::ranges::all_of(nonce, [](char c) { return c >= 0x21 && c <= 0x7e && c != ','; });
}

// RFC 5802 §5.1: in a saslname ',' and '=' are written "=2C" and "=3D".
std::string escape_saslname(std::string_view name) {
  std::string out;
  for (char c : name) {
    if (c == ',') {
      out += "=2C";
    } else if (c == '=') {
      out += "=3D";
    } else {
      out += c;
    }
  }
  return out;
}

std::string random_nonce() { return base64_encode(random_bytes(kRawNonceLength)); }

constexpr std::string_view kBase64Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

}  // namespace

// ---- base64 and randomness ----

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    std::uint32_t group = (std::uint32_t{static_cast<unsigned char>(bytes[i])} << 16) |
                          (std::uint32_t{static_cast<unsigned char>(bytes[i + 1])} << 8) |
                          std::uint32_t{static_cast<unsigned char>(bytes[i + 2])};
    out += kBase64Alphabet[(group >> 18) & 0x3f];
    out += kBase64Alphabet[(group >> 12) & 0x3f];
    out += kBase64Alphabet[(group >> 6) & 0x3f];
    out += kBase64Alphabet[group & 0x3f];
  }
  std::size_t rest = bytes.size() - i;
  if (rest > 0) {
    std::uint32_t group = std::uint32_t{static_cast<unsigned char>(bytes[i])} << 16;
    if (rest == 2) group |= std::uint32_t{static_cast<unsigned char>(bytes[i + 1])} << 8;
    out += kBase64Alphabet[(group >> 18) & 0x3f];
    out += kBase64Alphabet[(group >> 12) & 0x3f];
    out += rest == 2 ? kBase64Alphabet[(group >> 6) & 0x3f] : '=';
    out += '=';
  }
  return out;
}

// Strict: a multiple of four characters, '=' only as one or two final characters, no whitespace.
// Every encoder a Postgres client uses produces exactly that, and anything else in a SCRAM message
// is a protocol error rather than something to guess at.
std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::size_t padding = 0;
  if (!text.empty() && text.back() == '=') padding = text[text.size() - 2] == '=' ? 2 : 1;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    bool last = i + 4 == text.size();
    std::uint32_t group = 0;
    for (std::size_t j = 0; j < 4; ++j) {
      char c = text[i + j];
      int value = 0;
      if (last && j >= 4 - padding) {
        value = 0;  // checked to be '=' by the padding count above
      } else {
        value = base64_value(c);
        if (value < 0) return std::nullopt;
      }
      group = (group << 6) | static_cast<std::uint32_t>(value);
    }
    out += static_cast<char>((group >> 16) & 0xff);
    if (!last || padding < 2) out += static_cast<char>((group >> 8) & 0xff);
    if (!last || padding < 1) out += static_cast<char>(group & 0xff);
  }
  return out;
}

void random_fill(std::uint8_t* out, std::size_t count) {
  constexpr std::size_t kReserve = 1024;
  struct Reserve {
    std::array<std::uint8_t, kReserve> bytes{};
    std::size_t next = kReserve;  // bytes before next are handed out (and wiped)
    ~Reserve() { OPENSSL_cleanse(bytes.data(), bytes.size()); }
  };
  thread_local Reserve reserve;
  auto draw = [](std::uint8_t* to, std::size_t n) {
    if (n > static_cast<std::size_t>(std::numeric_limits<int>::max()) || RAND_bytes(to, static_cast<int>(n)) != 1) {
      throw std::runtime_error("OpenSSL RAND_bytes failed");
    }
  };
  if (count > kReserve / 4) {
    draw(out, count);
    return;
  }
  if (kReserve - reserve.next < count) {
    draw(reserve.bytes.data(), kReserve);
    reserve.next = 0;
  }
  std::memcpy(out, reserve.bytes.data() + reserve.next, count);
  OPENSSL_cleanse(reserve.bytes.data() + reserve.next, count);
  reserve.next += count;
}

std::string random_bytes(std::size_t count) {
  std::string out(count, '\0');
  random_fill(reinterpret_cast<std::uint8_t*>(out.data()), count);
  return out;
}

// ---- verifiers ----

std::optional<Verifier> parse_verifier(std::string_view text) {
  // "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>", the pg_authid.rolpassword format.
  constexpr std::string_view kPrefix = "SCRAM-SHA-256$";
  if (!text.starts_with(kPrefix)) return std::nullopt;
  text.remove_prefix(kPrefix.size());
  auto dollar = text.find('$');
  if (dollar == std::string_view::npos) return std::nullopt;
  std::string_view iterations_and_salt = text.substr(0, dollar);
  std::string_view keys = text.substr(dollar + 1);
  auto colon1 = iterations_and_salt.find(':');
  auto colon2 = keys.find(':');
  if (colon1 == std::string_view::npos || colon2 == std::string_view::npos) return std::nullopt;

  auto iterations = parse_positive_int(iterations_and_salt.substr(0, colon1));
  auto salt = base64_decode(iterations_and_salt.substr(colon1 + 1));
  auto stored_key = decode_key(keys.substr(0, colon2));
  auto server_key = decode_key(keys.substr(colon2 + 1));
  if (!iterations || !salt || salt->empty() || !stored_key || !server_key) return std::nullopt;
  return Verifier{
      .iterations = *iterations, .salt = std::move(*salt), .stored_key = *stored_key, .server_key = *server_key};
}

std::string format_verifier(const Verifier& verifier) {
  return std::string(kMechanism) + "$" + std::to_string(verifier.iterations) + ":" + base64_encode(verifier.salt) +
         "$" + base64_encode(view_of(verifier.stored_key)) + ":" + base64_encode(view_of(verifier.server_key));
}

Verifier make_verifier(std::string_view password, std::string_view salt, int iterations) {
  if (iterations <= 0) throw std::invalid_argument("SCRAM iteration count must be positive");
  // RFC 5802 §3: ClientKey = HMAC(SaltedPassword, "Client Key"), StoredKey = H(ClientKey),
  // ServerKey = HMAC(SaltedPassword, "Server Key").
  Key salted = salted_password(password, salt, iterations);
  Verifier verifier{.iterations = iterations,
                    .salt = std::string(salt),
                    .stored_key = sha256(hmac_sha256(view_of(salted), "Client Key")),
                    .server_key = hmac_sha256(view_of(salted), "Server Key")};
  OPENSSL_cleanse(salted.data(), salted.size());
  return verifier;
}

Verifier make_verifier(std::string_view password) {
  return make_verifier(password, random_bytes(kSaltLength), kDefaultIterations);
}

Verifier mock_verifier(std::string_view user, std::string_view server_secret) {
  // Same salt and iteration count for the same user on every attempt, and the same shape as a real
  // verifier, so the server-first-message does not reveal whether the user exists. The keys are
  // HMAC outputs nobody knows a password for, so the exchange always fails at the proof check.
  // User names from the startup packet are C strings, so the "\0..." suffixes cannot collide with
  // another user's salt input.
  using namespace std::string_view_literals;
  Key salt = hmac_sha256(server_secret, user);
  std::string stored_input = std::string(user).append("\0StoredKey"sv);
  std::string server_input = std::string(user).append("\0ServerKey"sv);
  return Verifier{.iterations = kDefaultIterations,
                  .salt = std::string(view_of(salt).substr(0, kSaltLength)),
                  .stored_key = hmac_sha256(server_secret, stored_input),
                  .server_key = hmac_sha256(server_secret, server_input)};
}

// ---- pgsluice as the server ----

ServerExchange::ServerExchange(Verifier verifier, std::string nonce)
    : verifier_(std::move(verifier)), server_nonce_(nonce.empty() ? random_nonce() : std::move(nonce)) {}

Result<std::string> ServerExchange::handle_client_first(std::string_view client_first) {
  // Any error below, or this message arriving out of order, ends the exchange.
  const bool in_order = step_ == Step::kClientFirst;
  step_ = Step::kDone;
  if (!in_order) return protocol_violation("unexpected SCRAM client-first-message");

  // gs2-header = gs2-cbind-flag "," [authzid] ","  (RFC 5802 §7); gs2-cbind-flag is "p=" cb-name,
  // "n" (the client does not bind) or "y" (it could, but believes the server cannot).
  std::size_t flag_end = 1;
  if (client_first.starts_with("p=")) {
    if (!plus_) {
      return malformed(
          "the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel "
          "binding data");
    }
    flag_end = client_first.find(',');
    if (flag_end == std::string_view::npos) return malformed("expected ',' after the channel binding type");
    if (client_first.substr(2, flag_end - 2) != kChannelBindingType) {
      return protocol_violation("unsupported SCRAM channel-binding type \"" +
                                std::string(client_first.substr(2, flag_end - 2)) + "\"");
    }
  } else if (client_first.starts_with("n,") || client_first.starts_with("y,")) {
    if (plus_) {
      return malformed(
          "the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding "
          "data");
    }
    // Only a server that offered -PLUS must refuse "y" (RFC 5802 §6): the client was made to believe
    // there was none, or does not see this connection's TLS.
    if (client_first[0] == 'y' && offers_channel_binding()) {
      return protocol_violation(
          "SCRAM channel binding negotiation error: the client supports SCRAM channel binding but thinks the "
          "server does not; however, this server does support channel binding");
    }
  } else {
    return malformed("expected a gs2 header starting with \"n,\", \"y,\" or \"p=\"");
  }
  std::string_view rest = client_first.substr(flag_end + 1);
  if (rest.starts_with("a=")) {
    // Postgres rejects an authorization identity the same way (auth-scram.c).
    return ProtocolError{"0A000", "client uses SCRAM authorization identity, but it is not supported"};
  }
  if (!rest.starts_with(",")) return malformed("expected ',' after the gs2 channel binding flag");
  gs2_header_ = std::string(client_first.substr(0, flag_end + 2));
  std::string_view bare = rest.substr(1);

  auto attributes = split_attributes(bare);
  if (attribute_value(attributes[0], 'm')) {
    return ProtocolError{"0A000", "client requires an unsupported SCRAM extension"};
  }
  // The user name is ignored: Postgres clients send "n=" (or "n=*") because the role comes from
  // the startup packet (protocol docs §55.3).
  if (attributes.size() < 2 || !attribute_value(attributes[0], 'n')) {
    return malformed("expected the user name attribute \"n=\"");
  }
  auto client_nonce = attribute_value(attributes[1], 'r');
  if (!client_nonce) return malformed("expected the nonce attribute \"r=\"");
  if (!is_printable_nonce(*client_nonce)) return malformed("the client nonce is empty or not printable");
  // Extensions after the nonce are ignored, as Postgres does, but must have an attribute's form
  // (a letter and '='): Postgres rejects anything else after the nonce (read_any_attr).
  for (std::size_t i = 2; i < attributes.size(); ++i) {
    const auto& extension = attributes[i];
    if (extension.size() < 2 || !std::isalpha(static_cast<unsigned char>(extension[0])) || extension[1] != '=') {
      return malformed("expected an attribute after the nonce");
    }
  }

  client_first_bare_ = std::string(bare);
  combined_nonce_ = std::string(*client_nonce) + server_nonce_;
  server_first_ = "r=" + combined_nonce_ + ",s=" + base64_encode(verifier_.salt) +
                  ",i=" + std::to_string(verifier_.iterations);
  step_ = Step::kClientFinal;
  return server_first_;
}

Result<std::string> ServerExchange::handle_client_final(std::string_view client_final) {
  // Any error below, or this message arriving out of order, ends the exchange.
  const bool in_order = step_ == Step::kClientFinal;
  step_ = Step::kDone;
  if (!in_order) return protocol_violation("unexpected SCRAM client-final-message");

  // client-final-message = channel-binding "," nonce ["," extensions] "," proof  (RFC 5802 §7)
  auto attributes = split_attributes(client_final);
  if (attributes.size() < 3) return malformed("client-final-message needs c=, r= and p=");
  auto channel_binding = attribute_value(attributes[0], 'c');
  if (!channel_binding) return malformed("expected the channel binding attribute \"c=\"");
  auto nonce = attribute_value(attributes[1], 'r');
  if (!nonce) return malformed("expected the nonce attribute \"r=\"");
  auto proof_text = attribute_value(attributes.back(), 'p');
  if (!proof_text) return malformed("expected the proof attribute \"p=\" last");
  auto proof = decode_key(*proof_text);
  if (!proof) return malformed("the client proof is not 32 bytes of base64");

  // c= is the base64 of the gs2 header sent in the first message ("biws" for "n,,", "eSws" for
  // "y,,"), followed with channel binding by the connection's tls-server-end-point data: a client
  // that sees another certificate than pgsluice's (a man in the middle) cannot send it.
  auto binding = base64_decode(*channel_binding);
  const bool bound = binding && binding->size() == gs2_header_.size() + (plus_ ? end_point_.size() : 0) &&
                     binding->starts_with(gs2_header_) &&
                     (!plus_ || CRYPTO_memcmp(binding->data() + gs2_header_.size(), end_point_.data(),
                                              end_point_.size()) == 0);
  if (!bound) {
    return protocol_violation(plus_ ? "SCRAM channel binding check failed"
                                    : "SCRAM channel binding check failed: c= does not match the gs2 header");
  }
  if (*nonce != combined_nonce_) return auth_failed();

  // AuthMessage = client-first-message-bare "," server-first-message "," client-final-message-without-proof
  std::string_view without_proof =
      client_final.substr(0, client_final.size() - attributes.back().size() - 1);
  const std::initializer_list<std::string_view> auth_message{client_first_bare_, ",", server_first_, ",",
                                                              without_proof};

  // RFC 5802 §3: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); the client knows the
  // password iff H(ClientKey) == StoredKey. Constant-time so the comparison leaks nothing.
  Key client_signature = digest::hmac_sha256(view_of(verifier_.stored_key), auth_message);
  Key client_key = xor_keys(*proof, client_signature);
  Key computed_stored_key = sha256(client_key);
  OPENSSL_cleanse(client_key.data(), client_key.size());
  if (CRYPTO_memcmp(computed_stored_key.data(), verifier_.stored_key.data(), computed_stored_key.size()) != 0) {
    return auth_failed();
  }
  Key server_signature = digest::hmac_sha256(view_of(verifier_.server_key), auth_message);
  return "v=" + base64_encode(view_of(server_signature));
}

// ---- pgsluice as the client ----

ClientExchange::ClientExchange(std::string password, std::string nonce, std::string user)
    : password_(std::move(password)),
      user_(std::move(user)),
      client_nonce_(nonce.empty() ? random_nonce() : std::move(nonce)) {}

void ClientExchange::bind_channel(std::string end_point) {
  gs2_header_ = "p=" + std::string(kChannelBindingType) + ",,";
  end_point_ = std::move(end_point);
}

std::string ClientExchange::client_first() {
  client_first_bare_ = "n=" + escape_saslname(user_) + ",r=" + client_nonce_;
  step_ = Step::kServerFirst;
  return gs2_header_ + client_first_bare_;
}

Result<std::string> ClientExchange::handle_server_first(std::string_view server_first) {
  // Any error below, or this message arriving out of order, ends the exchange.
  const bool in_order = step_ == Step::kServerFirst;
  step_ = Step::kDone;
  if (!in_order) return protocol_violation("unexpected SCRAM server-first-message");

  // server-first-message = [reserved-mext ","] nonce "," salt "," iteration-count ["," extensions]
  auto attributes = split_attributes(server_first);
  if (attribute_value(attributes[0], 'm')) return malformed("the server requires an unsupported SCRAM extension");
  if (attributes.size() < 3) return malformed("server-first-message needs r=, s= and i=");
  auto nonce = attribute_value(attributes[0], 'r');
  auto salt_text = attribute_value(attributes[1], 's');
  auto iterations_text = attribute_value(attributes[2], 'i');
  if (!nonce || !salt_text || !iterations_text) return malformed("expected r=, s= and i= in server-first-message");
  // The server's nonce must extend ours (RFC 5802 §5.1); libpq also rejects one that does not.
  if (nonce->size() <= client_nonce_.size() || !nonce->starts_with(client_nonce_) || !is_printable_nonce(*nonce)) {
    return protocol_violation("SCRAM server nonce does not extend the client nonce");
  }
  auto salt = base64_decode(*salt_text);
  if (!salt || salt->empty()) return malformed("the salt is not valid base64");
  auto iterations = parse_positive_int(*iterations_text);
  if (!iterations) return malformed("the iteration count is not a positive integer");
  if (*iterations > kMaxServerIterations) {
    return protocol_violation("the server asks for " + std::to_string(*iterations) +
                              " SCRAM iterations; pgsluice computes at most " +
                              std::to_string(kMaxServerIterations));
  }

  Key salted = salted_password(password_, *salt, *iterations);
  Key client_key = hmac_sha256(view_of(salted), "Client Key");
  Key server_key = hmac_sha256(view_of(salted), "Server Key");
  Key stored_key = sha256(client_key);
  OPENSSL_cleanse(salted.data(), salted.size());

  // c= is the gs2 header and the channel binding data ("biws" is base64("n,,"): no binding, no authzid).
  std::string without_proof = "c=" + base64_encode(gs2_header_ + end_point_) + ",r=" + std::string(*nonce);
  std::string auth_message = client_first_bare_ + "," + std::string(server_first) + "," + without_proof;
  Key proof = xor_keys(client_key, hmac_sha256(view_of(stored_key), auth_message));
  OPENSSL_cleanse(client_key.data(), client_key.size());
  expected_server_signature_ = hmac_sha256(view_of(server_key), auth_message);
  step_ = Step::kServerFinal;
  return without_proof + ",p=" + base64_encode(view_of(proof));
}

Status ClientExchange::verify_server_final(std::string_view server_final) {
  // Any error below, or this message arriving out of order, ends the exchange.
  const bool in_order = step_ == Step::kServerFinal;
  step_ = Step::kDone;
  if (!in_order) return protocol_violation("unexpected SCRAM server-final-message");

  // server-final-message = (server-error / verifier) ["," extensions]
  auto attributes = split_attributes(server_final);
  if (auto error = attribute_value(attributes[0], 'e')) {
    return ProtocolError{"28000", "SCRAM authentication failed: the server sent error \"" + std::string(*error) + "\""};
  }
  auto signature_text = attribute_value(attributes[0], 'v');
  if (!signature_text) return malformed("expected \"v=\" or \"e=\" in server-final-message");
  auto signature = decode_key(*signature_text);
  if (!signature) return malformed("the server signature is not 32 bytes of base64");
  // A server that cannot produce this signature does not hold our verifier (RFC 5802 §9).
  if (CRYPTO_memcmp(signature->data(), expected_server_signature_.data(), signature->size()) != 0) {
    return ProtocolError{"28000", "SCRAM server signature is wrong: the server does not know the password"};
  }
  return Ok{};
}

}  // namespace pgsluice::protocol::scram
