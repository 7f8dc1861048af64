// The bounded pool's lease/return, FIFO waiting and failure paths, driven by a fake connector on a
// real io_context (no network).
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <catch.hpp>

#include <set>
#include <thread>

#include "pgsluice/pool/pool.hpp"

namespace asio = boost::asio;
using namespace pgsluice::pool;
using namespace std::chrono_literals;

namespace {

struct FakeConnection : Connection {
  explicit FakeConnection(int id, const std::set<int>* closed = nullptr) : id(id), closed(closed) {}
  bool looks_usable() override { return closed == nullptr || !closed->contains(id); }
  int id;
  const std::set<int>* closed;  // ids the "server" has closed: the quick check sees it
};

struct Harness {
  asio::io_context io;
  int next_id = 1;
  bool fail_connects = false;
  std::shared_ptr<Pool> pool;

  std::set<int> unhealthy;  // ids whose health check (round trip) fails
  std::set<int> closed;     // ids whose quick local check fails
  int thorough_checks = 0;

  explicit Harness(int max, std::chrono::milliseconds timeout = 200ms, int max_waiting = 100,
                   PoolSettings settings = {}) {
    settings.service = "feed";
    settings.max_connections = max;
    settings.acquire_timeout = timeout;
    settings.max_waiting_clients = max_waiting;
    pool = std::make_shared<Pool>(
        settings,
        [this](std::string& error) -> asio::awaitable<std::unique_ptr<Connection>> {
          if (fail_connects) {
            error = "connection refused";
            co_return nullptr;
          }
          co_return std::make_unique<FakeConnection>(next_id++, &closed);
        },
        [this](Connection& connection) -> asio::awaitable<bool> {
          ++thorough_checks;
          co_return !unhealthy.contains(static_cast<FakeConnection&>(connection).id);
        });
  }

  // Runs `body` as a coroutine to completion.
  template <class F>
  void run(F body) {
    asio::co_spawn(asio::make_strand(io), body(), asio::detached);
    io.run();
    io.restart();
  }
};

int id_of(const AcquireResult& result) { return static_cast<FakeConnection*>(result.connection.get())->id; }

}  // namespace

TEST_CASE("acquire opens connections up to max and reuses released ones", "[pool]") {
  Harness h(2);
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    auto a = co_await h.pool->acquire(executor);
    auto b = co_await h.pool->acquire(executor);
    REQUIRE(a);
    REQUIRE(b);
    CHECK(id_of(a) == 1);
    CHECK(id_of(b) == 2);
    CHECK(h.pool->stats().busy == 2);
    h.pool->release(std::move(a.connection), true);
    CHECK(h.pool->stats().idle == 1);
    auto c = co_await h.pool->acquire(executor);
    REQUIRE(c);
    CHECK(id_of(c) == 1);
    h.pool->release(std::move(b.connection), true);
    h.pool->release(std::move(c.connection), true);
  });
  CHECK(h.pool->stats().idle == 2);
  CHECK(h.pool->stats().busy == 0);
  CHECK(h.pool->stats().connects == 2);
}

TEST_CASE("acquire fails with timeout after acquire_timeout and names the pool state", "[pool]") {
  Harness h(1, 150ms);
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    auto held = co_await h.pool->acquire(executor);
    REQUIRE(held);
    const auto start = std::chrono::steady_clock::now();
    auto waited = co_await h.pool->acquire(executor);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    CHECK_FALSE(waited);
    CHECK(waited.error == AcquireError::timeout);
    CHECK(elapsed >= 150ms);
    CHECK(elapsed < 400ms);
    CHECK(waited.message.find("\"feed\"") != std::string::npos);
    CHECK(waited.message.find("1/1 busy") != std::string::npos);
    h.pool->release(std::move(held.connection), true);
  });
  CHECK(h.pool->stats().acquire_timeouts == 1);
  CHECK(h.pool->stats().waiting == 0);
}

