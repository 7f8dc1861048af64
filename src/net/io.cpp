#include "pgsluice/net/io.hpp"

#include <boost/asio/write.hpp>

namespace pgsluice::net {

awaitable<error_code> read_some(tcp::socket& socket, MessageBuffer& buffer, std::size_t min_free) {
  auto space = buffer.writable(min_free);
  auto [ec, n] = co_await socket.async_read_some(asio::buffer(space.data(), space.size()), use_nothrow);
  buffer.commit(n);
  if (!ec && n == 0) ec = asio::error::eof;
  co_return ec;
}

awaitable<error_code> write_all(tcp::socket& socket, std::span<const std::uint8_t> bytes) {
  auto [ec, n] = co_await asio::async_write(socket, asio::buffer(bytes.data(), bytes.size()), use_nothrow);
  (void)n;
  co_return ec;
}

awaitable<error_code> write_all(tcp::socket& socket, const std::vector<std::span<const std::uint8_t>>& pieces) {
  if (pieces.size() == 1) co_return co_await write_all(socket, pieces.front());
  std::vector<asio::const_buffer> buffers;
  buffers.reserve(pieces.size());
  for (auto piece : pieces) buffers.emplace_back(piece.data(), piece.size());
  auto [ec, n] = co_await asio::async_write(socket, buffers, use_nothrow);
  (void)n;
  co_return ec;
}

awaitable<protocol::Result<protocol::MessageView>> read_message(tcp::socket& socket, MessageBuffer& buffer,
                                                                 std::size_t max_message_size) {
  for (;;) {
    auto frame = protocol::next_frame(buffer.readable(), max_message_size);
    if (frame.status == protocol::FrameStatus::complete) co_return frame.message;
    if (frame.status == protocol::FrameStatus::malformed) co_return frame.error;
    const std::size_t want = frame.needed > buffer.size() ? frame.needed - buffer.size() : 4096;
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
  while (!signalled_) {
    waiting_ = true;
    auto [ec] = co_await timer_.async_wait(use_nothrow);  // cancelled by notify(); expires never
    (void)ec;
    waiting_ = false;
  }
  signalled_ = false;
}

}  // namespace pgsluice::net
