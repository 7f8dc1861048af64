#include "pgsluice/net/stream.hpp"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <climits>
#include <cstring>

namespace pgsluice::net {

namespace {

// The staging buffer an idle TLS connection keeps at most (a large write's goes back).
constexpr std::size_t kKeptStaging = 16 * 1024;

error_code system_error(int number) { return error_code(number, asio::error::get_system_category()); }

// The system calls themselves, not glibc's recv and sendmsg: those are thread cancellation points,
// and once a process has a second thread glibc enables and disables asynchronous cancellation
// around each of them (3 % of the relay's user CPU with two workers). pgsluice cancels no thread.
ssize_t sys_sendmsg(int fd, const msghdr* message, int flags) {
  return static_cast<ssize_t>(::syscall(SYS_sendmsg, fd, message, flags));
}
ssize_t sys_recv(int fd, void* into, std::size_t size, int flags) {
  return static_cast<ssize_t>(::syscall(SYS_recvfrom, fd, into, size, flags, nullptr, nullptr));
}

// One non-blocking gathered send of what is left, starting `skip` bytes in. Returns the bytes the
// kernel took; 0 with `ec` clear means it would block.
std::size_t send_now(int fd, std::span<const std::span<const std::uint8_t>> pieces, std::size_t skip, error_code& ec) {
  constexpr std::size_t kMaxBuffers = 16;
  std::array<iovec, kMaxBuffers> iov;
  std::size_t count = 0;
  for (auto piece : pieces) {
    if (skip >= piece.size()) {
      skip -= piece.size();
      continue;
    }
    if (count == kMaxBuffers) break;  // the rest goes with the next send
    iov[count++] = iovec{const_cast<std::uint8_t*>(piece.data()) + skip, piece.size() - skip};
    skip = 0;
  }
  msghdr message{};
  message.msg_iov = iov.data();
  message.msg_iovlen = count;
  // MSG_DONTWAIT: non-blocking whatever the descriptor's flags (a socket moved between workers is
  // re-assigned and Asio forgets its mode).
  for (;;) {
    const ssize_t n = sys_sendmsg(fd, &message, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) return static_cast<std::size_t>(n);
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) ec = system_error(errno);
    return 0;
  }
}

bool is_ip_literal(const std::string& host) {
  error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

}  // namespace

Stream::Stream(tcp::socket socket) : socket_(std::move(socket)) {}

Stream::Stream(Stream&& other) noexcept
    : socket_(std::move(other.socket_)),
      ssl_(std::exchange(other.ssl_, nullptr)),
      staged_(std::move(other.staged_)),
      staged_from_(std::exchange(other.staged_from_, 0)),
      wants_write_(other.wants_write_),
      protocol_(std::exchange(other.protocol_, std::nullopt)) {}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    free_tls();
    socket_ = std::move(other.socket_);
    ssl_ = std::exchange(other.ssl_, nullptr);
    staged_ = std::move(other.staged_);
    staged_from_ = std::exchange(other.staged_from_, 0);
    wants_write_ = other.wants_write_;
    protocol_ = std::exchange(other.protocol_, std::nullopt);
  }
  return *this;
}

Stream::~Stream() { free_tls(); }

void Stream::free_tls() {
  if (ssl_ != nullptr) SSL_free(ssl_);
  ssl_ = nullptr;
}

std::string Stream::tls_description() const {
  if (ssl_ == nullptr) return {};
  return std::string(SSL_get_version(ssl_)) + " " + SSL_get_cipher_name(ssl_);
}

