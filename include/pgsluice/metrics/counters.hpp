#pragma once
// Counters the relay increments on its hot path (DESIGN §6): one slot per worker, each on its own
// cache line, so a count is a relaxed add to memory no other thread writes: no lock, no
// allocation, no shared cache line. A scrape sums the slots.
#include <array>
#include <atomic>
#include <cstdint>

namespace pgsluice::metrics {

// The worker the calling thread runs (set once per worker thread; 0 elsewhere).
void set_worker_index(unsigned index);
unsigned worker_index();

// Per service: kept across reloads with the service's pool.
class ServiceCounters {
 public:
  static constexpr unsigned kSlots = 16;  // workers beyond share slots (still correct, atomics)

  void count_queries(std::uint64_t n) { slot().queries.fetch_add(n, std::memory_order_relaxed); }
  void count_transaction() { slot().transactions.fetch_add(1, std::memory_order_relaxed); }

  struct Totals {
    std::uint64_t queries = 0;
    std::uint64_t transactions = 0;
  };
  Totals totals() const;

 private:
  struct alignas(64) Slot {
    std::atomic<std::uint64_t> queries{0};
    std::atomic<std::uint64_t> transactions{0};
  };
  Slot& slot() { return slots_[worker_index() % kSlots]; }
  std::array<Slot, kSlots> slots_{};
};

}  // namespace pgsluice::metrics
