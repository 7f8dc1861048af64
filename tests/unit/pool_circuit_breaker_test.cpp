// The per-backend circuit breaker (DESIGN §3) as a state machine on a fake clock: no waiting, no
// network.
#include <atomic>
#include <catch.hpp>
#include <cstdint>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <vector>

#include "pgsluice/pool/circuit_breaker.hpp"

using namespace pgsluice::pool;
using namespace std::chrono_literals;

using State = CircuitBreaker::State;
using Kind = CircuitBreaker::Admission::Kind;

namespace {

// Time that moves only when the test says so. Atomic so the threaded test may share it.
struct FakeClock {
  std::atomic<Clock::rep> ticks{1'000'000'000};

  Clock::time_point now() const { return Clock::time_point(Clock::duration(ticks.load())); }
  void advance(Clock::duration by) { ticks.fetch_add(by.count()); }
  CircuitBreaker::Now source() {
    return [this] { return now(); };
  }
};

// failure_threshold 5, open_for 2 s, max_open_for 30 s: the values the tests below count with.
CircuitBreakerSettings defaults() {
  return {};
}

// Drives a closed breaker open with exactly failure_threshold failures.
void trip(CircuitBreaker& breaker) {
  for (int i = 1; i < breaker.settings().failure_threshold; ++i) {
    REQUIRE_FALSE(breaker.record_failure());
  }
  REQUIRE(breaker.record_failure());
  REQUIRE(breaker.state() == State::open);
}

}  // namespace

TEST_CASE("circuit breaker: opens after exactly failure_threshold consecutive failures, not before") {
  FakeClock clock;
  CircuitBreaker breaker(defaults(), clock.source());
  REQUIRE(breaker.state() == State::closed);

  for (int i = 1; i <= 4; ++i) {
    CHECK_FALSE(breaker.record_failure());
    CHECK(breaker.state() == State::closed);
    CHECK(breaker.consecutive_failures() == i);
    CHECK(breaker.admit().kind == Kind::allowed);
  }
  CHECK(breaker.record_failure());  // the fifth: this call opened it
  CHECK(breaker.state() == State::open);
  CHECK(breaker.trips() == 1);
  CHECK(breaker.retry_in() == 2s);
  CHECK(breaker.admit().kind == Kind::refused);
}

TEST_CASE("circuit breaker: a success between failures resets the consecutive count") {
  FakeClock clock;
  CircuitBreaker breaker(defaults(), clock.source());

  for (int i = 0; i < 4; ++i) {
    REQUIRE_FALSE(breaker.record_failure());
  }
  breaker.record_success();
  CHECK(breaker.consecutive_failures() == 0);
  for (int i = 0; i < 4; ++i) {
    CHECK_FALSE(breaker.record_failure());
  }
  CHECK(breaker.state() == State::closed);  // 8 failures in all, never 5 in a row
  CHECK(breaker.trips() == 0);
  CHECK(breaker.record_failure());
  CHECK(breaker.state() == State::open);
}

TEST_CASE("circuit breaker: while open, admit refuses at once with the exact time until the probe") {
  FakeClock clock;
  CircuitBreaker breaker(defaults(), clock.source());
  trip(breaker);

  auto refused = breaker.admit();
  CHECK(refused.kind == Kind::refused);
  CHECK_FALSE(refused.may_connect());
  CHECK(refused.state == State::open);
  CHECK(refused.retry_in == 2s);

  clock.advance(500ms);
  refused = breaker.admit();
  CHECK(refused.kind == Kind::refused);
  CHECK(refused.retry_in == 1500ms);
  CHECK(breaker.retry_in() == 1500ms);

  clock.advance(1499ms + 999us);
  refused = breaker.admit();
  CHECK(refused.kind == Kind::refused);
  CHECK(refused.retry_in == 1us);

  // "Fails in microseconds": refusing does no waiting. 10,000 refusals in under 100 ms of real time
  // is a 10 µs-per-call bound, far above the cost of one uncontended mutex.
  const auto started = std::chrono::steady_clock::now();
  int refusals = 0;
  for (int i = 0; i < 10'000; ++i) {
    refusals += breaker.admit().kind == Kind::refused ? 1 : 0;
  }
  const auto elapsed = std::chrono::steady_clock::now() - started;
  CHECK(refusals == 10'000);
  CHECK(elapsed < 100ms);
  CHECK(breaker.state() == State::open);
}

TEST_CASE("circuit breaker: after open_for exactly one caller is admitted as the probe, others are refused") {
  FakeClock clock;
  CircuitBreaker breaker(defaults(), clock.source());
  trip(breaker);

  clock.advance(2s - 1ns);
  CHECK(breaker.admit().kind == Kind::refused);

  clock.advance(1ns);  // exactly open_for later
  const auto probe = breaker.admit();
  CHECK(probe.kind == Kind::probe);
  CHECK(probe.is_probe());
  CHECK(probe.may_connect());
  CHECK(probe.state == State::half_open);
  CHECK(breaker.state() == State::half_open);

  clock.advance(10s);  // however long the probe takes, nobody else gets one
  for (int i = 0; i < 100; ++i) {
    const auto other = breaker.admit();
    REQUIRE(other.kind == Kind::refused);
    REQUIRE(other.state == State::half_open);
    REQUIRE(other.retry_in == Clock::duration::zero());  // the retry is happening now
  }
  CHECK(breaker.retry_in() == Clock::duration::zero());
  CHECK(breaker.trips() == 1);
}

TEST_CASE("circuit breaker: a successful probe closes the breaker and resets open_for to the base") {
  FakeClock clock;
  CircuitBreaker breaker(defaults(), clock.source());
  trip(breaker);

  // Two failed probes first, so open_for has grown to 8 s.
  for (int i = 0; i < 2; ++i) {
    clock.advance(breaker.retry_in());
    REQUIRE(breaker.admit().is_probe());
    REQUIRE(breaker.record_failure());
  }
  REQUIRE(breaker.open_for() == 8s);

  clock.advance(8s);
  REQUIRE(breaker.admit().is_probe());
  breaker.record_success();
  CHECK(breaker.state() == State::closed);
  CHECK(breaker.consecutive_failures() == 0);
  CHECK(breaker.open_for() == 2s);
  CHECK(breaker.admit().kind == Kind::allowed);
  CHECK(breaker.retry_in() == Clock::duration::zero());

  // The next outage needs a full failure_threshold again and waits the base open_for.
  trip(breaker);
  CHECK(breaker.retry_in() == 2s);
  CHECK(breaker.trips() == 4);
}

TEST_CASE("circuit breaker: a failed probe reopens with open_for doubled, capped at max_open_for") {
  FakeClock clock;
  CircuitBreaker breaker(defaults(), clock.source());
  trip(breaker);
  REQUIRE(breaker.retry_in() == 2s);

  const std::vector<Clock::duration> expected{4s, 8s, 16s, 30s, 30s, 30s};
  for (const auto wait : expected) {
    clock.advance(breaker.retry_in());
    REQUIRE(breaker.admit().is_probe());
    CHECK(breaker.record_failure());  // reopening counts as opening: the pool drops idle connections
    CHECK(breaker.state() == State::open);
    CHECK(breaker.open_for() == wait);
    CHECK(breaker.retry_in() == wait);
    const auto refused = breaker.admit();
    CHECK(refused.kind == Kind::refused);
    CHECK(refused.retry_in == wait);
  }
}

TEST_CASE("circuit breaker: trips counts every move into open, from closed and from half_open") {
  FakeClock clock;
  CircuitBreaker breaker(defaults(), clock.source());
  CHECK(breaker.trips() == 0);

  trip(breaker);  // closed -> open
  CHECK(breaker.trips() == 1);

  clock.advance(2s);
  REQUIRE(breaker.admit().is_probe());
  CHECK(breaker.trips() == 1);        // open -> half_open is not a trip
  REQUIRE(breaker.record_failure());  // half_open -> open
  CHECK(breaker.trips() == 2);

  clock.advance(4s);
  REQUIRE(breaker.admit().is_probe());
  breaker.record_success();  // half_open -> closed
  CHECK(breaker.trips() == 2);

  trip(breaker);
  CHECK(breaker.trips() == 3);
}

TEST_CASE("circuit breaker: reports arriving while open neither move the deadline nor close it") {
  FakeClock clock;
  CircuitBreaker breaker(defaults(), clock.source());
  trip(breaker);
  clock.advance(1s);

  // Stragglers: connects started before the breaker opened, finishing now.
  CHECK_FALSE(breaker.record_failure());
  breaker.record_success();
  CHECK(breaker.state() == State::open);
  CHECK(breaker.trips() == 1);
  CHECK(breaker.retry_in() == 1s);
}

TEST_CASE("circuit breaker: settings that cannot work are rejected") {
  CHECK_THROWS_AS(CircuitBreaker({.failure_threshold = 0}), std::invalid_argument);
  CHECK_THROWS_AS(CircuitBreaker({.open_for = 0ms}), std::invalid_argument);
  CHECK_THROWS_AS(CircuitBreaker({.open_for = 5s, .max_open_for = 4s}), std::invalid_argument);
  CHECK_THROWS_AS(CircuitBreaker({}, CircuitBreaker::Now{}), std::invalid_argument);
  CHECK_NOTHROW(CircuitBreaker({.failure_threshold = 1, .open_for = 1s, .max_open_for = 1s}));
}

TEST_CASE("circuit breaker: a threshold of one opens on the first failure, and the cap may equal the base") {
  FakeClock clock;
  CircuitBreaker breaker({.failure_threshold = 1, .open_for = 3s, .max_open_for = 3s}, clock.source());
  CHECK(breaker.record_failure());
  CHECK(breaker.retry_in() == 3s);
  clock.advance(3s);
  REQUIRE(breaker.admit().is_probe());
  CHECK(breaker.record_failure());
  CHECK(breaker.retry_in() == 3s);
}

TEST_CASE("circuit breaker: to_string names each state") {
  CHECK(std::string_view(to_string(State::closed)) == "closed");
  CHECK(std::string_view(to_string(State::open)) == "open");
  CHECK(std::string_view(to_string(State::half_open)) == "half_open");
}

TEST_CASE("circuit breaker: threads hammering admit and record_* leave a consistent state") {
  FakeClock clock;
  const CircuitBreakerSettings settings{.failure_threshold = 3, .open_for = 1ms, .max_open_for = 8ms};
  CircuitBreaker breaker(settings, clock.source());

  constexpr int thread_count = 8;
  constexpr int iterations = 20'000;
  std::atomic<std::uint64_t> openings{0};  // record_failure() calls that returned true
  std::atomic<std::uint64_t> probes{0};
  std::atomic<std::uint64_t> refusals{0};

  std::vector<std::thread> threads;
  threads.reserve(thread_count);
  for (int t = 0; t < thread_count; ++t) {
    threads.emplace_back([&, seed = std::uint32_t(t + 1) * 2654435761U] {
      std::uint32_t random = seed;
      for (int i = 0; i < iterations; ++i) {
        random = random * 1664525U + 1013904223U;
        const auto admission = breaker.admit();
        if (!admission.may_connect()) {
          ++refusals;
          clock.advance(100us);  // time passes while clients are turned away
          continue;
        }
        if (admission.is_probe()) ++probes;
        if ((random >> 16) % 3 != 0) {
          if (breaker.record_failure()) ++openings;
        } else {
          breaker.record_success();
        }
        (void)breaker.state();
        (void)breaker.retry_in();
        (void)breaker.consecutive_failures();
      }
    });
  }
  for (auto& thread : threads)
    thread.join();

  // Every trip was announced to exactly one caller; each probe followed its own trip.
  CHECK(openings.load() == breaker.trips());
  CHECK(breaker.trips() > 0);
  CHECK(probes.load() > 0);
  CHECK(probes.load() <= breaker.trips());
  CHECK(refusals.load() > 0);
  CHECK(breaker.open_for() >= Clock::duration(settings.open_for));
  CHECK(breaker.open_for() <= Clock::duration(settings.max_open_for));
  switch (breaker.state()) {
    case State::closed:
      CHECK(breaker.consecutive_failures() < settings.failure_threshold);
      break;
    case State::open:
      CHECK(breaker.retry_in() <= Clock::duration(settings.max_open_for));
      break;
    case State::half_open:
      CHECK(breaker.admit().kind == Kind::refused);
      break;
  }

  // Whatever state it ended in, it still recovers: wait out the longest open period, probe, close.
  clock.advance(settings.max_open_for);
  if (breaker.state() == State::open) REQUIRE(breaker.admit().is_probe());
  breaker.record_success();
  CHECK(breaker.state() == State::closed);
  CHECK(breaker.open_for() == Clock::duration(settings.open_for));
  CHECK(breaker.admit().kind == Kind::allowed);
}
