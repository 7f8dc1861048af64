#pragma once
// Counters the relay increments on its hot path (DESIGN §6): one slot per worker, each on its own
// cache line, so a count is a relaxed add to memory no other thread writes: no lock, no
// allocation, no shared cache line. A scrape sums the slots.
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

namespace pgsluice::metrics {

// The worker the calling thread runs (set once per worker thread; 0 elsewhere).
void set_worker_index(unsigned index);
unsigned worker_index();

// The upper bounds of the duration histograms' buckets, in seconds: 100 µs … 10 s (and +Inf).
inline constexpr std::array<double, 16> kDurationBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                            0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                                            1,      2.5,     5,      10};

// Per service: kept across reloads with the service's pool.
class ServiceCounters {
 public:
  static constexpr unsigned kSlots = 16;  // workers beyond share slots (still correct, atomics)
  static constexpr std::size_t kBuckets = kDurationBuckets.size() + 1;  // the last: above 10 s

  // Logged-in clients of the service (at login and logout: not the hot path).
  void client_joined() { clients_.fetch_add(1, std::memory_order_relaxed); }
  void client_left() { clients_.fetch_sub(1, std::memory_order_relaxed); }
  std::int64_t clients() const { return clients_.load(std::memory_order_relaxed); }
  // "Pool exhausted" (an acquire timed out): true at most once every 10 s, with how many happened
  // since the last report (this one included), so that a saturated pool logs a line, not a flood.
  bool exhausted_report_due(std::uint64_t& happened);

  void count_queries(std::uint64_t n) { slot().queries.fetch_add(n, std::memory_order_relaxed); }
  void count_transaction() { slot().transactions.fetch_add(1, std::memory_order_relaxed); }
  // A client pinned to its server connection (once per client), a client's settings replayed on the
  // server connection it was given (transaction mode, DESIGN §2).
  void count_pin() { slot().pins.fetch_add(1, std::memory_order_relaxed); }
  void count_replay() { slot().replays.fetch_add(1, std::memory_order_relaxed); }
  // How long a client waited for a server connection (given or refused).
  void observe_acquire(std::chrono::nanoseconds took) { observe(slot().acquire, took); }
  // From a client's batch going to the server until the ReadyForQuery that ends it.
  void observe_query(std::chrono::nanoseconds took) { observe(slot().query, took); }

  struct HistogramTotals {
    std::array<std::uint64_t, kBuckets> counts{};  // per bucket, not cumulative
    std::uint64_t count = 0;
    double sum_seconds = 0;
  };
  struct Totals {
    std::uint64_t queries = 0;
    std::uint64_t transactions = 0;
    std::uint64_t pins = 0;
    std::uint64_t replays = 0;
    HistogramTotals acquire;
    HistogramTotals query;
  };
  Totals totals() const;

 private:
  struct Histogram {
    std::array<std::atomic<std::uint64_t>, kBuckets> counts{};
    std::atomic<std::uint64_t> sum_ns{0};
  };
  struct alignas(64) Slot {
    std::atomic<std::uint64_t> queries{0};
    std::atomic<std::uint64_t> transactions{0};
    std::atomic<std::uint64_t> pins{0};
    std::atomic<std::uint64_t> replays{0};
    Histogram acquire;
    Histogram query;
  };
  static void observe(Histogram& histogram, std::chrono::nanoseconds took);
  static void add(const Histogram& from, HistogramTotals& into);
  Slot& slot() { return slots_[worker_index() % kSlots]; }
  std::array<Slot, kSlots> slots_{};
  std::atomic<std::int64_t> clients_{0};
  std::atomic<std::uint64_t> exhausted_{0};
  std::atomic<std::int64_t> exhausted_reported_ns_{0};
};

}  // namespace pgsluice::metrics
