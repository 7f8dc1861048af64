// Per-worker counters (see counters.hpp).
#include "pgsluice/metrics/counters.hpp"

#include <algorithm>

namespace pgsluice::metrics {

namespace {
thread_local unsigned t_worker_index = 0;
}  // namespace

void set_worker_index(unsigned index) { t_worker_index = index; }
unsigned worker_index() { return t_worker_index; }

namespace {

// The buckets' bounds in nanoseconds, for an integer compare on the hot path.
constexpr auto kBoundsNs = [] {
  std::array<std::int64_t, kDurationBuckets.size()> out{};
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::int64_t>(kDurationBuckets[i] * 1e9 + 0.5);
  return out;
}();

}  // namespace

void ServiceCounters::observe(Histogram& histogram, std::chrono::nanoseconds took) {
  const auto ns = std::max<std::int64_t>(0, took.count());
  std::size_t bucket = 0;
  while (bucket < kBoundsNs.size() && ns > kBoundsNs[bucket]) ++bucket;
  histogram.counts[bucket].fetch_add(1, std::memory_order_relaxed);
  histogram.sum_ns.fetch_add(static_cast<std::uint64_t>(ns), std::memory_order_relaxed);
}

void ServiceCounters::add(const Histogram& from, HistogramTotals& into) {
  for (std::size_t i = 0; i < kBuckets; ++i) {
    const auto n = from.counts[i].load(std::memory_order_relaxed);
    into.counts[i] += n;
    into.count += n;
  }
  into.sum_seconds += static_cast<double>(from.sum_ns.load(std::memory_order_relaxed)) / 1e9;
}

bool ServiceCounters::exhausted_report_due(std::uint64_t& happened) {
  exhausted_.fetch_add(1, std::memory_order_relaxed);
  const auto now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                       std::chrono::steady_clock::now().time_since_epoch()).count();
  auto last = exhausted_reported_ns_.load(std::memory_order_relaxed);
  constexpr std::int64_t kEvery = 10'000'000'000;  // 10 s
  if (last != 0 && now - last < kEvery) return false;
  if (!exhausted_reported_ns_.compare_exchange_strong(last, now, std::memory_order_relaxed)) return false;
  happened = exhausted_.exchange(0, std::memory_order_relaxed);
  return true;
}

ServiceCounters::Totals ServiceCounters::totals() const {
  Totals out;
  for (const auto& slot : slots_) {
    out.queries += slot.queries.load(std::memory_order_relaxed);
    out.transactions += slot.transactions.load(std::memory_order_relaxed);
    out.pins += slot.pins.load(std::memory_order_relaxed);
    out.replays += slot.replays.load(std::memory_order_relaxed);
    add(slot.acquire, out.acquire);
    add(slot.query, out.query);
  }
  return out;
}

}  // namespace pgsluice::metrics