TEST_CASE("waiters are served first in, first out", "[pool]") {
  Harness h(1, 2000ms);
  std::vector<int> order;
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    auto held = co_await h.pool->acquire(executor);
    REQUIRE(held);
    for (int waiter = 1; waiter <= 3; ++waiter) {
      asio::co_spawn(executor, [&h, &order, waiter]() -> asio::awaitable<void> {
        auto lease = co_await h.pool->acquire(co_await asio::this_coro::executor);
        REQUIRE(lease);
        order.push_back(waiter);
        asio::steady_timer pause(co_await asio::this_coro::executor, 5ms);
        co_await pause.async_wait(asio::use_awaitable);
        h.pool->release(std::move(lease.connection), true);
      }, asio::detached);
      asio::steady_timer pause(executor, 5ms);  // let each waiter queue in turn
      co_await pause.async_wait(asio::use_awaitable);
    }
    CHECK(h.pool->stats().waiting == 3);
    h.pool->release(std::move(held.connection), true);
  });
  CHECK(order == std::vector<int>{1, 2, 3});
  CHECK(h.pool->stats().connects == 1);
}

TEST_CASE("past max_waiting_clients acquire fails at once", "[pool]") {
  Harness h(1, 500ms, 1);
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    auto held = co_await h.pool->acquire(executor);
    asio::co_spawn(executor, [&h]() -> asio::awaitable<void> {
      auto lease = co_await h.pool->acquire(co_await asio::this_coro::executor);
      if (lease) h.pool->release(std::move(lease.connection), true);
    }, asio::detached);
    asio::steady_timer pause(executor, 10ms);
    co_await pause.async_wait(asio::use_awaitable);
    const auto start = std::chrono::steady_clock::now();
    auto refused = co_await h.pool->acquire(executor);
    CHECK(std::chrono::steady_clock::now() - start < 50ms);
    CHECK(refused.error == AcquireError::too_many_waiting);
    CHECK(refused.message.find("max_waiting_clients 1") != std::string::npos);
    h.pool->release(std::move(held.connection), true);
  });
  CHECK(h.pool->stats().too_many_waiting == 1);
}

TEST_CASE("a failed connect reports connect_failed and frees its slot", "[pool]") {
  Harness h(1);
  h.fail_connects = true;
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    auto failed = co_await h.pool->acquire(executor);
    CHECK(failed.error == AcquireError::connect_failed);
    CHECK(failed.message.find("connection refused") != std::string::npos);
    h.fail_connects = false;
    auto ok = co_await h.pool->acquire(executor);
    REQUIRE(ok);
    h.pool->release(std::move(ok.connection), true);
  });
  CHECK(h.pool->stats().connect_failures == 1);
  CHECK(h.pool->stats().connecting == 0);
}

TEST_CASE("a connection released as not reusable is closed and a waiter connects anew", "[pool]") {
  Harness h(1, 1000ms);
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    auto held = co_await h.pool->acquire(executor);
    int got = 0;
    asio::co_spawn(executor, [&h, &got]() -> asio::awaitable<void> {
      auto lease = co_await h.pool->acquire(co_await asio::this_coro::executor);
      REQUIRE(lease);
      got = id_of(lease);
      h.pool->release(std::move(lease.connection), true);
    }, asio::detached);
    asio::steady_timer pause(executor, 10ms);
    co_await pause.async_wait(asio::use_awaitable);
    h.pool->release(std::move(held.connection), false);
    asio::steady_timer settle(executor, 10ms);
    co_await settle.async_wait(asio::use_awaitable);
    CHECK(got == 2);
  });
  CHECK(h.pool->stats().idle == 1);
  CHECK(h.pool->stats().busy == 0);
}

