// See digest.hpp: fetched algorithms, one reusable context per thread.
#include "pgsluice/protocol/digest.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cstring>
#include <stdexcept>
#include <string>

namespace pgsluice::protocol::digest {
namespace {

// Fetched on first use and kept for the life of the process (an explicit fetch also spares
// EVP_DigestInit the implicit one that EVP_sha256() and EVP_md5() cost on every call).
const EVP_MD* algorithm(const char* name) {
  EVP_MD* fetched = EVP_MD_fetch(nullptr, name, nullptr);
  if (fetched == nullptr) {
    throw std::runtime_error(std::string("OpenSSL offers no ") + name +
                             (std::strcmp(name, "MD5") == 0 ? " (is MD5 disabled by a FIPS provider?)" : ""));
  }
  return fetched;
}

const EVP_MD* sha256_algorithm() {
  static const EVP_MD* const md = algorithm("SHA256");
  return md;
}

const EVP_MD* md5_algorithm() {
  static const EVP_MD* const md = algorithm("MD5");
  return md;
}

// The thread's context: EVP_DigestInit_ex2 resets it for each digest, and keeps the provider's
// state when the algorithm is the same as last time.
struct ThreadContext {
  EVP_MD_CTX* context = EVP_MD_CTX_new();
  ~ThreadContext() { EVP_MD_CTX_free(context); }
};

template <std::size_t N>
std::array<std::uint8_t, N> run(const EVP_MD* md, std::string_view first, std::initializer_list<std::string_view> parts) {
  thread_local ThreadContext thread;
  std::array<std::uint8_t, N> out{};
  unsigned int length = 0;
  bool ok = thread.context != nullptr && EVP_DigestInit_ex2(thread.context, md, nullptr) == 1 &&
            (first.empty() || EVP_DigestUpdate(thread.context, first.data(), first.size()) == 1);
  for (auto part : parts) {
    if (!ok) break;
    if (!part.empty()) ok = EVP_DigestUpdate(thread.context, part.data(), part.size()) == 1;
  }
  if (!ok || EVP_DigestFinal_ex(thread.context, out.data(), &length) != 1 || length != N) {
    throw std::runtime_error("OpenSSL digest failed");
  }
  return out;
}

}  // namespace

Sha256 sha256(std::initializer_list<std::string_view> parts) {
  return run<32>(sha256_algorithm(), {}, parts);
}

Md5 md5(std::initializer_list<std::string_view> parts) { return run<16>(md5_algorithm(), {}, parts); }

Sha256 hmac_sha256(std::string_view key, std::initializer_list<std::string_view> parts) {
  // H((K ^ opad) || H((K ^ ipad) || text)), K padded with zeros to the block size, or hashed first
  // when longer than a block (RFC 2104 §2).
  constexpr std::size_t kBlock = 64;
  std::array<std::uint8_t, kBlock> padded{};
  if (key.size() > kBlock) {
    const Sha256 hashed = sha256({key});
    std::memcpy(padded.data(), hashed.data(), hashed.size());
  } else if (!key.empty()) {
    std::memcpy(padded.data(), key.data(), key.size());
  }
  for (auto& byte : padded) byte ^= 0x36;
  const std::string_view pad(reinterpret_cast<const char*>(padded.data()), padded.size());
  const Sha256 inner = run<32>(sha256_algorithm(), pad, parts);
  for (auto& byte : padded) byte ^= 0x36 ^ 0x5c;
  const Sha256 out = run<32>(sha256_algorithm(), pad, {view_of(inner)});
  OPENSSL_cleanse(padded.data(), padded.size());
  return out;
}

}  // namespace pgsluice::protocol::digest
