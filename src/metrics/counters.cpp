// Per-worker counters (see counters.hpp).
#include "pgsluice/metrics/counters.hpp"

namespace pgsluice::metrics {

namespace {
thread_local unsigned t_worker_index = 0;
}  // namespace

void set_worker_index(unsigned index) { t_worker_index = index; }
unsigned worker_index() { return t_worker_index; }

ServiceCounters::Totals ServiceCounters::totals() const {
  Totals out;
  for (const auto& slot : slots_) {
    out.queries += slot.queries.load(std::memory_order_relaxed);
    out.transactions += slot.transactions.load(std::memory_order_relaxed);
  }
  return out;
}

}  // namespace pgsluice::metrics
