// MD5 password authentication. Expected values were computed independently with Python's hashlib:
//   "md5" + md5(b"secretpostgres").hexdigest()
//   "md5" + md5(b"53f48b7c4b76a86ce72276c5755f217d" + salt).hexdigest()
#include <catch.hpp>

#include "pgsluice/protocol/md5.hpp"

namespace md5 = pgsluice::protocol::md5;

TEST_CASE("md5 hex_digest matches the RFC 1321 test values", "[protocol][md5]") {
  CHECK(md5::hex_digest("") == "d41d8cd98f00b204e9800998ecf8427e");
  CHECK(md5::hex_digest("abc") == "900150983cd24fb0d6963f7d28e17f72");
}

TEST_CASE("md5 stored_hash is md5 of password followed by user name", "[protocol][md5]") {
  CHECK(md5::stored_hash("postgres", "secret") == "md553f48b7c4b76a86ce72276c5755f217d");
}

TEST_CASE("md5 salted_response matches Postgres's md5(md5(password + user) + salt)", "[protocol][md5]") {
  CHECK(md5::salted_response("postgres", "secret", md5::Salt{0x01, 0x02, 0x03, 0x04}) ==
        "md5bb41a296aab6baccb36ff243a562abff");
  CHECK(md5::salted_response("postgres", "secret", md5::Salt{0xde, 0xad, 0xbe, 0xef}) ==
        "md5c546d0bbed2af888b328536b45c76348");
}

TEST_CASE("md5 salted_response_from_hash agrees with salted_response, with or without the md5 prefix",
          "[protocol][md5]") {
  const md5::Salt salt{0xde, 0xad, 0xbe, 0xef};
  CHECK(md5::salted_response_from_hash("md553f48b7c4b76a86ce72276c5755f217d", salt) ==
        "md5c546d0bbed2af888b328536b45c76348");
  CHECK(md5::salted_response_from_hash("53f48b7c4b76a86ce72276c5755f217d", salt) ==
        "md5c546d0bbed2af888b328536b45c76348");
  CHECK(md5::salted_response_from_hash(md5::stored_hash("postgres", "secret"), salt) ==
        md5::salted_response("postgres", "secret", salt));
}

TEST_CASE("md5 salted_response changes with the user name, the password and the salt", "[protocol][md5]") {
  const md5::Salt salt{0x01, 0x02, 0x03, 0x04};
  const std::string base = md5::salted_response("postgres", "secret", salt);
  CHECK(md5::salted_response("postgre", "secret", salt) != base);
  CHECK(md5::salted_response("postgres", "secreT", salt) != base);
  CHECK(md5::salted_response("postgres", "secret", md5::Salt{0x01, 0x02, 0x03, 0x05}) != base);
  CHECK(base.size() == 35);
}

TEST_CASE("md5 response_matches accepts exactly the salted response", "[protocol][md5]") {
  const md5::Salt salt{0xde, 0xad, 0xbe, 0xef};
  const std::string stored = md5::stored_hash("postgres", "secret");
  const std::string right = md5::salted_response("postgres", "secret", salt);
  CHECK(md5::response_matches(stored, salt, right));
  CHECK(md5::response_matches(stored.substr(3), salt, right));  // a stored hash without "md5"
  CHECK_FALSE(md5::response_matches(stored, md5::Salt{0xde, 0xad, 0xbe, 0xee}, right));
  CHECK_FALSE(md5::response_matches(stored, salt, right.substr(3)));  // without "md5"
  CHECK_FALSE(md5::response_matches(stored, salt, right + "0"));
  CHECK_FALSE(md5::response_matches(stored, salt, ""));
  std::string flipped = right;
  flipped[20] = flipped[20] == 'a' ? 'b' : 'a';
  CHECK_FALSE(md5::response_matches(stored, salt, flipped));
}