TEST_CASE("close fails waiters and refuses new acquires", "[pool]") {
  Harness h(1, 1000ms);
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    auto held = co_await h.pool->acquire(executor);
    AcquireError waiter_error = AcquireError::timeout;
    asio::co_spawn(executor, [&h, &waiter_error]() -> asio::awaitable<void> {
      auto lease = co_await h.pool->acquire(co_await asio::this_coro::executor);
      waiter_error = lease.error;
    }, asio::detached);
    asio::steady_timer pause(executor, 10ms);
    co_await pause.async_wait(asio::use_awaitable);
    const auto start = std::chrono::steady_clock::now();
    h.pool->close();
    asio::steady_timer settle(executor, 10ms);
    co_await settle.async_wait(asio::use_awaitable);
    CHECK(waiter_error == AcquireError::closed);
    CHECK(std::chrono::steady_clock::now() - start < 500ms);
    auto refused = co_await h.pool->acquire(executor);
    CHECK(refused.error == AcquireError::closed);
    h.pool->release(std::move(held.connection), true);
  });
  CHECK(h.pool->stats().idle == 0);
}

TEST_CASE("maintain opens min_connections before any client asks", "[pool]") {
  PoolSettings settings;
  settings.min_connections = 3;
  Harness h(5, 200ms, 100, settings);
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    asio::co_spawn(executor, h.pool->maintain(), asio::detached);
    asio::steady_timer pause(executor, 50ms);
    co_await pause.async_wait(asio::use_awaitable);
    CHECK(h.pool->stats().idle == 3);
    CHECK(h.pool->stats().connects == 3);
    h.pool->close();
  });
}

TEST_CASE("an idle connection that fails its health check is discarded and the lease goes on", "[pool]") {
  PoolSettings settings;
  settings.health_check_after_idle = 0ms;
  Harness h(2, 200ms, 100, settings);
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    auto first = co_await h.pool->acquire(executor);
    REQUIRE(id_of(first) == 1);
    h.pool->release(std::move(first.connection), true);
    h.unhealthy.insert(1);
    asio::steady_timer pause(executor, 2ms);
    co_await pause.async_wait(asio::use_awaitable);
    auto next = co_await h.pool->acquire(executor);
    REQUIRE(next);
    CHECK(id_of(next) == 2);
    h.pool->release(std::move(next.connection), true);
  });
  CHECK(h.pool->stats().health_check_failures == 1);
  CHECK(h.thorough_checks == 1);
  CHECK(h.pool->stats().idle == 1);
}

TEST_CASE("a connection past max_lifetime is closed when returned", "[pool]") {
  PoolSettings settings;
  settings.max_lifetime = 20ms;
  Harness h(1, 200ms, 100, settings);
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    auto lease = co_await h.pool->acquire(executor);
    asio::steady_timer pause(executor, 40ms);
    co_await pause.async_wait(asio::use_awaitable);
    h.pool->release(std::move(lease.connection), true);
  });
  CHECK(h.pool->stats().closed_lifetime == 1);
  CHECK(h.pool->stats().idle == 0);
  CHECK(h.pool->stats().busy == 0);
}

namespace {
asio::awaitable<void> sleep_for(std::chrono::milliseconds duration) {
  asio::steady_timer timer(co_await asio::this_coro::executor, duration);
  co_await timer.async_wait(asio::use_awaitable);
}

PoolSettings resized(const Pool& pool, int max) {
  auto settings = pool.settings();
  settings.max_connections = max;
  return settings;
}
}  // namespace

