#pragma once
// A per-service bounded pool of server connections (DESIGN §3). It knows a connection only as
// "healthy and reusable, or not": no wire format here. Waiting is a coroutine suspension with a
// deadline; waiters are served first in, first out. The deadlines are kept by one timer per worker
// that has waiters (a Room), not one per waiting lease.
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "pgsluice/pool/circuit_breaker.hpp"

namespace pgsluice::pool {

using Clock = std::chrono::steady_clock;

// What a pool holds. ServerConnection derives from it.
class Connection {
 public:
  virtual ~Connection() = default;
  // A cheap local look, no round trip: is it still open, with nothing unread? Checked on every
  // lease of an idle connection (a server that closed it meanwhile is noticed here).
  virtual bool looks_usable() { return true; }
  // The number the server knows it by (Postgres: the backend's pid), for operators; 0: none.
  virtual std::uint32_t server_id() const { return 0; }
  Clock::time_point created_at = Clock::now();
  Clock::time_point last_used = Clock::now();
  Clock::time_point expires_at = Clock::time_point::max();  // max_lifetime, with jitter
  std::uint64_t generation = 0;  // the pool's generation when opened; older ones are not reused
  // The worker (execution context, see context_key) whose thread last used it: acquire prefers an
  // idle connection already at home on the caller's worker. Opaque to the pool.
  const void* home = nullptr;
};

// Identifies the execution context (worker) an executor runs on.
inline const void* context_key(const boost::asio::any_io_executor& executor) {
  return &boost::asio::query(executor, boost::asio::execution::context);
}

struct PoolSettings {
  std::string service;
  int max_connections = 10;
  int min_connections = 0;
  std::chrono::milliseconds acquire_timeout{1000};
  int max_waiting_clients = 0;  // 0: no limit of its own
  std::chrono::milliseconds idle_timeout{600'000};             // idle above min are closed after this
  std::chrono::milliseconds max_lifetime{3'600'000};           // 0 = unlimited; ±10 % jitter
  std::chrono::milliseconds health_check_after_idle{30'000};   // idle longer: checked before lease
  // The backend's: the connector gives up after it. A lease in line for a connect slot (the pool has
  // room, the connects under way are the limit) waits past acquire_timeout while connects keep
  // starting or succeeding within it.
  std::chrono::milliseconds connect_timeout{2000};
};

// Why an acquire failed; the session turns it into the SQLSTATE of DESIGN §7.
enum class AcquireError { timeout, too_many_waiting, connect_failed, circuit_open, closed, paused };

struct AcquireResult {
  std::unique_ptr<Connection> connection;  // set on success
  AcquireError error = AcquireError::timeout;
  std::string message;  // for the client: names the service and the pool's state
  explicit operator bool() const { return connection != nullptr; }
};

// Opens one new connection; returns nullptr and sets `error` on failure.
using Connector = std::function<boost::asio::awaitable<std::unique_ptr<Connection>>(std::string& error)>;
// A round trip that proves an idle connection still works, for one idle past
// health_check_after_idle (Connection::looks_usable() has passed already).
using HealthCheck = std::function<boost::asio::awaitable<bool>(Connection&)>;

struct PoolStats {
  int idle = 0;
  int busy = 0;
  int connecting = 0;
  int waiting = 0;
  std::uint64_t acquires = 0;
  std::uint64_t acquire_timeouts = 0;
  std::uint64_t too_many_waiting = 0;
  std::uint64_t circuit_open = 0;  // refused at once: the backend's circuit breaker is open
  std::uint64_t connects = 0;
  std::uint64_t connect_failures = 0;
  std::uint64_t health_check_failures = 0;
  std::uint64_t closed_idle = 0;      // idle_timeout
  std::uint64_t closed_lifetime = 0;  // max_lifetime
  bool paused = false;
};

class Pool : public std::enable_shared_from_this<Pool> {
 public:
  struct Waiter;  // one lease in line; defined in pool.cpp, opaque outside it

  Pool(PoolSettings settings, Connector connector, HealthCheck health_check = {});
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // Leases a connection for the calling coroutine (which runs on `executor`): an idle one, else a
  // new one under max, else waits (FIFO) until acquire_timeout. Past it only while in line for a
  // connect slot with the connects ahead making progress (see PoolSettings::connect_timeout).
  boost::asio::awaitable<AcquireResult> acquire(boost::asio::any_io_executor executor);
  // acquire()'s synchronous fast path: an idle connection that passes the quick check (preferring
  // one at `home`, see context_key), when nobody waits and nothing needs a round trip or the
  // breaker. nullptr: call acquire().
  std::unique_ptr<Connection> try_acquire_now(const void* home);
  // acquire() without a coroutine for the caller, for the common wait under load: after
  // try_acquire_now() gave nothing, enqueue_now() puts the caller in line (nullptr: acquire() must
  // serve it: a connect, the breaker, a full line, closed); when_ready() gives the handler run on
  // the caller's worker once it is served, failed or timed out; then end_wait() says how it went,
  // or nothing when finish_wait() must finish it (a health-check round trip or a connect).
  std::shared_ptr<Waiter> enqueue_now(const boost::asio::any_io_executor& executor);
  static void when_ready(const std::shared_ptr<Waiter>& waiter, boost::asio::any_completion_handler<void()> on_ready);
  std::optional<AcquireResult> end_wait(Waiter& waiter);
  boost::asio::awaitable<AcquireResult> finish_wait(std::shared_ptr<Waiter> waiter);
  // Gives a leased connection back. `reusable` false (broken, dirty, failed reset) closes it.
  void release(std::unique_ptr<Connection> connection, bool reusable);

  // The backend's circuit breaker (shared by every pool on that backend) and what to do when it
  // opens (trip() on each of those pools). Set before the first acquire.
  void set_breaker(std::shared_ptr<CircuitBreaker> breaker, std::function<void()> on_trip);
  // The breaker opened: close idle connections and fail every waiter at once with circuit_open.
  void trip();

  // Background upkeep until close(): opens connections up to min_connections, closes idle ones past
  // idle_timeout (above min) or max_lifetime. Spawn once per pool on any executor.
  boost::asio::awaitable<void> maintain();

  // A reload changed the service (DESIGN §5). New limits apply at once: a larger max lets waiters
  // connect, a smaller one closes idle connections above it and leases above it when returned.
  // With a new `connector` (the server address or credentials changed) every connection opened
  // before is closed: idle ones now, leased ones when returned.
  void reconfigure(PoolSettings settings, Connector connector = {}, HealthCheck health_check = {});

  // PAUSE: no connection is leased until resume(); acquires wait in line as when the pool is full
  // and fail only at acquire_timeout (AcquireError::paused). Leases out run to their end and come
  // back idle. RESUME serves the waiters first in, first out.
  void pause();
  void resume();

  PoolStats stats() const;
  // The idle connections, for the admin console (SHOW SERVERS).
  struct IdleConnection {
    std::uint32_t server_id = 0;
    Clock::time_point created_at;
    Clock::time_point last_used;
  };
  std::vector<IdleConnection> idle_connections() const;
  PoolSettings settings() const;
  // Closes idle connections and fails every waiter; leases still out are closed when released.
  // `why` ends the message acquires get from then on ("service \"x\" <why>").
  void close(std::string why = "is shutting down");

  struct Room;  // a worker's acquire_timeout timer; defined in pool.cpp

 private:
  struct RoomWatch;  // the handler of a room's timer
  std::string state_text_locked() const;
  AcquireResult closed_result() const;
  AcquireResult circuit_open_result(Clock::duration retry_in) const;
  // The connect of a lease that holds a slot in connecting_ (acquire() and finish_wait()).
  boost::asio::awaitable<AcquireResult> connect_reserved();
  // Runs the connector (the caller holds a connect slot), stamps max_lifetime, tells the breaker.
  boost::asio::awaitable<std::unique_ptr<Connection>> connect_one(std::string& error);
  // Reports a connect or thorough health-check outcome to the breaker.
  void record_outcome(bool success);
  int total_locked() const { return busy_ + connecting_ + static_cast<int>(idle_.size()); }
  Clock::time_point lifetime_deadline_locked() const;
  enum class IdleVerdict { usable, expired, unhealthy, needs_round_trip };
  // How long an idle connection may sit before its lease costs a round trip (max: no health check).
  Clock::duration round_trip_after_locked() const {
    return *health_check_ ? Clock::duration(settings_.health_check_after_idle) : Clock::duration::max();
  }
  // Past max_lifetime? Still open? needs_round_trip when idle longer than `round_trip_after`.
  static IdleVerdict quick_check(Connection& connection, Clock::duration round_trip_after);
  // The health check's round trip (only for a connection quick_check sent there).
  boost::asio::awaitable<IdleVerdict> round_trip_check(Connection& connection);
  // Gives `connection` to a waiter (see the same-worker rule inside) and returns it, to be woken.
  std::shared_ptr<Waiter> hand_over_locked(std::unique_ptr<Connection> connection, bool from_idle);
  // Resumes the waiter's acquire() on its worker, later (posted).
  void wake_locked(const std::shared_ptr<Waiter>& waiter);
  // A room exists while its timer is armed, owned by the pending wait (and listed in rooms_). Counts
  // the waiter in its worker's room; returns the room if its timer must be armed (a new room, or
  // armed earlier) for the waiter's deadline: the caller, on that worker, calls watch() unlocked.
  std::shared_ptr<Room> room_to_watch_locked(Waiter& waiter);
  // A new waiter at the end of the line, with its deadline; `room` set when the caller, on the
  // waiter's worker, must watch() it after unlocking.
  std::shared_ptr<Waiter> join_line_locked(const boost::asio::any_io_executor& executor,
                                           std::shared_ptr<Room>& room);
  // The waiter is out of waiters_ (served, failed or timed out): its room has one waiter less.
  static void left_line_locked(Waiter& waiter);
  // After a wait, on the room's worker: no waiter of this worker is left, so the timer is disarmed
  // (a pending timer would also keep the worker's run() from returning).
  void disarm_if_unused(Room& room);
  // Arms the room's timer for `deadline`; on the room's worker.
  void watch(std::shared_ptr<Room> room, Clock::time_point deadline);
  // The room's timer fired: fails its waiters whose acquire_timeout passed, arms for the next one.
  void sweep(std::shared_ptr<Room> room);
  // The room's worker shut down with its timer pending: drops the suspended acquires of its waiters.
  void abandon(Room& room);
  // At the waiter's acquire_timeout: is it only in line for a connect slot, with connects progressing?
  bool waits_for_connect_progress_locked(const Waiter& waiter, Clock::time_point now) const;
  // A lease starts a connect: it holds one of the kMaxConcurrentConnects slots.
  void begin_connect_locked();
  // Hands idle connections to waiters and lets waiters connect while there is room under max.
  void serve_waiters_locked();

  PoolSettings settings_;
  Connector connector_;
  std::shared_ptr<const HealthCheck> health_check_;  // swapped whole by reconfigure()
  std::shared_ptr<CircuitBreaker> breaker_;
  std::function<void()> on_trip_;
  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<Connection>> idle_;  // most recently used at the back
  std::deque<std::shared_ptr<Waiter>> waiters_;
  std::vector<std::shared_ptr<Room>> rooms_;  // armed ones: one per worker that has waiters
  int busy_ = 0;        // leased out
  int connecting_ = 0;  // slots reserved for connects in progress
  // Connects actually under way, at most kMaxConcurrentConnects for a lease (pool.cpp).
  int in_flight_ = 0;
  Clock::time_point connect_progress_at_{};  // a connect last started or succeeded
  bool closed_ = false;
  std::string closed_why_;
  bool paused_ = false;
  std::uint64_t generation_ = 0;  // bumped when the connector changes
  PoolStats counters_;
  mutable std::atomic<std::uint64_t> circuit_open_refusals_{0};  // counted outside the lock
};

}  // namespace pgsluice::pool
