#pragma once
// The per-backend circuit breaker of DESIGN §3: after `failure_threshold` consecutive connect or
// health-check failures it opens, and while open every acquire is refused at once (57P03, DESIGN
// §7) instead of waiting out a timeout against a dead database. After `open_for` exactly one probe
// connect is let through (half_open); its success closes the breaker, its failure reopens it with
// `open_for` doubled up to `max_open_for`.
//
// A pure state machine: no I/O, no timers, no logging. Time comes from the `Now` passed in, so tests
// drive it with a fake clock. Every call takes one uncontended mutex and does no allocation.
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>

namespace pgsluice::pool {

using Clock = std::chrono::steady_clock;

struct CircuitBreakerSettings {
  int failure_threshold = 5;                       // consecutive failures that open the breaker
  std::chrono::milliseconds open_for{2000};        // first wait before a probe; reset when a probe succeeds
  std::chrono::milliseconds max_open_for{30'000};  // cap for the doubling after failed probes
};

class CircuitBreaker {
 public:
  enum class State { closed, open, half_open };

  using Now = std::function<Clock::time_point()>;

  // What admit() tells a caller that wants to open a server connection.
  struct Admission {
    enum class Kind {
      allowed,  // closed: connect as usual
      probe,    // the one half_open probe: the caller must report its outcome with record_*()
      refused,  // open, or a probe is in flight: fail fast with 57P03
    };
    Kind kind = Kind::allowed;
    State state = State::closed;  // the breaker's state after this call
    // refused while open: time until a probe will be admitted ("retrying in N s"). Zero when refused
    // because the probe is in flight right now: its outcome decides, within the caller's
    // connect_timeout.
    Clock::duration retry_in{};

    bool may_connect() const { return kind != Kind::refused; }
    bool is_probe() const { return kind == Kind::probe; }
  };

  // Throws std::invalid_argument when failure_threshold < 1, open_for <= 0 or max_open_for <
  // open_for (bad config: config --check rejects it first).
  explicit CircuitBreaker(CircuitBreakerSettings settings = {}, Now now = &Clock::now);
  CircuitBreaker(const CircuitBreaker&) = delete;
  CircuitBreaker& operator=(const CircuitBreaker&) = delete;

  // May the caller try to connect? In open past the deadline this moves to half_open and admits
  // exactly one caller as the probe; everyone else is refused until that probe reports back. A
  // caller admitted as the probe must call record_success() or record_failure() exactly once, also
  // when it is cancelled (as a failure): until then the breaker stays half_open.
  Admission admit();

  // A connect or health check succeeded. closed: clears the failure count. half_open: closes the
  // breaker and resets open_for to the configured base. open: ignored (a straggler started before
  // the breaker opened; only the probe decides).
  void record_success();

  // A connect or health check failed. Returns true when this call opened the breaker (the pool then
  // drops its idle connections). closed: counts, opening at failure_threshold in a row. half_open:
  // the probe failed; reopens with open_for doubled, capped at max_open_for. open: ignored (does not
  // push the deadline out).
  bool record_failure();

  State state() const;
  // Half-open probes admitted so far.
  std::uint64_t probes() const;
  std::uint64_t trips() const;  // transitions into open, from closed or half_open
  // Time until a probe will be admitted; zero unless open.
  Clock::duration retry_in() const;
  // The wait the current (or next) open period uses: open_for, doubled per failed probe.
  Clock::duration open_for() const;
  int consecutive_failures() const;
  CircuitBreakerSettings settings() const;
  // A reload changed the settings (same validation as the constructor). The state is kept; the new
  // threshold and open_for apply from the next failure or open period on.
  void reconfigure(CircuitBreakerSettings settings);

 private:
  void open_locked(Clock::time_point now);

  CircuitBreakerSettings settings_;
  const Now now_;
  mutable std::mutex mutex_;
  State state_ = State::closed;
  int consecutive_failures_ = 0;
  Clock::duration open_for_;
  Clock::time_point retry_at_{};  // open: when the next admit() becomes the probe
  std::uint64_t probes_ = 0;
  std::uint64_t trips_ = 0;
};

const char* to_string(CircuitBreaker::State state);

}  // namespace pgsluice::pool
