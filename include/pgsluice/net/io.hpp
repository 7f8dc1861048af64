#pragma once
// Asio plumbing shared by the session and server components: sockets, errors as values, and
// whole-message reads into a MessageBuffer.
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "pgsluice/net/message_buffer.hpp"
#include "pgsluice/net/stream.hpp"
#include "pgsluice/protocol/message.hpp"
#include "pgsluice/protocol/startup.hpp"

namespace pgsluice::net {

// Reads whatever the stream has into the buffer (waiting for something). Returns the error (eof
// included) or success.
awaitable<error_code> read_some(Stream& stream, MessageBuffer& buffer, std::size_t min_free = 4096);
// Writes all bytes.
awaitable<error_code> write_all(Stream& stream, std::span<const std::uint8_t> bytes);
// Writes all pieces, in order, with one gathered write.
awaitable<error_code> write_all(Stream& stream, const std::vector<std::span<const std::uint8_t>>& pieces);
// The relay's hot path, without a coroutine frame when the socket takes everything at once (nearly
// always): try_write_all sends what the stream takes now and returns true when done (all written,
// or `ec` set); false means it stopped at `written` bytes and write_rest must finish.
inline bool try_write_all(Stream& stream, const std::vector<std::span<const std::uint8_t>>& pieces,
                          std::size_t& written, error_code& ec) {
  return stream.try_write_all(pieces, written, ec);
}
inline awaitable<error_code> write_rest(Stream& stream, const std::vector<std::span<const std::uint8_t>>& pieces,
                                        std::size_t written) {
  return stream.write_rest(pieces, written);
}
// The read half of the hot path: an asynchronous read into the buffer's free tail, awaited directly
// (no wrapper frame) or completing into a handler; the caller commits the count with finish_read.
template <class CompletionToken>
auto async_read_into(Stream& stream, MessageBuffer& buffer, std::size_t min_free, CompletionToken&& token) {
  return stream.async_read_into(buffer, min_free, std::forward<CompletionToken>(token));
}
inline auto async_read_into(Stream& stream, MessageBuffer& buffer, std::size_t min_free = 4096) {
  return stream.async_read_into(buffer, min_free, use_nothrow);
}
inline error_code finish_read(MessageBuffer& buffer, error_code ec, std::size_t count) {
  buffer.commit(count);
  if (!ec && count == 0) ec = asio::error::eof;
  return ec;
}

// Reads until one whole typed message is at the front of the buffer and returns a view of it (the
// caller consumes it). A malformed frame is returned as an error with its SQLSTATE; a socket error
// as 08006.
awaitable<protocol::Result<protocol::MessageView>> read_message(Stream& stream, MessageBuffer& buffer,
                                                                 std::size_t max_message_size);
// Same for an untyped startup-phase packet: returns its size.
awaitable<protocol::Result<std::size_t>> read_startup_packet(Stream& stream, MessageBuffer& buffer);

// A repeatable event for coroutines on one strand: wait() suspends until notify(). notify() with
// nobody waiting only sets a flag. Wake-ups may be spurious and one notify() wakes every waiter:
// wait in a loop on the condition (`while (!ready) co_await event.wait();`). Looping inside wait()
// until its own flag was set left a second waiter asleep after the first took the flag. Small (a
// session has several, and an idle client should cost little): the waiters' handlers are kept only
// while they wait, and resumed from their executor's queue after notify() returns (never inside it:
// the code after notify() runs before any waiter).
class Event {
 public:
  Event() = default;
  awaitable<void> wait();
  void notify();

 private:
  struct Waiter {
    asio::any_completion_handler<void()> handler;
    asio::any_io_executor executor;
  };
  std::vector<Waiter> waiters_;
  bool signalled_ = false;
};

}  // namespace pgsluice::net
