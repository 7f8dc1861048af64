// net::InlineEvent, the server reader's wake-up: notify() resumes the waiter inline, before it
// returns; a notify with nobody waiting is kept for the next wait; and a coroutine still parked when
// its worker shuts down is destroyed with it (ASan's leak check in the asan preset sees a leak
// otherwise).
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <catch.hpp>

#include <memory>
#include <string>

#include "pgsluice/net/io.hpp"

namespace asio = boost::asio;
using pgsluice::net::InlineEvent;

TEST_CASE("InlineEvent::notify resumes the waiter before it returns", "[net]") {
  asio::io_context io;
  InlineEvent event(io.get_executor());
  std::string trace;
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    for (int i = 0; i < 2; ++i) {
      co_await event.wait();
      trace += "woken ";
    }
  }, asio::detached);
  // poll, never run: the anchor's wait (see io.hpp) stays pending for as long as the event lives.
  io.poll();  // the waiter parks
  CHECK(trace.empty());
  asio::post(io, [&] {
    trace += "notify ";
    event.notify();
    trace += "returned ";
    event.notify();  // the waiter ran to its second wait: resumed again, inline
    trace += "returned";
  });
  io.poll();
  CHECK(trace == "notify woken returned woken returned");
}

TEST_CASE("InlineEvent keeps a notify that came before the wait", "[net]") {
  asio::io_context io;
  InlineEvent event(io.get_executor());
  bool woken = false;
  event.notify();
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    co_await event.wait();
    woken = true;
  }, asio::detached);
  io.poll();
  CHECK(woken);
}

TEST_CASE("a coroutine parked on an InlineEvent is destroyed when its worker shuts down", "[net]") {
  auto alive = std::make_shared<int>(0);
  std::weak_ptr<int> watch = alive;
  {
    asio::io_context io;
    auto event = std::make_shared<InlineEvent>(io.get_executor());
    // The coroutine owns the event and a witness, as a session's server reader owns its session.
    asio::co_spawn(io, [event, witness = std::move(alive)]() -> asio::awaitable<void> {
      co_await event->wait();
    }, asio::detached);
    event.reset();
    io.poll();  // parks for good: nothing will notify
    CHECK_FALSE(watch.expired());
  }  // the io_context goes, and with its pending anchor wait the parked coroutine
  CHECK(watch.expired());
}