std::string Stream::tls_server_end_point() const {
  if (ssl_ == nullptr) return {};
  X509* certificate = nullptr;
  X509* owned = nullptr;
  if (SSL_is_server(ssl_)) {
    certificate = SSL_get_certificate(ssl_);
  } else {
    owned = certificate = SSL_get1_peer_certificate(ssl_);
  }
  std::string hash;
  int algorithm = NID_undef;
  if (certificate != nullptr &&
      OBJ_find_sigid_algs(X509_get_signature_nid(certificate), &algorithm, nullptr) &&
      algorithm != NID_undef) {
    if (algorithm == NID_md5 || algorithm == NID_sha1) algorithm = NID_sha256;
    const EVP_MD* digest = EVP_get_digestbynid(algorithm);
    unsigned char bytes[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    if (digest != nullptr && X509_digest(certificate, digest, bytes, &size) == 1) {
      hash.assign(reinterpret_cast<const char*>(bytes), size);
    }
  }
  X509_free(owned);
  return hash;
}

bool Stream::start_tls(const TlsContext& context, std::string& error) {
  free_tls();
  ERR_clear_error();
  ssl_ = SSL_new(context.native());
  if (ssl_ == nullptr) {
    error = "cannot start TLS: " + tls_error_text();
    return false;
  }
  error_code ec;
  socket_.non_blocking(true, ec);  // OpenSSL reads and writes the descriptor itself
  if (ec || SSL_set_fd(ssl_, socket_.native_handle()) != 1) {
    error = "cannot start TLS on the socket";
    free_tls();
    return false;
  }
  return true;
}

awaitable<bool> Stream::handshake(std::string& error) {
  for (;;) {
    ERR_clear_error();
    const int result = SSL_do_handshake(ssl_);
    if (result == 1) co_return true;
    const int reason = SSL_get_error(ssl_, result);
    if (reason == SSL_ERROR_WANT_READ || reason == SSL_ERROR_WANT_WRITE) {
      auto [ec] = co_await socket_.async_wait(
          reason == SSL_ERROR_WANT_WRITE ? tcp::socket::wait_write : tcp::socket::wait_read, use_nothrow);
      if (ec) {
        error = "connection lost during the TLS handshake";
        co_return false;
      }
      continue;
    }
    auto text = tls_error_text();
    if (const long verify = SSL_get_verify_result(ssl_); verify != X509_V_OK) {
      text = std::string("certificate verify failed: ") + X509_verify_cert_error_string(verify);
    }
    error = text.empty() ? std::string("connection closed during the TLS handshake") : "TLS handshake failed: " + text;
    co_return false;
  }
}

awaitable<bool> Stream::accept_tls(const TlsContext& context, bool require_alpn, std::string& error) {
  if (!start_tls(context, error)) co_return false;
  SSL_set_accept_state(ssl_);
  if (!co_await handshake(error)) co_return false;
  if (require_alpn) {
    const unsigned char* protocol = nullptr;
    unsigned int length = 0;
    SSL_get0_alpn_selected(ssl_, &protocol, &length);
    if (length != 10 || std::memcmp(protocol, "postgresql", 10) != 0) {
      error = "a direct TLS connection must negotiate ALPN \"postgresql\"";
      co_return false;
    }
  }
  co_return true;
}

awaitable<bool> Stream::connect_tls(const TlsContext& context, const std::string& host, std::string& error) {
  if (!start_tls(context, error)) co_return false;
  SSL_set_connect_state(ssl_);
  const bool literal = is_ip_literal(host);
  if (!literal) SSL_set_tlsext_host_name(ssl_, host.c_str());
  if (context.server_mode() == ServerTlsMode::verify_full) {
    const int set = literal ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), host.c_str())
                            : SSL_set1_host(ssl_, host.c_str());
    if (set != 1) {
      error = "cannot check the server certificate against host " + host;
      co_return false;
    }
  }
  co_return co_await handshake(error);
}

