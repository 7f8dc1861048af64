// The Prometheus text format of a scrape (see exposition.hpp), written by prometheus-cpp.
#include "pgsluice/metrics/exposition.hpp"

#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <deque>
#include <iterator>
#include <limits>
#include <utility>

namespace pgsluice::metrics {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;
using Labels = std::vector<ClientMetric::Label>;

class Families {
 public:
  MetricFamily& family(std::string name, std::string help, MetricType type) {
    auto& added = families_.emplace_back();
    added.name = std::move(name);
    added.help = std::move(help);
    added.type = type;
    return added;
  }
  static void gauge(MetricFamily& family, Labels labels, double value) {
    auto& metric = family.metric.emplace_back();
    metric.label = std::move(labels);
    metric.gauge.value = value;
  }
  static void counter(MetricFamily& family, Labels labels, double value) {
    auto& metric = family.metric.emplace_back();
    metric.label = std::move(labels);
    metric.counter.value = value;
  }
  static void histogram(MetricFamily& family, Labels labels, const ServiceCounters::HistogramTotals& totals) {
    auto& metric = family.metric.emplace_back();
    metric.label = std::move(labels);
    metric.histogram.sample_count = totals.count;
    metric.histogram.sample_sum = totals.sum_seconds;
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < kDurationBuckets.size(); ++i) {
      cumulative += totals.counts[i];
      metric.histogram.bucket.push_back({cumulative, kDurationBuckets[i]});
    }
    metric.histogram.bucket.push_back({totals.count, std::numeric_limits<double>::infinity()});
  }
  std::vector<MetricFamily> take() {
    return std::vector<MetricFamily>(std::make_move_iterator(families_.begin()),
                                     std::make_move_iterator(families_.end()));
  }

 private:
  std::deque<MetricFamily> families_;  // references to families stay valid as more are added
};

Labels service_labels(const ServiceSample& s) { return {{"service", s.service}, {"backend", s.backend}}; }

}  // namespace

