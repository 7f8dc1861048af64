#include "pgsluice/pool/circuit_breaker.hpp"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace pgsluice::pool {

namespace {

const CircuitBreakerSettings& checked(const CircuitBreakerSettings& settings) {
  if (settings.failure_threshold < 1) {
    throw std::invalid_argument("circuit breaker: failure_threshold must be at least 1");
  }
  if (settings.open_for <= std::chrono::milliseconds::zero()) {
    throw std::invalid_argument("circuit breaker: open_for must be positive");
  }
  if (settings.max_open_for < settings.open_for) {
    throw std::invalid_argument("circuit breaker: max_open_for must not be less than open_for");
  }
  return settings;
}

}  // namespace

CircuitBreaker::CircuitBreaker(CircuitBreakerSettings settings, Now now)
    : settings_(checked(settings)), now_(std::move(now)), open_for_(settings_.open_for) {
  if (!now_) throw std::invalid_argument("circuit breaker: no clock");
}

CircuitBreakerSettings CircuitBreaker::settings() const {
  std::lock_guard lock(mutex_);
  return settings_;
}

void CircuitBreaker::reconfigure(CircuitBreakerSettings settings) {
  settings = checked(settings);
  std::lock_guard lock(mutex_);
  settings_ = settings;
  if (state_ == State::closed) {
    open_for_ = settings_.open_for;
  } else {
    open_for_ = std::min(open_for_, Clock::duration(settings_.max_open_for));
  }
}

CircuitBreaker::Admission CircuitBreaker::admit() {
  std::lock_guard lock(mutex_);
  switch (state_) {
    case State::closed:
      return {.kind = Admission::Kind::allowed, .state = state_};
    case State::open: {
      const auto now = now_();
      if (now < retry_at_) {
        return {.kind = Admission::Kind::refused, .state = state_, .retry_in = retry_at_ - now};
      }
      state_ = State::half_open;
      ++probes_;
      return {.kind = Admission::Kind::probe, .state = state_};
    }
    case State::half_open:
      break;
  }
  return {.kind = Admission::Kind::refused, .state = state_};
}

void CircuitBreaker::record_success() {
  std::lock_guard lock(mutex_);
  switch (state_) {
    case State::closed:
      consecutive_failures_ = 0;
      break;
    case State::half_open:
      state_ = State::closed;
      consecutive_failures_ = 0;
      open_for_ = settings_.open_for;
      break;
    case State::open:
      break;
  }
}

bool CircuitBreaker::record_failure() {
  std::lock_guard lock(mutex_);
  switch (state_) {
    case State::closed:
      ++consecutive_failures_;
      if (consecutive_failures_ < settings_.failure_threshold) return false;
      open_locked(now_());
      return true;
    case State::half_open:
      ++consecutive_failures_;
      // Doubling compared against half the cap so it can never overflow the duration.
      open_for_ = open_for_ > Clock::duration(settings_.max_open_for) / 2
                      ? Clock::duration(settings_.max_open_for)
                      : open_for_ * 2;
      open_locked(now_());
      return true;
    case State::open:
      break;
  }
  return false;
}

void CircuitBreaker::open_locked(Clock::time_point now) {
  state_ = State::open;
  retry_at_ = now + open_for_;
  ++trips_;
}

CircuitBreaker::State CircuitBreaker::state() const {
  std::lock_guard lock(mutex_);
  return state_;
}

std::uint64_t CircuitBreaker::trips() const {
  std::lock_guard lock(mutex_);
  return trips_;
}

std::uint64_t CircuitBreaker::probes() const {
  std::lock_guard lock(mutex_);
  return probes_;
}

Clock::duration CircuitBreaker::retry_in() const {
  std::lock_guard lock(mutex_);
  if (state_ != State::open) return Clock::duration::zero();
  return std::max(retry_at_ - now_(), Clock::duration::zero());
}

Clock::duration CircuitBreaker::open_for() const {
  std::lock_guard lock(mutex_);
  return open_for_;
}

int CircuitBreaker::consecutive_failures() const {
  std::lock_guard lock(mutex_);
  return consecutive_failures_;
}

const char* to_string(CircuitBreaker::State state) {
  switch (state) {
    case CircuitBreaker::State::closed:
      return "closed";
    case CircuitBreaker::State::open:
      return "open";
    case CircuitBreaker::State::half_open:
      return "half_open";
  }
  return "unknown";
}

}  // namespace pgsluice::pool