TEST_CASE("a reload that raises max lets waiters connect at once", "[pool][reload]") {
  Harness h(1, 2000ms);
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    auto held = co_await h.pool->acquire(executor);
    std::vector<int> got;
    for (int i = 0; i < 2; ++i) {
      asio::co_spawn(executor, [&h, &got]() -> asio::awaitable<void> {
        auto lease = co_await h.pool->acquire(co_await asio::this_coro::executor);
        REQUIRE(lease);
        got.push_back(id_of(lease));
        h.pool->release(std::move(lease.connection), true);
      }, asio::detached);
    }
    co_await sleep_for(10ms);
    CHECK(h.pool->stats().waiting == 2);
    const auto start = std::chrono::steady_clock::now();
    h.pool->reconfigure(resized(*h.pool, 3));
    co_await sleep_for(10ms);
    CHECK(std::chrono::steady_clock::now() - start < 500ms);  // not after acquire_timeout
    CHECK(got.size() == 2);
    CHECK(h.pool->stats().waiting == 0);
    h.pool->release(std::move(held.connection), true);
  });
  CHECK(h.pool->stats().connects == 3);
  CHECK(h.pool->stats().idle == 3);
}

TEST_CASE("a reload that lowers max closes idle connections above it and leases above it on return", "[pool][reload]") {
  Harness h(4, 200ms);
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    std::vector<AcquireResult> leases;
    for (int i = 0; i < 4; ++i) leases.push_back(co_await h.pool->acquire(executor));
    h.pool->release(std::move(leases[0].connection), true);
    h.pool->release(std::move(leases[1].connection), true);
    CHECK(h.pool->stats().idle == 2);
    h.pool->reconfigure(resized(*h.pool, 1));
    CHECK(h.pool->stats().idle == 0);  // 2 busy already exceed the new max
    CHECK(h.pool->stats().busy == 2);
    h.pool->release(std::move(leases[2].connection), true);  // 2 > 1: closed
    CHECK(h.pool->stats().idle == 0);
    CHECK(h.pool->stats().busy == 1);
    h.pool->release(std::move(leases[3].connection), true);  // 1 = max: kept
    CHECK(h.pool->stats().idle == 1);
    auto extra = co_await h.pool->acquire(executor);
    REQUIRE(extra);
    auto refused = co_await h.pool->acquire(executor);  // the new max holds
    CHECK(refused.error == AcquireError::timeout);
    CHECK(refused.message.find("1/1 busy") != std::string::npos);
    h.pool->release(std::move(extra.connection), true);
  });
}

TEST_CASE("a reload with a new connector retires every connection opened before", "[pool][reload]") {
  Harness h(3, 200ms);
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    auto idle = co_await h.pool->acquire(executor);
    auto busy = co_await h.pool->acquire(executor);
    h.pool->release(std::move(idle.connection), true);
    h.pool->reconfigure(h.pool->settings(), [](std::string&) -> asio::awaitable<std::unique_ptr<Connection>> {
      co_return std::make_unique<FakeConnection>(100);
    });
    CHECK(h.pool->stats().idle == 0);
    h.pool->release(std::move(busy.connection), true);  // old generation: closed
    CHECK(h.pool->stats().idle == 0);
    CHECK(h.pool->stats().busy == 0);
    auto fresh = co_await h.pool->acquire(executor);
    REQUIRE(fresh);
    CHECK(id_of(fresh) == 100);
    h.pool->release(std::move(fresh.connection), true);
    CHECK(h.pool->stats().idle == 1);
  });
}

TEST_CASE("pause holds acquires without failing them until resume", "[pool][pause]") {
  Harness h(2, 2000ms);
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    auto held = co_await h.pool->acquire(executor);
    auto spare = co_await h.pool->acquire(executor);
    h.pool->release(std::move(spare.connection), true);  // one idle
    h.pool->pause();
    CHECK(h.pool->stats().paused);
    std::vector<int> order;
    for (int waiter = 1; waiter <= 3; ++waiter) {
      asio::co_spawn(executor, [&h, &order, waiter]() -> asio::awaitable<void> {
        auto lease = co_await h.pool->acquire(co_await asio::this_coro::executor);
        REQUIRE(lease);
        order.push_back(waiter);
        co_await sleep_for(5ms);
        h.pool->release(std::move(lease.connection), true);
      }, asio::detached);
      co_await sleep_for(5ms);
    }
    // The lease out finishes and comes back idle; nobody is served while paused.
    h.pool->release(std::move(held.connection), true);
    co_await sleep_for(50ms);
    CHECK(order.empty());
    CHECK(h.pool->stats().waiting == 3);
    CHECK(h.pool->stats().idle == 2);
    CHECK(h.pool->stats().busy == 0);
    h.pool->resume();
    co_await sleep_for(50ms);
    CHECK(order.size() == 3);
    CHECK(order.front() == 1);
    CHECK(h.pool->stats().waiting == 0);
  });
  CHECK(h.pool->stats().connects == 2);
  CHECK_FALSE(h.pool->stats().paused);
}