std::string render_text(const Sample& sample) {
  Families out;
  using T = MetricType;

  Families::gauge(out.family("pgsluice_build_info", "pgsluice's version; always 1", T::Gauge),
                  {{"version", sample.version}}, 1);

  // Client connections by state: waiting for a server connection, holding one, the rest idle.
  std::int64_t waiting = 0, active = 0;
  for (const auto& s : sample.services) {
    waiting += s.pool.waiting;
    active += s.pool.busy;
  }
  const auto idle = std::max<std::int64_t>(0, sample.clients - waiting - active);
  auto& clients = out.family("pgsluice_client_connections",
                             "Client connections by state: active (holding a server connection), waiting (for "
                             "one), idle",
                             T::Gauge);
  Families::gauge(clients, {{"state", "active"}}, static_cast<double>(std::min(active, sample.clients)));
  Families::gauge(clients, {{"state", "waiting"}}, static_cast<double>(waiting));
  Families::gauge(clients, {{"state", "idle"}}, static_cast<double>(idle));

  auto& servers = out.family("pgsluice_server_connections",
                             "Server connections of each service's pool by state", T::Gauge);
  auto& max = out.family("pgsluice_pool_max_connections", "The pool's configured max_connections", T::Gauge);
  auto& waiting_clients = out.family("pgsluice_waiting_clients", "Clients waiting for a server connection", T::Gauge);
  auto& paused = out.family("pgsluice_pool_paused", "1 while the service is paused (PAUSE)", T::Gauge);
  auto& timeouts = out.family("pgsluice_acquire_timeouts_total",
                              "Acquires that found no server connection within acquire_timeout (53300)", T::Counter);
  auto& fast_fails = out.family("pgsluice_fast_fails_total",
                                "Acquires refused at once, by reason (circuit_open: 57P03, too_many_waiting: 53300)",
                                T::Counter);
  auto& transactions = out.family("pgsluice_transactions_total",
                                  "Client transactions that ended (autocommit statements included)", T::Counter);
  auto& queries = out.family("pgsluice_queries_total", "Client statements (Query and Execute messages)", T::Counter);
  auto& connects = out.family("pgsluice_server_connects_total", "Server connection attempts by result", T::Counter);
  auto& pins = out.family("pgsluice_pins_total",
                          "Clients pinned to their server connection (LISTEN in a transaction, a session advisory "
                          "lock, a temporary table, a WITH HOLD cursor), once per client",
                          T::Counter);
  auto& replays = out.family("pgsluice_state_replays_total",
                             "Leases on which a client's settings were replayed on the server connection", T::Counter);
  auto& acquire = out.family("pgsluice_acquire_duration_seconds",
                             "How long clients waited for a server connection (given or refused)", T::Histogram);
  auto& query = out.family("pgsluice_query_duration_seconds",
                           "From a client's statements going to the server to the ReadyForQuery that ends them",
                           T::Histogram);
  auto& health = out.family("pgsluice_server_health_check_failures_total",
                            "Idle server connections that failed their check before a lease", T::Counter);
  auto& closed = out.family("pgsluice_server_connections_closed_total",
                            "Server connections the pool closed, by reason (idle_timeout, max_lifetime)", T::Counter);
  auto& coalesce_requests = out.family("pgsluice_coalesce_requests_total",
                                       "Statements the coalescer answered or passed back", T::Counter);
  auto& coalesce_executions = out.family("pgsluice_coalesce_executions_total",
                                         "Statements the coalescer ran on the server for them (batches included)",
                                         T::Counter);
  auto& coalesce_saved = out.family("pgsluice_coalesce_shared_total",
                                    "Requests answered by an execution that also answered another request",
                                    T::Counter);
  auto& coalesce_batches = out.family("pgsluice_coalesce_batches_total",
                                      "Batched executions (several parameter values in one statement)", T::Counter);
  auto& coalesce_fallbacks = out.family("pgsluice_coalesce_fallbacks_total",
                                        "Batches that failed and ran again one request at a time", T::Counter);
  auto& coalesce_passed = out.family("pgsluice_coalesce_ineligible_total",
                                     "Statements not coalesced, by reason (locking, volatile_function, view, ...)",
                                     T::Counter);
  auto& coalesce_outcomes = out.family("pgsluice_coalesce_request_outcomes_total",
                                       "Requests the coalescer answered, by how: alone (an execution of its own), shared "
                                       "(one execution for equal values), batched, bypassed (handed back to the "
                                       "session), failed (pool, server lost, query_timeout)",
                                       T::Counter);
  auto& coalesce_batch_size = out.family("pgsluice_coalesce_batch_size",
                                         "Requests taken together by one coalesced execution round", T::Histogram);
  auto& n_plus_one = out.family("pgsluice_n_plus_one_total",
                                "Likely N+1 patterns logged (a client running one statement shape many times in a "
                                "row with other values; at most once a minute per shape)",
                                T::Counter);
  for (const auto& s : sample.services) {
    const auto labels = service_labels(s);
    auto with = [&labels](std::string name, std::string value) {
      auto more = labels;
      more.push_back({std::move(name), std::move(value)});
      return more;
    };
    Families::gauge(servers, with("state", "active"), s.pool.busy);
    Families::gauge(servers, with("state", "idle"), s.pool.idle);
    Families::gauge(servers, with("state", "connecting"), s.pool.connecting);
    Families::gauge(max, labels, s.max_connections);
    Families::gauge(waiting_clients, labels, s.pool.waiting);
    Families::gauge(paused, labels, s.pool.paused ? 1 : 0);
    Families::counter(timeouts, labels, static_cast<double>(s.pool.acquire_timeouts));
    Families::counter(fast_fails, with("reason", "circuit_open"), static_cast<double>(s.pool.circuit_open));
    Families::counter(fast_fails, with("reason", "too_many_waiting"), static_cast<double>(s.pool.too_many_waiting));
    Families::counter(transactions, labels, static_cast<double>(s.work.transactions));
    Families::counter(queries, labels, static_cast<double>(s.work.queries));
    Families::counter(pins, labels, static_cast<double>(s.work.pins));
    Families::counter(replays, labels, static_cast<double>(s.work.replays));
    Families::histogram(acquire, labels, s.work.acquire);
    Families::histogram(query, labels, s.work.query);
    Families::counter(connects, with("result", "success"), static_cast<double>(s.pool.connects));
    Families::counter(connects, with("result", "failure"), static_cast<double>(s.pool.connect_failures));
    Families::counter(health, labels, static_cast<double>(s.pool.health_check_failures));
    Families::counter(closed, with("reason", "idle_timeout"), static_cast<double>(s.pool.closed_idle));
    Families::counter(closed, with("reason", "max_lifetime"), static_cast<double>(s.pool.closed_lifetime));
    if (s.coalesce) {
      Families::counter(coalesce_requests, labels, static_cast<double>(s.coalesce->requests));
      Families::counter(coalesce_executions, labels, static_cast<double>(s.coalesce->executions));
      Families::counter(coalesce_saved, labels, static_cast<double>(s.coalesce->shared));
      Families::counter(coalesce_batches, labels, static_cast<double>(s.coalesce->batches));
      Families::counter(coalesce_fallbacks, labels, static_cast<double>(s.coalesce->fallbacks));
      Families::counter(n_plus_one, labels, static_cast<double>(s.coalesce->n_plus_one));
      const auto& c = *s.coalesce;
      for (std::size_t i = 0; i < c.outcomes.size(); ++i) {
        Families::counter(coalesce_outcomes, with("outcome", coalesce::CoalescerStats::kOutcomeNames[i]),
                          static_cast<double>(c.outcomes[i]));
      }
      {
        auto& metric = coalesce_batch_size.metric.emplace_back();
        metric.label = labels;
        std::uint64_t cumulative = 0;
        for (std::size_t i = 0; i < c.kBatchSizeBounds.size(); ++i) {
          cumulative += c.batch_sizes[i];
          metric.histogram.bucket.push_back({cumulative, c.kBatchSizeBounds[i]});
        }
        cumulative += c.batch_sizes.back();
        metric.histogram.bucket.push_back({cumulative, std::numeric_limits<double>::infinity()});
        metric.histogram.sample_count = cumulative;
        metric.histogram.sample_sum = static_cast<double>(c.batch_size_sum);
      }
      for (const auto& [reason, count] : s.coalesce->ineligible) {
        Families::counter(coalesce_passed, with("reason", reason), static_cast<double>(count));
      }
    }
  }

  auto& breaker = out.family("pgsluice_breaker_state", "1 for the circuit breaker's current state", T::Gauge);
  auto& trips = out.family("pgsluice_breaker_trips_total", "Times the backend's circuit breaker opened", T::Counter);
  auto& probes = out.family("pgsluice_breaker_probes_total",
                            "Half-open probe connections the circuit breaker let through", T::Counter);
  for (const auto& b : sample.backends) {
    for (auto state : {pool::CircuitBreaker::State::closed, pool::CircuitBreaker::State::open,
                       pool::CircuitBreaker::State::half_open}) {
      Families::gauge(breaker, {{"backend", b.backend}, {"state", pool::to_string(state)}}, b.state == state ? 1 : 0);
    }
    Families::counter(trips, {{"backend", b.backend}}, static_cast<double>(b.trips));
    Families::counter(probes, {{"backend", b.backend}}, static_cast<double>(b.probes));
  }

  auto& reloads = out.family("pgsluice_config_reloads_total", "Configuration reloads by result", T::Counter);
  Families::counter(reloads, {{"result", "success"}}, static_cast<double>(sample.reloads_success));
  Families::counter(reloads, {{"result", "failure"}}, static_cast<double>(sample.reloads_failure));

  // Families without a sample (no service, no backend) are left out, as Prometheus expects.
  auto families = out.take();
  std::erase_if(families, [](const MetricFamily& family) { return family.metric.empty(); });
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace pgsluice::metrics
