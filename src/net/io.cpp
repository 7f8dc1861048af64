#include "pgsluice/net/io.hpp"

#include <boost/asio/post.hpp>


#include <array>
#include <cerrno>

#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/write.hpp>


namespace pgsluice::net {

awaitable<error_code> read_some(Stream& stream, MessageBuffer& buffer, std::size_t min_free) {
  auto [ec, n] = co_await stream.async_read_into(buffer, min_free, use_nothrow);
  buffer.commit(n);
  if (!ec && n == 0) ec = asio::error::eof;
  co_return ec;
}

awaitable<error_code> write_all(Stream& stream, std::span<const std::uint8_t> bytes) {
  const std::array<std::span<const std::uint8_t>, 1> pieces{bytes};
  std::size_t written = 0;
  error_code ec;
  if (stream.try_write_all(pieces, written, ec)) co_return ec;
  co_return co_await stream.write_rest(pieces, written);
}

awaitable<error_code> write_all(Stream& stream, const std::vector<std::span<const std::uint8_t>>& pieces) {
  std::size_t written = 0;
  error_code ec;
  if (stream.try_write_all(pieces, written, ec)) co_return ec;
  co_return co_await stream.write_rest(pieces, written);
}

awaitable<protocol::Result<protocol::MessageView>> read_message(Stream& stream, MessageBuffer& buffer,
                                                                 std::size_t max_message_size) {
  for (;;) {
    auto frame = protocol::next_frame(buffer.readable(), max_message_size);
    if (frame.status == protocol::FrameStatus::complete) co_return frame.message;
    if (frame.status == protocol::FrameStatus::malformed) co_return frame.error();
    const std::size_t want = read_size_for(frame.needed, buffer.size());
    if (auto ec = co_await read_some(stream, buffer, want)) {
      co_return protocol::ProtocolError{"08006", "connection lost: " + ec.message()};
    }
  }
}

awaitable<protocol::Result<std::size_t>> read_startup_packet(Stream& stream, MessageBuffer& buffer) {
  for (;;) {
    auto frame = protocol::next_startup_frame(buffer.readable());
    if (frame.status == protocol::FrameStatus::complete) co_return frame.size;
    if (frame.status == protocol::FrameStatus::malformed) co_return frame.error;
    if (auto ec = co_await read_some(stream, buffer, 1024)) {
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