TEST_CASE("a paused acquire fails at acquire_timeout saying the service is paused", "[pool][pause]") {
  Harness h(2, 150ms);
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    h.pool->pause();
    const auto start = std::chrono::steady_clock::now();
    auto lease = co_await h.pool->acquire(executor);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    CHECK_FALSE(lease);
    CHECK(lease.error == AcquireError::paused);
    CHECK(lease.message.find("paused") != std::string::npos);
    CHECK(elapsed >= 150ms);
    CHECK(elapsed < 400ms);
  });
  CHECK(h.pool->stats().connects == 0);
}

TEST_CASE("idle connections handed to waiters on resume are health-checked first", "[pool][pause]") {
  Harness h(1, 2000ms);
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    auto first = co_await h.pool->acquire(executor);
    h.pool->release(std::move(first.connection), true);
    h.pool->pause();
    int got = 0;
    asio::co_spawn(executor, [&h, &got]() -> asio::awaitable<void> {
      auto lease = co_await h.pool->acquire(co_await asio::this_coro::executor);
      REQUIRE(lease);
      got = id_of(lease);
      h.pool->release(std::move(lease.connection), true);
    }, asio::detached);
    co_await sleep_for(10ms);
    h.closed.insert(1);  // the database restarted meanwhile: the server closed it
    h.pool->resume();
    co_await sleep_for(20ms);
    CHECK(got == 2);
  });
  CHECK(h.pool->stats().health_check_failures == 1);
  CHECK(h.pool->stats().idle == 1);
  CHECK(h.pool->stats().busy == 0);
}

TEST_CASE("a recently used idle connection the server closed is discarded without a round trip", "[pool]") {
  Harness h(2, 200ms);
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    auto first = co_await h.pool->acquire(executor);
    h.pool->release(std::move(first.connection), true);
    h.closed.insert(1);  // e.g. pg_terminate_backend
    auto next = co_await h.pool->acquire(executor);
    REQUIRE(next);
    CHECK(id_of(next) == 2);
    h.pool->release(std::move(next.connection), true);
  });
  CHECK(h.thorough_checks == 0);
  CHECK(h.pool->stats().health_check_failures == 1);
  CHECK(h.pool->stats().idle == 1);
}

TEST_CASE("a returned connection goes to a waiter on its own worker first, passing others over at most six times",
          "[pool]") {
  Harness h(1, 2000ms);
  asio::io_context other;  // a second worker: its waiters' timers live there
  auto guard = asio::make_work_guard(other);
  std::thread other_thread([&other] { other.run(); });
  std::vector<int> order;
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    const void* here = context_key(executor);
    auto held = co_await h.pool->acquire(executor);
    REQUIRE(held);
    held.connection->home = here;
    for (int waiter = 1; waiter <= 9; ++waiter) {
      auto on = waiter == 1 ? asio::any_io_executor(other.get_executor()) : executor;
      asio::co_spawn(executor, [&h, &order, waiter, on, here]() -> asio::awaitable<void> {
        auto lease = co_await h.pool->acquire(on);
        REQUIRE(lease);
        order.push_back(waiter);
        lease.connection->home = here;  // used on this worker again
        co_await sleep_for(5ms);
        h.pool->release(std::move(lease.connection), true);
      }, asio::detached);
      co_await sleep_for(5ms);  // let each waiter queue in turn
    }
    h.pool->release(std::move(held.connection), true);
    co_await sleep_for(200ms);
  });
  guard.reset();
  other_thread.join();
  // Waiter 1 (the other worker) is passed over six times, then served before waiters 8 and 9.
  CHECK(order == std::vector<int>{2, 3, 4, 5, 6, 7, 1, 8, 9});
}

