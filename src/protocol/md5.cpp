// MD5 password authentication (protocol docs §55.2 "AuthenticationMD5Password"; the stored form is
// described under pg_authid.rolpassword).
#include "pgsluice/protocol/md5.hpp"

#include <openssl/evp.h>

#include <stdexcept>

namespace pgsluice::protocol::md5 {
namespace {

constexpr std::string_view kPrefix = "md5";

}  // namespace

std::string hex_digest(std::string_view data) {
  // EVP rather than the MD5() one-shot, which OpenSSL 3 deprecates. EVP_Digest fails only if MD5 is
  // unavailable (a FIPS-only provider): a deployment problem, not a protocol error.
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  if (EVP_Digest(data.data(), data.size(), digest.data(), &length, EVP_md5(), nullptr) != 1 || length != 16) {
    throw std::runtime_error("OpenSSL MD5 failed (is MD5 disabled by a FIPS provider?)");
  }
  constexpr std::string_view kHex = "0123456789abcdef";
  std::string out;
  out.reserve(std::size_t{length} * 2);
  for (unsigned int i = 0; i < length; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 0x0f];
  }
  return out;
}

std::string stored_hash(std::string_view user, std::string_view password) {
  // Postgres salts the stored hash with the role name: md5(password || user).
  std::string input(password);
  input += user;
  return std::string(kPrefix) + hex_digest(input);
}

std::string salted_response_from_hash(std::string_view stored, const Salt& salt) {
  // The response hashes the 32 hex digits of the stored hash (without "md5") followed by the four
  // raw salt bytes from AuthenticationMD5Password. A bare 32-digit hash is accepted as well.
  if (stored.starts_with(kPrefix)) stored.remove_prefix(kPrefix.size());
  std::string input(stored);
  input.append(reinterpret_cast<const char*>(salt.data()), salt.size());
  return std::string(kPrefix) + hex_digest(input);
}

std::string salted_response(std::string_view user, std::string_view password, const Salt& salt) {
  return salted_response_from_hash(stored_hash(user, password), salt);
}

}  // namespace pgsluice::protocol::md5
