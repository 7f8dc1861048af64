// MD5 password authentication (protocol docs §55.2 "AuthenticationMD5Password"; the stored form is
// described under pg_authid.rolpassword).
#include "pgsluice/protocol/md5.hpp"

#include <openssl/crypto.h>

#include <array>

#include "pgsluice/protocol/digest.hpp"

namespace pgsluice::protocol::md5 {
namespace {

constexpr std::string_view kPrefix = "md5";
using Hex = std::array<char, 32>;

// Throws std::runtime_error if MD5 is unavailable (a FIPS-only provider): a deployment problem,
// not a protocol error.
Hex hex_of(std::initializer_list<std::string_view> parts) {
  constexpr std::string_view kHex = "0123456789abcdef";
  const auto digest = digest::md5(parts);
  Hex out{};
  for (std::size_t i = 0; i < digest.size(); ++i) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 0x0f];
  }
  return out;
}

// The response hashes the 32 hex digits of the stored hash (without "md5") followed by the four
// raw salt bytes from AuthenticationMD5Password. A bare 32-digit hash is accepted as well.
Hex salted_hex(std::string_view stored, const Salt& salt) {
  if (stored.starts_with(kPrefix)) stored.remove_prefix(kPrefix.size());
  return hex_of({stored, std::string_view(reinterpret_cast<const char*>(salt.data()), salt.size())});
}

}  // namespace

std::string hex_digest(std::string_view data) {
  const Hex hex = hex_of({data});
  return std::string(hex.data(), hex.size());
}

std::string stored_hash(std::string_view user, std::string_view password) {
  // Postgres salts the stored hash with the role name: md5(password || user).
  const Hex hex = hex_of({password, user});
  return std::string(kPrefix).append(hex.data(), hex.size());
}

std::string salted_response_from_hash(std::string_view stored, const Salt& salt) {
  const Hex hex = salted_hex(stored, salt);
  return std::string(kPrefix).append(hex.data(), hex.size());
}

bool response_matches(std::string_view stored, const Salt& salt, std::string_view response) {
  const Hex hex = salted_hex(stored, salt);
  if (response.size() != kPrefix.size() + hex.size() || !response.starts_with(kPrefix)) return false;
  return CRYPTO_memcmp(response.data() + kPrefix.size(), hex.data(), hex.size()) == 0;
}

std::string salted_response(std::string_view user, std::string_view password, const Salt& salt) {
  return salted_response_from_hash(stored_hash(user, password), salt);
}

}  // namespace pgsluice::protocol::md5