TEST_CASE("try_acquire_now leases a checked idle connection and otherwise leaves the work to acquire",
          "[pool]") {
  PoolSettings settings;
  settings.health_check_after_idle = 50ms;
  Harness h(2, 200ms, 100, settings);
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    const void* here = context_key(executor);
    CHECK(h.pool->try_acquire_now(here) == nullptr);  // nothing idle: acquire() connects
    auto a = co_await h.pool->acquire(executor);
    auto b = co_await h.pool->acquire(executor);
    h.pool->release(std::move(a.connection), true);
    auto fast = h.pool->try_acquire_now(here);
    REQUIRE(fast);
    CHECK(static_cast<FakeConnection*>(fast.get())->id == 1);
    CHECK(h.pool->stats().busy == 2);
    h.pool->release(std::move(fast), true);

    h.pool->pause();
    CHECK(h.pool->try_acquire_now(here) == nullptr);  // paused: acquire() waits in line
    h.pool->resume();

    co_await sleep_for(80ms);  // idle past health_check_after_idle: needs a round trip
    CHECK(h.pool->try_acquire_now(here) == nullptr);
    CHECK(h.pool->stats().idle == 1);  // left for acquire(), which checks it
    auto checked = co_await h.pool->acquire(executor);
    REQUIRE(checked);
    CHECK(h.thorough_checks == 1);
    h.pool->release(std::move(checked.connection), true);

    h.closed.insert(1);  // the server closed it: discarded by the quick check
    CHECK(h.pool->try_acquire_now(here) == nullptr);
    CHECK(h.pool->stats().idle == 0);
    CHECK(h.pool->stats().busy == 1);
    h.pool->release(std::move(b.connection), true);
  });
  CHECK(h.pool->stats().health_check_failures == 1);
}

TEST_CASE("a burst of leases on a cold pool opens at most eight connections at a time, and all succeed",
          "[pool]") {
  asio::io_context io;
  int in_flight = 0;
  int most_in_flight = 0;
  int next_id = 1;
  PoolSettings settings;
  settings.service = "feed";
  settings.max_connections = 50;
  settings.acquire_timeout = 5000ms;
  settings.max_waiting_clients = 100;
  auto pool = std::make_shared<Pool>(
      settings,
      [&](std::string&) -> asio::awaitable<std::unique_ptr<Connection>> {
        most_in_flight = std::max(most_in_flight, ++in_flight);
        asio::steady_timer slow(co_await asio::this_coro::executor, 20ms);  // a fork and a SCRAM exchange
        co_await slow.async_wait(asio::use_awaitable);
        --in_flight;
        co_return std::make_unique<FakeConnection>(next_id++);
      },
      [](Connection&) -> asio::awaitable<bool> { co_return true; });
  constexpr int kClients = 30;
  std::vector<std::unique_ptr<Connection>> held;  // nobody gives back: each lease needs its own
  int failed = 0;
  for (int i = 0; i < kClients; ++i) {
    asio::co_spawn(io, [&]() -> asio::awaitable<void> {
      auto lease = co_await pool->acquire(co_await asio::this_coro::executor);
      if (lease) held.push_back(std::move(lease.connection));
      else ++failed;
    }, asio::detached);
  }
  io.run();
  CHECK(failed == 0);
  CHECK(held.size() == kClients);
  CHECK(most_in_flight == 8);
  CHECK(pool->stats().connects == kClients);
  for (auto& connection : held) pool->release(std::move(connection), true);
}

