// net::Stream over TLS, the one stream seam (DESIGN §1): a handshake between two Streams on a
// loopback pair, then what the relay relies on: gathered writes of many pieces larger than the
// socket buffers (staged, finished by write_rest), reads of whole runs, async_write_all, decrypted
// bytes counted as readable, a move of the descriptor to another worker mid-stream, end of stream.
// The certificate is made in-process with OpenSSL.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <catch.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "pgsluice/net/io.hpp"
#include "pgsluice/net/tls.hpp"

namespace asio = boost::asio;
namespace net = pgsluice::net;
using net::tcp;

namespace {

// A self-signed P-256 certificate for "localhost" in a temp dir: (cert, key) paths.
std::pair<std::string, std::string> self_signed() {
  static const auto paths = [] {
    const auto dir = std::filesystem::temp_directory_path() / ("pgsluice-tls-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    EVP_PKEY* key = EVP_EC_gen("P-256");
    X509* cert = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -60);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
    X509_set_pubkey(cert, key);
    X509_NAME* name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("localhost"), -1, -1,
                               0);
    X509_set_issuer_name(cert, name);
    X509_sign(cert, key, EVP_sha256());
    const auto cert_path = (dir / "cert.pem").string();
    const auto key_path = (dir / "key.pem").string();
    FILE* f = std::fopen(cert_path.c_str(), "w");
    PEM_write_X509(f, cert);
    std::fclose(f);
    f = std::fopen(key_path.c_str(), "w");
    PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
    std::fclose(f);
    X509_free(cert);
    EVP_PKEY_free(key);
    return std::make_pair(cert_path, key_path);
  }();
  return paths;
}

struct TlsPair {
  net::Stream server;  // pgsluice accepting a client
  net::Stream client;  // pgsluice connecting to Postgres
};

TlsPair handshaken(asio::io_context& io) {
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  tcp::socket writer(io);
  writer.connect(acceptor.local_endpoint());
  writer.set_option(tcp::no_delay(true));  // as pgsluice's sockets: no Nagle wait on small records
  tcp::socket incoming = acceptor.accept();
  incoming.set_option(tcp::no_delay(true));
  TlsPair pair{net::Stream(std::move(incoming)), net::Stream(std::move(writer))};
  const auto [cert, key] = self_signed();
  std::string error;
  auto for_clients = net::TlsContext::for_clients(net::TlsFiles{cert, key, "", "TLSv1.2", ""}, error);
  REQUIRE(for_clients);
  auto for_servers = net::TlsContext::for_servers(net::ServerTlsMode::require, net::TlsFiles{}, error);
  REQUIRE(for_servers);
  bool accepted = false, connected = false;
  std::string accept_error, connect_error;
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    accepted = co_await pair.server.accept_tls(*for_clients, false, accept_error);
  }, asio::detached);
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    connected = co_await pair.client.connect_tls(*for_servers, "localhost", connect_error);
  }, asio::detached);
  io.run();
  io.restart();
  INFO(accept_error << " / " << connect_error);
  REQUIRE(accepted);
  REQUIRE(connected);
  REQUIRE(pair.server.tls());
  REQUIRE(pair.server.tls_description().starts_with("TLSv1.3"));
  return pair;
}

std::vector<std::uint8_t> pattern(std::size_t size, std::uint8_t seed) {
  std::vector<std::uint8_t> out(size);
  for (std::size_t i = 0; i < size; ++i) out[i] = static_cast<std::uint8_t>(seed + i * 7 + i / 251);
  return out;
}

// Reads until `want` bytes arrived or the stream ended.
asio::awaitable<void> read_all(net::Stream& stream, std::size_t want, std::vector<std::uint8_t>& out,
                               net::error_code& end) {
  net::MessageBuffer buffer;
  while (out.size() < want) {
    auto [ec, n] = co_await net::async_read_into(stream, buffer, 4096);
    if ((end = net::finish_read(buffer, ec, n))) co_return;
    auto bytes = buffer.readable();
    out.insert(out.end(), bytes.begin(), bytes.end());
    buffer.consume(bytes.size());
  }
}

}  // namespace

TEST_CASE("a TLS stream carries gathered writes larger than the socket buffers, both ways", "[net][tls]") {
  asio::io_context io;
  auto pair = handshaken(io);
  // 64 pieces of 64 KiB: the socket cannot take it at once; the rest is staged and write_rest ends it.
  std::vector<std::vector<std::uint8_t>> blocks;
  std::vector<std::span<const std::uint8_t>> pieces;
  std::vector<std::uint8_t> expected;
  for (int i = 0; i < 64; ++i) {
    blocks.push_back(pattern(65536 + static_cast<std::size_t>(i), static_cast<std::uint8_t>(i)));
  }
  for (const auto& block : blocks) {
    pieces.emplace_back(block);
    expected.insert(expected.end(), block.begin(), block.end());
  }
  std::size_t written = 0;
  net::error_code ec;
  const bool done = pair.client.try_write_all(pieces, written, ec);
  CHECK(!ec);
  CHECK(written == expected.size());  // every piece taken (staged): the caller's buffers are free
  CHECK(!done);                       // the socket did not take it all
  blocks.clear();                     // really free
  std::vector<std::uint8_t> received;
  net::error_code end, rest_ec;
  asio::co_spawn(io, [&]() -> asio::awaitable<void> { rest_ec = co_await pair.client.write_rest(pieces, written); },
                 asio::detached);
  asio::co_spawn(io, read_all(pair.server, expected.size(), received, end), asio::detached);
  io.run();
  io.restart();
  CHECK(!rest_ec);
  CHECK(!end);
  CHECK(received == expected);

  // The other way, through async_write_all (the client writer's slow path).
  const auto reply = pattern(3 * 1024 * 1024, 99);
  std::vector<asio::const_buffer> buffers{asio::buffer(reply.data(), 1000), asio::buffer(reply.data() + 1000,
                                                                                         reply.size() - 1000)};
  std::size_t reported = 0;
  net::error_code write_ec;
  pair.server.async_write_all(buffers, [&](net::error_code e, std::size_t n) {
    write_ec = e;
    reported = n;
  });
  std::vector<std::uint8_t> back;
  asio::co_spawn(io, read_all(pair.client, reply.size(), back, end), asio::detached);
  io.run();
  io.restart();
  CHECK(!write_ec);
  CHECK(reported == reply.size());
  CHECK(back == reply);
}

