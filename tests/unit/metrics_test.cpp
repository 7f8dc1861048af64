// metrics/: the per-worker counters and histograms the relay feeds, and the Prometheus text a
// scrape gets from them. No sockets.
#include <catch.hpp>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "pgsluice/metrics/counters.hpp"
#include "pgsluice/metrics/exposition.hpp"

using namespace pgsluice::metrics;
using namespace std::chrono_literals;

TEST_CASE("durations land in the bucket whose upper bound is the first not below them") {
  ServiceCounters counters;
  counters.observe_acquire(0ns);         // le 0.0001
  counters.observe_acquire(100us);       // exactly on a bound: le 0.0001
  counters.observe_acquire(101us);       // le 0.00025
  counters.observe_acquire(300ms);       // le 0.5
  counters.observe_acquire(11s);         // +Inf only
  counters.observe_acquire(-5ns);        // a clock that went back counts as 0
  const auto totals = counters.totals().acquire;
  CHECK(totals.count == 6);
  CHECK(totals.counts[0] == 3);
  CHECK(totals.counts[1] == 1);
  CHECK(totals.counts[11] == 1);  // 0.5
  CHECK(totals.counts[16] == 1);  // above 10 s
  CHECK(totals.sum_seconds == Approx(11.300201).epsilon(1e-6));
  CHECK(counters.totals().query.count == 0);
}

TEST_CASE("counts from several workers add up") {
  ServiceCounters counters;
  std::vector<std::thread> threads;
  for (unsigned worker = 0; worker < 4; ++worker) {
    threads.emplace_back([&counters, worker] {
      set_worker_index(worker);
      for (int i = 0; i < 10000; ++i) {
        counters.count_queries(2);
        counters.count_transaction();
        counters.observe_query(1ms);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  const auto totals = counters.totals();
  CHECK(totals.queries == 80000);
  CHECK(totals.transactions == 40000);
  CHECK(totals.query.count == 40000);
}

TEST_CASE("pool exhausted is reported at most once in 10 s, with what happened since") {
  ServiceCounters counters;
  std::uint64_t happened = 0;
  CHECK(counters.exhausted_report_due(happened));
  CHECK(happened == 1);
  for (int i = 0; i < 5; ++i) CHECK_FALSE(counters.exhausted_report_due(happened));
}

TEST_CASE("the text format has every family once, cumulative buckets, and escaped labels") {
  Sample sample;
  sample.version = "1.2.3";
  sample.clients = 3;
  auto& service = sample.services.emplace_back();
  service.service = "ap\"p";
  service.backend = "primary";
  service.max_connections = 5;
  service.pool.busy = 1;
  service.pool.waiting = 1;
  service.pool.acquire_timeouts = 7;
  ServiceCounters counters;
  counters.observe_acquire(50us);
  counters.observe_acquire(2ms);
  service.work = counters.totals();
  auto& backend = sample.backends.emplace_back();
  backend.backend = "primary";
  backend.state = pgsluice::pool::CircuitBreaker::State::open;
  backend.trips = 2;
  const auto text = render_text(sample);
  CHECK(text.find("pgsluice_build_info{version=\"1.2.3\"} 1\n") != std::string::npos);
  CHECK(text.find("pgsluice_client_connections{state=\"idle\"} 1\n") != std::string::npos);
  CHECK(text.find("pgsluice_acquire_timeouts_total{service=\"ap\\\"p\",backend=\"primary\"} 7\n") != std::string::npos);
  CHECK(text.find("pgsluice_acquire_duration_seconds_bucket{service=\"ap\\\"p\",backend=\"primary\",le=\"0.0001\"} 1\n") !=
        std::string::npos);
  CHECK(text.find("pgsluice_acquire_duration_seconds_bucket{service=\"ap\\\"p\",backend=\"primary\",le=\"0.0025\"} 2\n") !=
        std::string::npos);
  CHECK(text.find("pgsluice_acquire_duration_seconds_bucket{service=\"ap\\\"p\",backend=\"primary\",le=\"+Inf\"} 2\n") !=
        std::string::npos);
  CHECK(text.find("pgsluice_breaker_state{backend=\"primary\",state=\"open\"} 1\n") != std::string::npos);
  CHECK(text.find("pgsluice_breaker_state{backend=\"primary\",state=\"closed\"} 0\n") != std::string::npos);
  std::size_t types = 0;
  for (auto at = text.find("# TYPE pgsluice_breaker_state "); at != std::string::npos;
       at = text.find("# TYPE pgsluice_breaker_state ", at + 1)) {
    ++types;
  }
  CHECK(types == 1);
}