namespace {

// A pool of 50 whose connector takes `connect_time` (a fork and a SCRAM exchange on a busy machine);
// `clients` leases at once, none given back, so each needs its own connect.
struct ColdBurst {
  int failed = 0;
  std::vector<std::string> messages;
  std::size_t served = 0;
  std::chrono::steady_clock::duration longest{};

  ColdBurst(int clients, std::chrono::milliseconds connect_time, std::chrono::milliseconds acquire_timeout,
            std::chrono::milliseconds connect_timeout) {
    asio::io_context io;
    int next_id = 1;
    PoolSettings settings;
    settings.service = "feed";
    settings.max_connections = 50;
    settings.acquire_timeout = acquire_timeout;
    settings.connect_timeout = connect_timeout;
    settings.max_waiting_clients = 100;
    auto pool = std::make_shared<Pool>(
        settings,
        [&](std::string&) -> asio::awaitable<std::unique_ptr<Connection>> {
          asio::steady_timer slow(co_await asio::this_coro::executor, connect_time);
          co_await slow.async_wait(asio::use_awaitable);
          co_return std::make_unique<FakeConnection>(next_id++);
        },
        [](Connection&) -> asio::awaitable<bool> { co_return true; });
    std::vector<std::unique_ptr<Connection>> held;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < clients; ++i) {
      asio::co_spawn(io, [&]() -> asio::awaitable<void> {
        auto lease = co_await pool->acquire(co_await asio::this_coro::executor);
        longest = std::max(longest, std::chrono::steady_clock::now() - start);
        if (lease) {
          held.push_back(std::move(lease.connection));
        } else {
          ++failed;
          messages.push_back(lease.message);
        }
      }, asio::detached);
    }
    io.run();
    served = held.size();
    for (auto& connection : held) pool->release(std::move(connection), true);
  }
};

}  // namespace

TEST_CASE("leases in line for a connect slot wait past acquire_timeout while the connects progress",
          "[pool]") {
  // Five rounds of eight 100 ms connects: the last leases get theirs after ~500 ms, past the 200 ms
  // acquire_timeout, and none is failed (the pool had room all along; CI failed 112 session-mode
  // logins with "87/250 busy" this way).
  ColdBurst burst(40, 100ms, 200ms, 2000ms);
  CHECK(burst.failed == 0);
  CHECK(burst.served == 40);
  CHECK(burst.longest >= 450ms);
}

TEST_CASE("leases in line for a connect slot fail once no connect started or succeeded for connect_timeout",
          "[pool]") {
  // Connects that take 1 s against a connect_timeout of 300 ms (the fake connector does not enforce
  // it): the first eight are under way, nothing progresses, so the other leases fail at their first
  // acquire_timeout past 300 ms after the connects began: 400 ms, not when the connects end.
  ColdBurst burst(12, 1000ms, 200ms, 300ms);
  CHECK(burst.served == 8);
  REQUIRE(burst.failed == 4);
  CHECK(burst.messages.front().find("within acquire_timeout 200ms") != std::string::npos);
}

namespace {

// Leases a connection and keeps it in `held`; then waits for a second one, holding `token` meanwhile.
asio::awaitable<void> hold_then_wait(Pool& pool, std::unique_ptr<Connection>& held,
                                     [[maybe_unused]] std::shared_ptr<int> token,
                                     bool& served) {
  auto executor = co_await asio::this_coro::executor;
  held = std::move((co_await pool.acquire(executor)).connection);
  auto lease = co_await pool.acquire(executor);
  served = true;
}

asio::awaitable<void> timed_acquire(Pool& pool, AcquireError& error, std::chrono::milliseconds& waited) {
  const auto start = std::chrono::steady_clock::now();
  auto lease = co_await pool.acquire(co_await asio::this_coro::executor);
  waited = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  error = lease ? AcquireError::closed : lease.error;
}

}  // namespace