std::size_t Stream::read_now(std::span<std::uint8_t> space, error_code& ec) {
  if (ssl_ == nullptr) {
    for (;;) {
      const auto n = sys_recv(socket_.native_handle(), space.data(), space.size(), MSG_DONTWAIT);
      if (n > 0) return static_cast<std::size_t>(n);
      if (n == 0) {
        ec = asio::error::eof;
        return 0;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) ec = system_error(errno);
      return 0;
    }
  }
  ERR_clear_error();
  const int n = SSL_read(ssl_, space.data(), static_cast<int>(std::min<std::size_t>(space.size(), INT_MAX)));
  if (n > 0) {
    wants_write_ = false;
    return static_cast<std::size_t>(n);
  }
  switch (SSL_get_error(ssl_, n)) {
    case SSL_ERROR_WANT_READ: wants_write_ = false; return 0;
    case SSL_ERROR_WANT_WRITE: wants_write_ = true; return 0;
    case SSL_ERROR_ZERO_RETURN: ec = asio::error::eof; return 0;
    case SSL_ERROR_SYSCALL: ec = errno != 0 ? system_error(errno) : error_code(asio::error::eof); return 0;
    default: ec = asio::error::connection_aborted; return 0;  // a TLS protocol error
  }
}

bool Stream::readable_now() {
  if (ssl_ != nullptr && SSL_has_pending(ssl_) == 1) return true;
  std::uint8_t peeked;
  const auto n = sys_recv(socket_.native_handle(), &peeked, 1, MSG_PEEK | MSG_DONTWAIT);
  return !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
}

