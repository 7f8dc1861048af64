#pragma once
// What one scrape of /metrics reads (DESIGN §6), gathered by the daemon from the running services
// and backends, and its Prometheus text format (written by prometheus-cpp). Plain data here: the
// prometheus-cpp headers stay in exposition.cpp.
#include <cstdint>
#include <string>
#include <vector>

#include <optional>

#include "pgsluice/coalesce/coalescer.hpp"
#include "pgsluice/metrics/counters.hpp"
#include "pgsluice/pool/circuit_breaker.hpp"
#include "pgsluice/pool/pool.hpp"

namespace pgsluice::metrics {

struct ServiceSample {
  std::string service;
  std::string backend;
  int max_connections = 0;
  pool::PoolStats pool;
  ServiceCounters::Totals work;
  std::int64_t clients = 0;  // logged in to this service
  std::optional<coalesce::CoalescerStats> coalesce;  // coalescing on
};

struct BackendSample {
  std::string backend;
  pool::CircuitBreaker::State state = pool::CircuitBreaker::State::closed;
  std::uint64_t trips = 0;
  std::uint64_t probes = 0;
  int consecutive_failures = 0;
  std::int64_t open_for_ms = 0;  // how long it stays open when it opens next (doubles up to the cap)
  std::int64_t retry_in_ms = 0;  // open: until the next probe
};

struct Sample {
  std::vector<ServiceSample> services;
  std::vector<BackendSample> backends;
  std::int64_t clients = 0;  // logged-in and logging-in client connections
  std::uint64_t reloads_success = 0;
  std::uint64_t reloads_failure = 0;
  std::string version;
};

// The Prometheus text exposition format (version 0.0.4) of `sample`.
std::string render_text(const Sample& sample);

}  // namespace pgsluice::metrics