TEST_CASE("decrypted bytes are readable without a wait, and a TLS stream moves between workers", "[net][tls]") {
  asio::io_context io;
  asio::io_context other;  // outlives the streams (one moves to it)
  auto pair = handshaken(io);
  const auto first = pattern(100, 1), second = pattern(70000, 2);
  std::size_t written = 0;
  net::error_code ec;
  const std::vector<std::span<const std::uint8_t>> one{first};
  REQUIRE(pair.client.try_write_all(one, written, ec));
  INFO(ec.message());
  REQUIRE(!ec);
  // Read a little: OpenSSL holds the rest of the record decrypted, which the socket does not show.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!pair.server.readable_now() && std::chrono::steady_clock::now() < deadline) io.poll();
  std::array<std::uint8_t, 10> small{};
  std::size_t got = 0;
  while (got == 0 && !ec && std::chrono::steady_clock::now() < deadline) got = pair.server.read_now(small, ec);
  INFO(ec.message());
  REQUIRE(got == 10);
  CHECK(!ec);
  CHECK(pair.server.readable_now());
  CHECK(!pair.server.quiet());
  // A read into a small array takes the next decrypted bytes without a wait (none would come).
  std::size_t got_some = 0;
  pair.server.async_read_some(small, [&](const net::error_code& read_ec, std::size_t n) {
    ec = read_ec;
    got_some = n;
  });
  io.poll();
  REQUIRE(got_some == 10);
  CHECK(!ec);
  CHECK(std::equal(small.begin(), small.end(), first.begin() + 10));

  // The rest is read on another worker, after a move of the descriptor and its TLS state.
  REQUIRE(pair.server.move_to(other.get_executor()));
  written = 0;
  const std::vector<std::span<const std::uint8_t>> two{second};
  if (!pair.client.try_write_all(two, written, ec)) {
    asio::co_spawn(io, [&]() -> asio::awaitable<void> { ec = co_await pair.client.write_rest(two, written); },
                   asio::detached);
  }
  std::vector<std::uint8_t> received, expected;
  expected.reserve(first.size() - 20 + second.size());
  for (std::size_t i = 20; i < first.size(); ++i) expected.push_back(first[i]);  // (insert: GCC 12 -O3 warns)
  for (auto byte : second) expected.push_back(byte);
  net::error_code end;
  asio::co_spawn(other, read_all(pair.server, expected.size(), received, end), asio::detached);
  for (int i = 0; i < 10000 && received.size() < expected.size() && !end; ++i) {
    io.poll();
    other.poll();
  }
  CHECK(!end);
  CHECK(received == expected);

  // close() sends close_notify: the peer's read ends with end of stream.
  pair.client.close();
  std::vector<std::uint8_t> none;
  other.restart();  // poll() ran out of work above
  asio::co_spawn(other, read_all(pair.server, 1, none, end), asio::detached);
  other.run();
  INFO(none.size() << " " << end.message());
  CHECK(end == asio::error::eof);
  CHECK(pair.server.quiet() == false);
}

TEST_CASE("TLS contexts refuse missing or mismatched files with a message naming them", "[net][tls]") {
  std::string error;
  CHECK(!net::TlsContext::for_clients(net::TlsFiles{}, error));
  CHECK(error.find("cert and key") != std::string::npos);
  CHECK(!net::TlsContext::for_clients(net::TlsFiles{"/nonexistent.crt", "/nonexistent.key", "", "TLSv1.2", ""}, error));
  CHECK(error.find("/nonexistent.crt") != std::string::npos);
  const auto [cert, key] = self_signed();
  CHECK(!net::TlsContext::for_clients(net::TlsFiles{cert, key, "", "TLSv1.1", ""}, error));
  CHECK(error.find("min_version") != std::string::npos);
  CHECK(!net::TlsContext::for_servers(net::ServerTlsMode::verify_full, net::TlsFiles{}, error));
  CHECK(error.find("needs a ca") != std::string::npos);
  CHECK(net::TlsContext::for_servers(net::ServerTlsMode::verify_ca, net::TlsFiles{"", "", cert, "TLSv1.3", ""}, error));
}