bool Stream::quiet() {
  if (!socket_.is_open()) return false;
  if (ssl_ != nullptr && SSL_has_pending(ssl_) == 1) return false;
  std::uint8_t probe;
  const auto received = sys_recv(socket_.native_handle(), &probe, 1, MSG_PEEK | MSG_DONTWAIT);
  return received < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

void Stream::wait_readable_tls(AnyWaitHandler handler) {
  if (SSL_has_pending(ssl_) == 1) {
    asio::post(socket_.get_executor(), [handler = std::move(handler)]() mutable { std::move(handler)(error_code{}); });
    return;
  }
  socket_.async_wait(wants_write_ ? tcp::socket::wait_write : tcp::socket::wait_read, std::move(handler));
}

void Stream::read_tls(MessageBuffer* buffer, std::size_t min_free, std::span<std::uint8_t> fixed,
                      AnyReadHandler handler) {
  error_code ec;
  const std::size_t n = read_now(buffer != nullptr ? buffer->writable(min_free) : fixed, ec);
  if (n > 0 || ec) {
    // Not inside the initiating call: the handler may start the next read.
    asio::post(socket_.get_executor(),
               [handler = std::move(handler), ec, n]() mutable { std::move(handler)(ec, n); });
    return;
  }
  struct Retry {
    Stream* stream;
    MessageBuffer* buffer;
    std::size_t min_free;
    std::span<std::uint8_t> fixed;
    AnyReadHandler handler;
    void operator()(error_code ec) {
      if (ec) return std::move(handler)(ec, 0);
      const std::size_t n = stream->read_now(buffer != nullptr ? buffer->writable(min_free) : fixed, ec);
      if (n > 0 || ec) return std::move(handler)(ec, n);
      auto* s = stream;
      s->socket_.async_wait(s->wants_write_ ? tcp::socket::wait_write : tcp::socket::wait_read, std::move(*this));
    }
  };
  socket_.async_wait(wants_write_ ? tcp::socket::wait_write : tcp::socket::wait_read,
                     Retry{this, buffer, min_free, fixed, std::move(handler)});
}

void Stream::stage(std::span<const std::uint8_t> bytes) {
  if (staged_from_ == staged_.size()) {
    staged_.clear();
    staged_from_ = 0;
  }
  staged_.insert(staged_.end(), bytes.begin(), bytes.end());
}

bool Stream::flush_staged(error_code& ec) {
  while (staged_from_ < staged_.size()) {
    ERR_clear_error();
    const int n = SSL_write(ssl_, staged_.data() + staged_from_,
                            static_cast<int>(std::min<std::size_t>(staged_.size() - staged_from_, INT_MAX)));
    if (n > 0) {
      staged_from_ += static_cast<std::size_t>(n);
      continue;
    }
    switch (SSL_get_error(ssl_, n)) {
      case SSL_ERROR_WANT_WRITE: wants_write_ = true; return false;
      case SSL_ERROR_WANT_READ: wants_write_ = false; return false;
      case SSL_ERROR_SYSCALL: ec = errno != 0 ? system_error(errno) : error_code(asio::error::broken_pipe); return true;
      default: ec = asio::error::connection_aborted; return true;
    }
  }
  staged_.clear();
  staged_from_ = 0;
  if (staged_.capacity() > kKeptStaging) std::vector<std::uint8_t>().swap(staged_);
  return true;
}

bool Stream::try_write_all(std::span<const std::span<const std::uint8_t>> pieces, std::size_t& written,
                           error_code& ec) {
  std::size_t total = 0;
  for (auto piece : pieces) total += piece.size();
  if (ssl_ == nullptr) {
    for (;;) {
      const std::size_t n = send_now(socket_.native_handle(), pieces, written, ec);
      if (ec) return true;
      written += n;
      if (written >= total) return true;
      if (n == 0) return false;  // full: wait until the socket is writable again
    }
  }
  // TLS: what is left of the pieces is staged (one run of records), then written.
  std::size_t skip = written;
  for (auto piece : pieces) {
    if (skip >= piece.size()) {
      skip -= piece.size();
      continue;
    }
    stage(piece.subspan(skip));
    skip = 0;
  }
  written = total;
  return flush_staged(ec);
}

awaitable<error_code> Stream::write_rest(std::span<const std::span<const std::uint8_t>> pieces, std::size_t written) {
  for (;;) {
    const bool wants_write = ssl_ == nullptr || wants_write_;
    auto [ec] = co_await socket_.async_wait(wants_write ? tcp::socket::wait_write : tcp::socket::wait_read,
                                            use_nothrow);
    if (ec) co_return ec;
    if (ssl_ == nullptr) {
      if (try_write_all(pieces, written, ec)) co_return ec;
    } else if (flush_staged(ec)) {
      co_return ec;
    }
  }
}

void Stream::flush_tls(std::size_t total, AnyReadHandler handler) {
  error_code ec;
  if (flush_staged(ec)) {
    asio::post(socket_.get_executor(),
               [handler = std::move(handler), ec, total]() mutable { std::move(handler)(ec, ec ? 0 : total); });
    return;
  }
  socket_.async_wait(wants_write_ ? tcp::socket::wait_write : tcp::socket::wait_read,
                     [this, total, handler = std::move(handler)](error_code ec) mutable {
                       if (ec) return std::move(handler)(ec, 0);
                       flush_tls(total, std::move(handler));
                     });
}

void Stream::shutdown_send() {
  error_code ignored;
  if (ssl_ != nullptr && SSL_is_init_finished(ssl_)) {
    ERR_clear_error();
    SSL_shutdown(ssl_);  // close_notify, best effort (non-blocking)
  }
  socket_.shutdown(tcp::socket::shutdown_send, ignored);
}

void Stream::cancel() {
  error_code ignored;
  socket_.cancel(ignored);
}

void Stream::close() {
  if (!socket_.is_open()) return;
  if (ssl_ != nullptr && SSL_is_init_finished(ssl_)) {
    ERR_clear_error();
    SSL_shutdown(ssl_);
  }
  error_code ignored;
  socket_.close(ignored);
}

bool Stream::move_to(const asio::any_io_executor& executor) {
  error_code ec;
  if (!protocol_) {
    const auto local = socket_.local_endpoint(ec);
    protocol_ = ec ? tcp::v4() : local.protocol();
  }
  const tcp protocol = *protocol_;
  const auto fd = socket_.release(ec);  // leaves the old worker's reactor
  if (ec) return false;
  tcp::socket moved(executor);
  moved.assign(protocol, fd, ec);  // joins the new one; the TLS state follows the descriptor
  if (ec) {
    ::close(fd);
    free_tls();
    return false;
  }
  if (ssl_ != nullptr) moved.non_blocking(true, ec);
  socket_ = std::move(moved);
  return true;
}

}  // namespace pgsluice::net
