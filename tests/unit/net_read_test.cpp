// net::async_read_into, the relay's read. What must hold however a read is carried out: data that
// arrives while no read is pending (its readiness event consumed by the reactor meanwhile) is still
// delivered, a message larger than the buffer comes in pieces, end of stream and cancel end a read,
// a read pending when its worker shuts down is freed unrun (ASan's leak check in the asan preset),
// and end of stream is seen when the last data and the close arrive together. That last one is why
// a short read must not be taken to mean "drained, wait for the next readiness event" (which would
// save the EAGAIN recv of each wait): the recv that returns the data consumes the FIN with it, no
// further event comes, and the reader hangs (bench/RESULTS.md, session 6).
#include <sys/socket.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <catch.hpp>

#include <array>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pgsluice/net/io.hpp"

namespace asio = boost::asio;
namespace net = pgsluice::net;
using net::tcp;

namespace {

struct Pair {
  net::Stream reader;
  tcp::socket writer;
};

Pair connected_pair(asio::io_context& io) {
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  tcp::socket writer(io);
  writer.connect(acceptor.local_endpoint());
  tcp::socket reader = acceptor.accept();
  return Pair{net::Stream(std::move(reader)), std::move(writer)};
}

void send_text(tcp::socket& socket, const std::string& text) {
  REQUIRE(::send(socket.native_handle(), text.data(), text.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(text.size()));
}

std::string text_of(const net::MessageBuffer& buffer) {
  auto bytes = buffer.readable();
  return std::string(bytes.begin(), bytes.end());
}

// Reads until an error or end of stream, noting each read's text ("text|") and the end ("[why]").
asio::awaitable<void> read_into_trace(net::Stream& reader, net::MessageBuffer& buffer, std::string& trace) {
  for (;;) {
    auto [read_ec, n] = co_await net::async_read_into(reader, buffer);
    if (auto ec = net::finish_read(buffer, read_ec, n)) {
      trace += "[" + ec.message() + "]";
      co_return;
    }
    trace += text_of(buffer) + "|";
    buffer.consume(buffer.size());
  }
}

// Runs ready handlers and polls the reactor a few times (loopback delivery is immediate).
void settle(asio::io_context& io) {
  for (int i = 0; i < 5; ++i) io.poll();
}

}  // namespace

TEST_CASE("async_read_into delivers data that arrived while no read was pending", "[net]") {
  asio::io_context io;
  auto [reader, writer] = connected_pair(io);
  // Keeps the reactor polled by io.poll() while no read is pending.
  asio::steady_timer keep_polling(io, std::chrono::hours(1));
  keep_polling.async_wait([](const net::error_code&) {});
  net::MessageBuffer buffer;
  std::string trace;
  bool between_reads = false;
  asio::steady_timer gate(io, std::chrono::hours(1));  // cancelled: the second read starts
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    auto [ec, n] = co_await net::async_read_into(reader, buffer);
    if (net::finish_read(buffer, ec, n)) co_return;
    trace += text_of(buffer) + "|";
    buffer.consume(buffer.size());
    between_reads = true;
    co_await gate.async_wait(net::use_nothrow);
    auto [ec2, n2] = co_await net::async_read_into(reader, buffer);
    if (net::finish_read(buffer, ec2, n2)) co_return;
    trace += text_of(buffer);
  }, asio::detached);
  send_text(writer, "first");
  settle(io);
  REQUIRE(trace == "first|");
  REQUIRE(between_reads);
  // The reactor sees this data's event with no read pending; the next read must not wait for
  // another event, which will never come.
  send_text(writer, "second");
  settle(io);
  gate.cancel();
  settle(io);
  CHECK(trace == "first|second");
  keep_polling.cancel();
}

TEST_CASE("async_read_into waits after a short read and wakes on the next data", "[net]") {
  asio::io_context io;
  auto [reader, writer] = connected_pair(io);
  net::MessageBuffer buffer;
  std::string trace;
  asio::co_spawn(io, read_into_trace(reader, buffer, trace), asio::detached);
  settle(io);
  CHECK(trace.empty());  // nothing sent: the read is pending
  send_text(writer, "one");
  settle(io);
  CHECK(trace == "one|");
  send_text(writer, "two");
  settle(io);
  CHECK(trace == "one|two|");
  writer.shutdown(tcp::socket::shutdown_send);
  settle(io);
  CHECK(trace == "one|two|[End of file]");
}

TEST_CASE("async_read_into reads a message larger than the buffer's free space in pieces", "[net]") {
  asio::io_context io;
  auto [reader, writer] = connected_pair(io);
  const std::string big(40'000, 'x');  // within the loopback's receive window: send() must not block
  net::MessageBuffer buffer;
  std::size_t reads = 0;
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    while (buffer.size() < big.size()) {
      // A small free tail: each read fills it and the next one tries again at once.
      auto [ec, n] = co_await net::async_read_into(reader, buffer, 1024);
      if (net::finish_read(buffer, ec, n)) co_return;
      ++reads;
    }
  }, asio::detached);
  send_text(writer, big);
  for (int i = 0; i < 1000 && buffer.size() < big.size(); ++i) io.poll();
  CHECK(buffer.size() == big.size());
  CHECK(text_of(buffer) == big);
  CHECK(reads > 1);
}

