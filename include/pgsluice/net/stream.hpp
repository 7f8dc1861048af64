#pragma once
// The one stream seam (DESIGN §1): every read and write of a client or server connection goes
// through a Stream, plain TCP or TLS (OpenSSL over the socket's descriptor), so the relay, the
// probe of an idle connection and the move of a socket between workers are the same for both.
//
// Plain streams cost what the bare socket did: non-blocking recv/sendmsg, Asio's reactor for waits.
// A TLS stream reads and writes through its SSL object: a gathered write of many pieces is copied
// into one staging buffer and written as few records; a write the socket does not take at once
// stays staged in the stream (the caller's pieces are free at once). Plaintext OpenSSL has
// decrypted and not yet returned counts as readable, so a wait never sleeps on it.
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "pgsluice/net/message_buffer.hpp"
#include "pgsluice/net/tls.hpp"

struct ssl_st;

namespace pgsluice::net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
template <class T>
using awaitable = asio::awaitable<T>;

// Completion token: errors come back as values, never as exceptions.
inline constexpr auto use_nothrow = asio::as_tuple(asio::use_awaitable);

class Stream {
 public:
  explicit Stream(tcp::socket socket);
  Stream(Stream&& other) noexcept;
  Stream& operator=(Stream&& other) noexcept;
  ~Stream();

  tcp::socket& socket() { return socket_; }
  const tcp::socket& socket() const { return socket_; }
  auto get_executor() { return socket_.get_executor(); }
  bool is_open() const { return socket_.is_open(); }
  bool tls() const { return ssl_ != nullptr; }
  // "TLSv1.3 TLS_AES_256_GCM_SHA384" for the logs; empty for plain text.
  std::string tls_description() const;
  // SCRAM channel binding's "tls-server-end-point" data (RFC 5929 §4.1): the hash of the server's
  // certificate (ours when we accepted, Postgres's when we connected), with the hash of its signature
  // algorithm, SHA-256 in place of MD5 and SHA-1. Empty for plain text, or a certificate whose
  // signature names no single hash (Ed25519): no channel binding then, as with Postgres.
  std::string tls_server_end_point() const;

  // TLS handshakes on a plain stream; afterwards every read and write is encrypted. False with
  // `error` set when it failed (the stream is then unusable). accept_tls: as the server (a client
  // of pgsluice); `require_alpn` for Postgres 17's direct TLS (no SSLRequest first), which must
  // negotiate "postgresql". connect_tls: as the client (towards Postgres): `host` is sent as SNI
  // and, with verify-full, checked against the certificate.
  awaitable<bool> accept_tls(const TlsContext& context, bool require_alpn, std::string& error);
  awaitable<bool> connect_tls(const TlsContext& context, const std::string& host, std::string& error);

  // Reads what is there now into `space`, without waiting: the count, or 0 with `ec` clear when
  // nothing is there yet (eof and errors in `ec`).
  std::size_t read_now(std::span<std::uint8_t> space, error_code& ec);
  // Something can be read without waiting (bytes, eof or an error); false when a wait is needed.
  bool readable_now();
  // An idle connection that has neither sent anything nor closed (the pool's probe).
  bool quiet();

