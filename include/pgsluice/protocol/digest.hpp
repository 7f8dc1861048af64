#pragma once
// SHA-256, MD5 and HMAC-SHA-256 for the login path, without an allocation or an algorithm lookup
// per call. OpenSSL 3's one-shot calls (HMAC(), EVP_Digest() with EVP_sha256()) fetch the algorithm
// by name from the provider and allocate a fresh context each time: a SCRAM login paid about 30
// mallocs and the name lookups under them. Here the algorithms are fetched once per process and
// each thread keeps one digest context, reset for every use.
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string_view>

namespace pgsluice::protocol::digest {

using Sha256 = std::array<std::uint8_t, 32>;
using Md5 = std::array<std::uint8_t, 16>;

// The digest of the parts one after the other. Throw std::runtime_error when OpenSSL cannot
// provide the algorithm (MD5 under a FIPS-only provider): a deployment problem, not bad input.
Sha256 sha256(std::initializer_list<std::string_view> parts);
Md5 md5(std::initializer_list<std::string_view> parts);
// HMAC-SHA-256 (RFC 2104) of the parts one after the other, with `key` of any length.
Sha256 hmac_sha256(std::string_view key, std::initializer_list<std::string_view> parts);

inline std::string_view view_of(const Sha256& bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

}  // namespace pgsluice::protocol::digest