TEST_CASE("socket.cancel() ends a pending async_read_into with operation_aborted", "[net]") {
  asio::io_context io;
  auto [reader, writer] = connected_pair(io);
  net::MessageBuffer buffer;
  std::optional<net::error_code> result;
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    auto [ec, n] = co_await net::async_read_into(reader, buffer);
    result = net::finish_read(buffer, ec, n);
  }, asio::detached);
  settle(io);
  REQUIRE(!result);
  reader.cancel();
  settle(io);
  REQUIRE(result);
  CHECK(*result == asio::error::operation_aborted);
}

TEST_CASE("an async_read_into pending when its worker shuts down is freed with its coroutine", "[net]") {
  auto alive = std::make_shared<int>(0);
  std::weak_ptr<int> watch = alive;
  {
    asio::io_context io;
    auto [reader, writer] = connected_pair(io);
    net::MessageBuffer buffer;
    asio::co_spawn(io, [&, hold = std::move(alive)]() -> asio::awaitable<void> {
      co_await net::async_read_into(reader, buffer);
    }, asio::detached);
    settle(io);
    CHECK(!watch.expired());  // parked on the read
  }
  CHECK(watch.expired());
}

TEST_CASE("async_read_into sees end of stream when the last data and the close arrive together", "[net]") {
  // A server that sends its FATAL and exits, or a client that sends and closes: one recv returns the
  // data (fewer bytes than asked for) and consumes the FIN; the next read must still end.
  asio::io_context io;
  auto [reader, writer] = connected_pair(io);
  net::MessageBuffer buffer;
  std::string trace;
  asio::co_spawn(io, read_into_trace(reader, buffer, trace), asio::detached);
  settle(io);  // the read is pending
  send_text(writer, "one");
  settle(io);
  send_text(writer, "last words");
  writer.shutdown(tcp::socket::shutdown_send);
  settle(io);
  CHECK(trace == "one|last words|[End of file]");
}

TEST_CASE("Stream::async_read_some fills a small array: bytes already there, bytes later, a message in pieces, the end", "[net]") {
  // An idle client's read (ClientSession::read_client): the socket is tried at once, else the read
  // waits in the reactor; whatever is longer than the array stays in the socket for the next read.
  asio::io_context io;
  auto [reader, writer] = connected_pair(io);
  std::array<std::uint8_t, 8> small{};
  std::string trace;
  std::function<void()> read_next = [&] {
    reader.async_read_some(small, [&](const net::error_code& ec, std::size_t n) {
      if (ec || n == 0) {
        trace += "[" + (ec ? ec.message() : std::string("0 bytes")) + "]";
        return;
      }
      trace += std::string(small.begin(), small.begin() + static_cast<std::ptrdiff_t>(n)) + "|";
      read_next();
    });
  };
  send_text(writer, "early");  // before any read (loopback delivers at once): the first try takes it
  read_next();
  settle(io);
  CHECK(trace == "early|");
  send_text(writer, "late");  // the read waits in the reactor
  settle(io);
  CHECK(trace == "early|late|");
  send_text(writer, "twelve bytes");
  writer.shutdown(tcp::socket::shutdown_send);
  settle(io);
  CHECK(trace == "early|late|twelve b|ytes|[End of file]");
}

namespace {

asio::awaitable<void> wait_until(net::Event& event, const bool& ready, int& woken) {
  while (!ready) co_await event.wait();
  ++woken;
}

}  // namespace

TEST_CASE("one notify() of an Event wakes every coroutine waiting on it", "[net]") {
  // A session's server side may be stopped by two coroutines at once (close_with on SIGTERM and the
  // end of the session): both wait for the same event, and both must go on when it fires.
  asio::io_context io;
  net::Event event;
  bool ready = false;
  int woken = 0;
  asio::co_spawn(io, wait_until(event, ready, woken), asio::detached);
  asio::co_spawn(io, wait_until(event, ready, woken), asio::detached);
  io.run_for(std::chrono::milliseconds(20));
  CHECK(woken == 0);
  ready = true;
  event.notify();
  io.run_for(std::chrono::milliseconds(50));
  CHECK(woken == 2);
}

TEST_CASE("net::Event resumes its waiters from the executor's queue, never inside notify()", "[net][event]") {
  // A waiter that ran inside notify() would act before the notifier's next statement: the session's
  // held message once answered the client before the server's replies it had just relayed.
  asio::io_context io;
  net::Event event;
  std::vector<std::string> order;
  asio::co_spawn(io, [&]() -> net::awaitable<void> {
    co_await event.wait();
    order.push_back("waiter");
  }, asio::detached);
  asio::co_spawn(io, [&]() -> net::awaitable<void> {
    event.notify();
    order.push_back("after notify");
    co_return;
  }, asio::detached);
  io.run();
  REQUIRE(order == std::vector<std::string>{"after notify", "waiter"});
}
