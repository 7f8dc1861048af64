#pragma once
// MD5 password authentication (protocol docs §55.2, AuthenticationMD5Password):
// the client sends "md5" + hex(md5(hex(md5(password + user)) + salt)).
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace pgsluice::protocol::md5 {

using Salt = std::array<std::uint8_t, 4>;

// The stored form Postgres keeps in pg_authid: "md5" + hex(md5(password + user)).
std::string stored_hash(std::string_view user, std::string_view password);
// The response to AuthenticationMD5Password from a stored hash ("md5..." 35 chars).
std::string salted_response_from_hash(std::string_view stored, const Salt& salt);
// The response to AuthenticationMD5Password from a plain password.
std::string salted_response(std::string_view user, std::string_view password, const Salt& salt);
// Whether a client's PasswordMessage text is the salted response to the stored hash: compared in
// constant time, nothing allocated.
bool response_matches(std::string_view stored, const Salt& salt, std::string_view response);
// Lower-case hex of md5(data).
std::string hex_digest(std::string_view data);

}  // namespace pgsluice::protocol::md5
