#include "pgsluice/net/io.hpp"

#include <boost/asio/post.hpp>

#include <sys/socket.h>
#include <sys/uio.h>

#include <array>
#include <cerrno>

#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/write.hpp>


namespace pgsluice::net {

awaitable<error_code> read_some(tcp::socket& socket, MessageBuffer& buffer, std::size_t min_free) {
  auto space = buffer.writable(min_free);
  auto [ec, n] = co_await socket.async_read_some(asio::buffer(space.data(), space.size()), use_nothrow);
  buffer.commit(n);
  if (!ec && n == 0) ec = asio::error::eof;
  co_return ec;
}

namespace {

// One non-blocking gathered send of what is left, starting `skip` bytes in. Returns the bytes the
// kernel took; 0 with `ec` clear means it would block.
template <class Pieces>
std::size_t send_now(tcp::socket& socket, const Pieces& pieces, std::size_t skip, error_code& ec) {
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
    const ssize_t n = ::sendmsg(socket.native_handle(), &message, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) return static_cast<std::size_t>(n);
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) ec = error_code(errno, asio::error::get_system_category());
    return 0;
  }
}

template <class Pieces>
bool write_now(tcp::socket& socket, const Pieces& pieces, std::size_t& written, error_code& ec) {
  std::size_t total = 0;
  for (auto piece : pieces) total += piece.size();
  for (;;) {
    const std::size_t n = send_now(socket, pieces, written, ec);
    if (ec) return true;
    written += n;
    if (written >= total) return true;
    if (n == 0) return false;  // full: wait until the socket is writable again
  }
}

template <class Pieces>
awaitable<error_code> finish_writing(tcp::socket& socket, const Pieces& pieces, std::size_t written) {
  for (;;) {
    auto [ec] = co_await socket.async_wait(tcp::socket::wait_write, use_nothrow);
    if (ec) co_return ec;
    if (write_now(socket, pieces, written, ec)) co_return ec;
  }
}

}  // namespace

bool try_write_all(tcp::socket& socket, const std::vector<std::span<const std::uint8_t>>& pieces,
                   std::size_t& written, error_code& ec) {
  return write_now(socket, pieces, written, ec);
}

awaitable<error_code> write_rest(tcp::socket& socket, const std::vector<std::span<const std::uint8_t>>& pieces,
                                 std::size_t written) {
  return finish_writing(socket, pieces, written);
}

awaitable<error_code> write_all(tcp::socket& socket, std::span<const std::uint8_t> bytes) {
  const std::array<std::span<const std::uint8_t>, 1> pieces{bytes};
  std::size_t written = 0;
  error_code ec;
  if (write_now(socket, pieces, written, ec)) co_return ec;
  co_return co_await finish_writing(socket, pieces, written);
}

awaitable<error_code> write_all(tcp::socket& socket, const std::vector<std::span<const std::uint8_t>>& pieces) {
  std::size_t written = 0;
  error_code ec;
  if (write_now(socket, pieces, written, ec)) co_return ec;
  co_return co_await finish_writing(socket, pieces, written);
}

awaitable<protocol::Result<protocol::MessageView>> read_message(tcp::socket& socket, MessageBuffer& buffer,
                                                                 std::size_t max_message_size) {
  for (;;) {
    auto frame = protocol::next_frame(buffer.readable(), max_message_size);
    if (frame.status == protocol::FrameStatus::complete) co_return frame.message;
    if (frame.status == protocol::FrameStatus::malformed) co_return frame.error();
    const std::size_t want = read_size_for(frame.needed, buffer.size());
    if (auto ec = co_await read_some(socket, buffer, want)) {
      co_return protocol::ProtocolError{"08006", "connection lost: " + ec.message()};
    }
  }
}

awaitable<protocol::Result<std::size_t>> read_startup_packet(tcp::socket& socket, MessageBuffer& buffer) {
  for (;;) {
    auto frame = protocol::next_startup_frame(buffer.readable());
    if (frame.status == protocol::FrameStatus::complete) co_return frame.size;
    if (frame.status == protocol::FrameStatus::malformed) co_return frame.error;
    if (auto ec = co_await read_some(socket, buffer, 1024)) {
      co_return protocol::ProtocolError{"08006", "connection lost: " + ec.message()};
    }
  }
}

awaitable<void> Event::wait() {
  if (!signalled_) {
    auto executor = co_await asio::this_coro::executor;
    co_await asio::async_initiate<decltype(asio::use_awaitable), void()>(
        [this, &executor](auto handler) { waiters_.push_back({std::move(handler), executor}); }, asio::use_awaitable);
  }
  signalled_ = false;
}

void Event::notify() {
  signalled_ = true;
  if (waiters_.empty()) return;
  auto waiters = std::move(waiters_);
  waiters_.clear();
  // Posted: a blocking.never preference on the handler's associated executor still ran it inline.
  for (auto& waiter : waiters) asio::post(waiter.executor, std::move(waiter.handler));
}

}  // namespace pgsluice::net