TEST_CASE("a worker shut down while a lease waits drops the suspended acquire and what it held", "[pool]") {
  Harness h(1, 5000ms);
  std::unique_ptr<Connection> held;
  std::weak_ptr<int> seen;
  bool served = false;
  {
    asio::io_context worker;
    auto token = std::make_shared<int>(0);
    seen = token;
    asio::co_spawn(worker, hold_then_wait(*h.pool, held, std::move(token), served), asio::detached);
    worker.run_for(50ms);
    REQUIRE(held);
    CHECK(h.pool->stats().waiting == 1);
    CHECK_FALSE(seen.expired());  // the suspended acquire's caller holds it
  }  // the worker is destroyed with the acquire suspended: its acquire_timeout timer never fired
  CHECK(seen.expired());
  CHECK_FALSE(served);
  CHECK(h.pool->stats().waiting == 0);
  h.pool->release(std::move(held), true);
  CHECK(h.pool->stats().idle == 1);
}

TEST_CASE("waiters on two workers each fail at their own acquire_timeout", "[pool]") {
  Harness h(1, 300ms);
  asio::io_context other;  // a second worker, with its own acquire_timeout timer
  auto guard = asio::make_work_guard(other);
  std::thread other_thread([&other] { other.run(); });
  AcquireError first_error = AcquireError::closed;
  AcquireError second_error = AcquireError::closed;
  std::chrono::milliseconds first_waited{};
  std::chrono::milliseconds second_waited{};
  h.run([&]() -> asio::awaitable<void> {
    auto held = co_await h.pool->acquire(co_await asio::this_coro::executor);
    REQUIRE(held);
    asio::co_spawn(other, timed_acquire(*h.pool, first_error, first_waited), asio::detached);
    co_await sleep_for(150ms);
    const auto start = std::chrono::steady_clock::now();
    co_await timed_acquire(*h.pool, second_error, second_waited);
    // The other worker's waiter failed first, at its own deadline, not this one's.
    CHECK(std::chrono::steady_clock::now() - start >= 300ms);
    h.pool->release(std::move(held.connection), true);
  });
  guard.reset();
  other_thread.join();
  CHECK(first_error == AcquireError::timeout);
  CHECK(second_error == AcquireError::timeout);
  CHECK(first_waited >= 300ms);
  CHECK(first_waited < 550ms);
  CHECK(second_waited >= 300ms);
  CHECK(second_waited < 550ms);
  CHECK(h.pool->stats().acquire_timeouts == 2);
}

TEST_CASE("a reload that shortens acquire_timeout applies to leases that wait from then on", "[pool][reload]") {
  Harness h(1, 3000ms);
  AcquireError early_error = AcquireError::closed;
  AcquireError late_error = AcquireError::closed;
  std::chrono::milliseconds early_waited{};
  std::chrono::milliseconds late_waited{};
  h.run([&]() -> asio::awaitable<void> {
    auto executor = co_await asio::this_coro::executor;
    auto held = co_await h.pool->acquire(executor);
    REQUIRE(held);
    asio::co_spawn(executor, timed_acquire(*h.pool, early_error, early_waited), asio::detached);
    co_await sleep_for(20ms);
    auto settings = h.pool->settings();
    settings.acquire_timeout = 200ms;
    h.pool->reconfigure(settings);
    // This worker's timer was armed for the first waiter's 3 s: it is armed again, earlier.
    co_await timed_acquire(*h.pool, late_error, late_waited);
    CHECK(h.pool->stats().waiting == 1);  // the first one waits on
    h.pool->release(std::move(held.connection), true);
    co_await sleep_for(20ms);
  });
  CHECK(late_error == AcquireError::timeout);
  CHECK(late_waited >= 200ms);
  CHECK(late_waited < 450ms);
  CHECK(early_error == AcquireError::closed);  // served (the sentinel for "got a lease")
  CHECK(h.pool->stats().acquire_timeouts == 1);
}