  // Waits until readable_now() may be true (at once when TLS holds decrypted bytes). A plain
  // stream's wait is the socket's: woken by bytes that arrive after it starts (edge-triggered), so
  // look with readable_now() first.
  template <class Token>
  auto async_wait_readable(Token&& token) {
    return asio::async_initiate<Token, void(error_code)>(
        [this](auto handler) {
          if (ssl_ == nullptr) return socket_.async_wait(tcp::socket::wait_read, std::move(handler));
          wait_readable_tls(AnyWaitHandler(std::move(handler)));
        },
        token);
  }
  // Reads at least one byte into the buffer's free tail (at least `min_free` of it); completes with
  // (error, count), the caller commits the count (finish_read in io.hpp).
  template <class Token>
  auto async_read_into(MessageBuffer& buffer, std::size_t min_free, Token&& token) {
    return asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this, &buffer, min_free](auto handler) {
          if (ssl_ == nullptr) {
            auto space = buffer.writable(min_free);
            return socket_.async_read_some(asio::buffer(space.data(), space.size()), std::move(handler));
          }
          read_tls(&buffer, min_free, {}, AnyReadHandler(std::move(handler)));
        },
        token);
  }

  // Reads at least one byte into `space` (the caller keeps it until completion); completes with
  // (error, count). A plain stream tries the socket at once and otherwise waits in the reactor as a
  // read: unlike a wait it costs no epoll_ctl (Asio re-arms a socket for every wait, not for a read
  // that found nothing), and the bytes come with the wake-up. TLS: as async_read_into.
  template <class Token>
  auto async_read_some(std::span<std::uint8_t> space, Token&& token) {
    return asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this, space](auto handler) {
          if (ssl_ == nullptr) {
            return socket_.async_read_some(asio::buffer(space.data(), space.size()), std::move(handler));
          }
          read_tls(nullptr, 0, space, AnyReadHandler(std::move(handler)));
        },
        token);
  }

  // Writes what the stream takes now: true when done (all written, or `ec` set); false: stopped at
  // `written` bytes of the pieces (TLS: all of them are staged) and write_rest must finish.
  bool try_write_all(std::span<const std::span<const std::uint8_t>> pieces, std::size_t& written, error_code& ec);
  awaitable<error_code> write_rest(std::span<const std::span<const std::uint8_t>> pieces, std::size_t written);
  // Writes every buffer (a sequence the caller keeps until completion), then completes with
  // (error, bytes); nothing else may write meanwhile.
  template <class ConstBufferSequence, class Handler>
  void async_write_all(const ConstBufferSequence& buffers, Handler&& handler) {
    if (ssl_ == nullptr) return asio::async_write(socket_, buffers, std::forward<Handler>(handler));
    std::size_t total = 0;
    for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers); ++it) {
      const asio::const_buffer piece(*it);
      stage(std::span<const std::uint8_t>(static_cast<const std::uint8_t*>(piece.data()), piece.size()));
      total += piece.size();
    }
    flush_tls(total, AnyReadHandler(std::forward<Handler>(handler)));
  }

  // Stops sending (TLS: close_notify first), keeps reading.
  void shutdown_send();
  // Cancels pending waits and reads.
  void cancel();
  // Closes the socket (TLS: a close_notify first, best effort).
  void close();
  // Re-homes the descriptor (and the TLS state with it) on `executor`'s reactor. Only while nothing
  // is pending. False if it failed (the stream is then closed).
  bool move_to(const boost::asio::any_io_executor& executor);

 private:
  using AnyWaitHandler = boost::asio::any_completion_handler<void(error_code)>;
  using AnyReadHandler = boost::asio::any_completion_handler<void(error_code, std::size_t)>;
  void wait_readable_tls(AnyWaitHandler handler);
  // Into the buffer's free tail (at least min_free of it), or into `fixed` when buffer is null.
  void read_tls(MessageBuffer* buffer, std::size_t min_free, std::span<std::uint8_t> fixed, AnyReadHandler handler);
  void stage(std::span<const std::uint8_t> bytes);
  void flush_tls(std::size_t total, AnyReadHandler handler);
  bool start_tls(const TlsContext& context, std::string& error);
  awaitable<bool> handshake(std::string& error);
  // Writes staged bytes through SSL_write: true when all went (or `ec` set).
  bool flush_staged(error_code& ec);
  void free_tls();

  tcp::socket socket_;
  ssl_st* ssl_ = nullptr;
  std::vector<std::uint8_t> staged_;  // TLS: plaintext not yet taken by SSL_write
  std::size_t staged_from_ = 0;       // how much of staged_ it took
  bool wants_write_ = false;          // TLS: the last operation waits for the socket to be writable
  // The socket's protocol (v4 or v6), which Asio needs to adopt the descriptor on another worker:
  // asked of the kernel at the first move (a getsockname), not at every one, nor at every login.
  std::optional<tcp> protocol_;
};

}  // namespace pgsluice::net
