#include "pgsluice/pool/pool.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/recycling_allocator.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/this_coro.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <random>

namespace pgsluice::pool {

namespace asio = boost::asio;

struct Pool::Waiter {
  explicit Waiter(const asio::any_io_executor& executor) : executor(executor), home(context_key(executor)) {}
  asio::any_io_executor executor;  // the waiter's worker: `resume` is only touched there
  // The suspended acquire(). Invoked once, on the waiter's worker, by whoever takes the waiter out of
  // waiters_: a wake (handed a connection, a connect slot, or failed) or its room's sweep (timeout).
  // (An optional: Asio 1.81's any_completion_handler move-assignment wraps the handler in itself.)
  std::optional<asio::any_completion_handler<void()>> resume;
  const void* home;               // the waiter's worker
  Clock::time_point deadline{};   // acquire_timeout; guarded by the pool's mutex
  std::shared_ptr<Pool::Room> room;  // of its worker: keeps its deadline
  int passed_over = 0;  // times a later waiter was served first (bounded by kMaxPassedOver)
  std::unique_ptr<Connection> connection;  // handed over by release()
  bool may_connect = false;                // a connect slot was reserved for this waiter
  bool resolved = false;                   // served or failed by a wake: no longer in waiters_
  bool circuit_open = false;               // failed by trip()
  bool from_idle = false;                  // `connection` came from the idle list: check it first
};

// The acquire_timeout of the waiters on one worker. Its timer is armed while the worker has waiters,
// for the earliest of their deadlines; when it fires, the sweep fails those past theirs and arms for
// the next. Waiters are usually served long before their deadline, so this is about one timer wait
// per pool and worker per acquire_timeout, instead of arming and cancelling a timer per wait (which
// cost a timer-queue insertion, a removal and a cancelled handler run on every waiting lease).
struct Pool::Room {
  explicit Room(const asio::any_io_executor& executor) : home(context_key(executor)), timer(executor) {}
  const void* home;
  asio::steady_timer timer;  // only touched on its worker
  // Guarded by the pool's mutex: the deadline the timer is armed for (max: disarmed, out of rooms_),
  // and how many of the worker's waiters are in waiters_.
  Clock::time_point armed_for;
  int waiting = 0;
};

void Pool::set_breaker(std::shared_ptr<CircuitBreaker> breaker, std::function<void()> on_trip) {
  breaker_ = std::move(breaker);
  on_trip_ = std::move(on_trip);
}

AcquireResult Pool::circuit_open_result(Clock::duration retry_in) const {
  circuit_open_refusals_.fetch_add(1, std::memory_order_relaxed);
  const auto seconds = std::chrono::duration_cast<std::chrono::milliseconds>(retry_in).count();
  std::string when = retry_in.count() > 0
                         ? fmt::format("retrying in {:.1f} s", static_cast<double>(seconds) / 1000.0)
                         : std::string("a probe connection is being tried now");
  return AcquireResult{nullptr, AcquireError::circuit_open,
                       fmt::format("pgsluice: database unavailable, circuit open for service \"{}\"; {}",
                                   settings_.service, when)};
}

asio::awaitable<std::unique_ptr<Connection>> Pool::connect_one(std::string& error) {
  Connector connector;
  std::uint64_t generation = 0;
  {
    std::lock_guard lock(mutex_);
    connector = connector_;
    generation = generation_;
  }
  std::unique_ptr<Connection> connection;
  try {
    connection = co_await connector(error);
  } catch (const std::exception& e) {
    error = e.what();
  }
  if (connection) {
    std::lock_guard lock(mutex_);
    connection->expires_at = lifetime_deadline_locked();
    connection->generation = generation;
  }
  record_outcome(connection != nullptr);
  co_return connection;
}

void Pool::record_outcome(bool success) {
  if (!breaker_) return;
  if (success) {
    breaker_->record_success();
  } else if (breaker_->record_failure() && on_trip_) {
    on_trip_();
  }
}

void Pool::trip() {
  std::vector<std::unique_ptr<Connection>> doomed;
  std::lock_guard lock(mutex_);
  doomed.swap(idle_);
  for (auto& waiter : waiters_) {
    waiter->circuit_open = true;
    left_line_locked(*waiter);
    wake_locked(waiter);
  }
  waiters_.clear();
}

Pool::Pool(PoolSettings settings, Connector connector, HealthCheck health_check)
    : settings_(std::move(settings)),
      connector_(std::move(connector)),
      health_check_(std::make_shared<const HealthCheck>(std::move(health_check))) {}

Clock::time_point Pool::lifetime_deadline_locked() const {
  if (settings_.max_lifetime.count() <= 0) return Clock::time_point::max();
  // ±10 % jitter so that connections opened together are not all closed together.
  thread_local std::minstd_rand random(std::random_device{}());
  const auto spread = settings_.max_lifetime.count() / 5;
  const auto jitter = spread > 0 ? static_cast<std::int64_t>(random() % static_cast<std::uint64_t>(spread)) - spread / 2 : 0;
  return Clock::now() + settings_.max_lifetime + std::chrono::milliseconds(jitter);
}

Pool::IdleVerdict Pool::quick_check(Connection& connection, Clock::duration round_trip_after) {
  const auto now = Clock::now();
  if (now >= connection.expires_at) return IdleVerdict::expired;
  if (!connection.looks_usable()) return IdleVerdict::unhealthy;
  if (now - connection.last_used > round_trip_after) return IdleVerdict::needs_round_trip;
  connection.last_used = now;
  return IdleVerdict::usable;
}

asio::awaitable<Pool::IdleVerdict> Pool::round_trip_check(Connection& connection) {
  std::shared_ptr<const HealthCheck> health_check;
  {
    std::lock_guard lock(mutex_);
    health_check = health_check_;
  }
  bool healthy = false;
  try {
    healthy = co_await (*health_check)(connection);
  } catch (const std::exception&) {
    healthy = false;
  }
  record_outcome(healthy);
  if (!healthy) co_return IdleVerdict::unhealthy;
  connection.last_used = Clock::now();
  co_return IdleVerdict::usable;
}

Pool::~Pool() = default;

AcquireResult Pool::closed_result() const {
  return AcquireResult{nullptr, AcquireError::closed, "pgsluice: service \"" + settings_.service + "\" " + closed_why_};
}

std::string Pool::state_text_locked() const {
  return fmt::format("{}/{} busy, {} waiting", busy_ + connecting_, settings_.max_connections, waiters_.size());
}

namespace {

// Leases that open a connection at the same time. Like PgBouncer's one login at a time, but a few: a
// burst of clients on a cold pool (200 after a barrier, in the tests) would otherwise start 200
// forks and SCRAM exchanges at once, each taking longer than connect_timeout on a busy machine, and
// the first timeout opens the circuit for everyone. Beyond this the leases wait in line, served by
// the next connect slot or by a connection returned meanwhile, whichever comes first.
constexpr int kMaxConcurrentConnects = 8;

// Runs on the waiter's worker.
void resume_waiter(const std::shared_ptr<Pool::Waiter>& waiter) {
  if (!waiter->resume) return;
  auto resume = std::move(*waiter->resume);
  waiter->resume.reset();
  std::move(resume)();
}

// A posted wake's hold on its waiter. Should the handler be destroyed without running (the worker
// shut down with the acquire still suspended), it drops the suspended coroutine too: the coroutine
// holds the waiter, the waiter holds the coroutine, and nothing else would break that.
struct WakeHold {
  std::shared_ptr<Pool::Waiter> waiter;
  explicit WakeHold(std::shared_ptr<Pool::Waiter> w) : waiter(std::move(w)) {}
  WakeHold(WakeHold&&) noexcept = default;
  WakeHold& operator=(WakeHold&&) = delete;
  ~WakeHold() {
    if (waiter) waiter->resume.reset();
  }
  void operator()() {
    resume_waiter(waiter);
    waiter.reset();
  }
};

}  // namespace

void Pool::wake_locked(const std::shared_ptr<Waiter>& waiter) {
  waiter->resolved = true;
  // Posted even when the waiter lives on this thread, like PgBouncer activating waiting clients at
  // the end of its loop: the replies of the current epoll batch all reach their clients first, back
  // to back, and the waiters' statements go out after them. Resumed inline instead, each reply
  // would be followed by a statement sent to a server, spreading the replies out so that clients
  // polling many sockets (pgbench) wake once per reply rather than once per burst: measured 40 %
  // more client CPU per transaction and 10-15 % less TPS at 200 clients on a pool of 20.
  asio::post(waiter->executor, WakeHold(waiter));
}

void Pool::begin_connect_locked() {
  ++in_flight_;
  connect_progress_at_ = Clock::now();
}

std::shared_ptr<Pool::Room> Pool::room_to_watch_locked(Waiter& waiter) {
  for (auto& room : rooms_) {
    if (room->home != waiter.home) continue;
    waiter.room = room;
    ++room->waiting;
    if (waiter.deadline >= room->armed_for) return nullptr;  // the timer fires first, sweeps this one too
    room->armed_for = waiter.deadline;                       // a reload shortened acquire_timeout
    return room;
  }
  auto room = std::make_shared<Room>(waiter.executor);
  room->armed_for = waiter.deadline;
  room->waiting = 1;
  rooms_.push_back(room);
  waiter.room = room;
  return room;
}

std::shared_ptr<Pool::Waiter> Pool::join_line_locked(const asio::any_io_executor& executor,
                                                     std::shared_ptr<Room>& room) {
  // From the worker's recycled memory, as Asio's own operations are: one per wait.
  auto waiter = std::allocate_shared<Waiter>(asio::recycling_allocator<Waiter>(), executor);
  waiter->deadline = Clock::now() + settings_.acquire_timeout;
  waiters_.push_back(waiter);
  room = room_to_watch_locked(*waiter);
  return waiter;
}

void Pool::left_line_locked(Waiter& waiter) {
  if (waiter.room) --waiter.room->waiting;
}

void Pool::disarm_if_unused(Room& room) {
  {
    std::lock_guard lock(mutex_);
    if (room.waiting > 0 || room.armed_for == Clock::time_point::max()) return;
    room.armed_for = Clock::time_point::max();
    std::erase_if(rooms_, [&room](const auto& each) { return each.get() == &room; });
  }
  room.timer.cancel();  // on its worker (this one): its handler runs, cancelled, and lets go of the room
}

// The room timer's handler. It owns the room, so the timer is destroyed on its worker while that
// worker exists; the pool holds the pool weakly (a removed service's pool goes away with its last
// lease). Destroyed without running (the worker shut down), it drops the suspended acquires of that
// worker's waiters, for the reason WakeHold gives.
struct Pool::RoomWatch {
  std::weak_ptr<Pool> pool;
  std::shared_ptr<Room> room;
  RoomWatch(std::weak_ptr<Pool> p, std::shared_ptr<Room> r) : pool(std::move(p)), room(std::move(r)) {}
  RoomWatch(RoomWatch&&) noexcept = default;
  RoomWatch& operator=(RoomWatch&&) = delete;
  ~RoomWatch() {
    if (auto self = pool.lock()) self->abandon(*room);
  }
  void operator()(const boost::system::error_code& ec) {
    auto self = pool.lock();
    pool.reset();                                // ran: nothing to abandon
    if (!ec && self) self->sweep(std::move(room));  // cancelled: re-armed for an earlier deadline
  }
};

void Pool::watch(std::shared_ptr<Room> room, Clock::time_point deadline) {
  auto& timer = room->timer;
  timer.expires_at(deadline);  // cancels a wait for a later deadline
  timer.async_wait(RoomWatch(weak_from_this(), std::move(room)));
}

void Pool::sweep(std::shared_ptr<Room> room) {
  std::vector<std::shared_ptr<Waiter>> expired;
  Clock::time_point next = Clock::time_point::max();
  {
    std::lock_guard lock(mutex_);
    // Disarmed after the timer fired but before this ran: a new room keeps the worker's deadlines.
    if (room->armed_for == Clock::time_point::max()) return;
    const auto now = Clock::now();
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      auto& waiter = **it;
      if (waiter.room == room && waiter.deadline <= now) {
        if (!waits_for_connect_progress_locked(waiter, now)) {
          left_line_locked(waiter);
          expired.push_back(std::move(*it));
          it = waiters_.erase(it);
          continue;
        }
        waiter.deadline = now + settings_.acquire_timeout;
      }
      if (waiter.room == room) next = std::min(next, waiter.deadline);
      ++it;
    }
    room->armed_for = next;
    if (next == Clock::time_point::max()) std::erase(rooms_, room);  // no waiters left on this worker
  }
  if (next != Clock::time_point::max()) watch(std::move(room), next);
  for (auto& waiter : expired) resume_waiter(waiter);  // out of waiters_, not resolved: timed out
}

void Pool::abandon(Room& room) {
  std::vector<std::shared_ptr<Waiter>> stranded;
  {
    std::lock_guard lock(mutex_);
    room.armed_for = Clock::time_point::max();
    room.waiting = 0;
    std::erase_if(rooms_, [&room](const auto& each) { return each.get() == &room; });
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if ((*it)->home == room.home) {
        stranded.push_back(std::move(*it));
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }
  // Outside the lock: dropping a coroutine may give back to this pool what it held.
  for (auto& waiter : stranded) waiter->resume.reset();
}

bool Pool::waits_for_connect_progress_locked(const Waiter& waiter, Clock::time_point now) const {
  // acquire_timeout is for a pool that has nothing to give (DESIGN §3: fail fast when it is full or
  // paused). A lease in line only because kMaxConcurrentConnects connects are under way is in line
  // for a connection that is coming: a burst of logins on a cold session-mode pool (200 after a
  // barrier in the tests) needs as many connects and, at 8 at a time on a busy machine, more than
  // one second for them. It keeps waiting while connects start or succeed within connect_timeout;
  // a backend that stops answering fails them (connect_timeout, then the circuit breaker).
  return !waiter.resolved && !closed_ && !paused_ && total_locked() < settings_.max_connections && in_flight_ > 0 &&
         now - connect_progress_at_ < settings_.connect_timeout;
}

std::shared_ptr<Pool::Waiter> Pool::hand_over_locked(std::unique_ptr<Connection> connection, bool from_idle) {
  // First in, first out, with one bounded exception: among the first few waiters, one on the
  // connection's own worker goes first, so its socket need not move and its wake-up does not cross
  // threads. A waiter is passed over at most kMaxPassedOver times, so nobody waits more than a few
  // releases longer for it. (With two passes a third of the leases still moved a socket under a
  // saturated pool; six cut the moves and gave workers: 2 about 10 % more throughput.)
  constexpr std::size_t kLookAhead = 8;
  constexpr int kMaxPassedOver = 6;
  auto chosen = waiters_.begin();
  const auto limit = waiters_.begin() + static_cast<std::ptrdiff_t>(std::min(kLookAhead, waiters_.size()));
  for (auto it = waiters_.begin(); it != limit; ++it) {
    if ((*it)->home == connection->home || (*it)->passed_over >= kMaxPassedOver) {
      chosen = it;
      break;
    }
  }
  for (auto it = waiters_.begin(); it != chosen; ++it) ++(*it)->passed_over;
  auto waiter = *chosen;
  waiters_.erase(chosen);
  left_line_locked(*waiter);
  waiter->connection = std::move(connection);
  waiter->from_idle = from_idle;
  return waiter;
}

std::unique_ptr<Connection> Pool::try_acquire_now(const void* home) {
  std::unique_ptr<Connection> connection;
  Clock::duration round_trip_after{};
  {
    std::lock_guard lock(mutex_);
    if (idle_.empty() || !waiters_.empty() || closed_ || paused_) return nullptr;
    if (breaker_ && breaker_->state() != CircuitBreaker::State::closed) return nullptr;
    round_trip_after = round_trip_after_locked();
    // The same choice as acquire(): the most recently used on the caller's worker, else the most
    // recently used. One idle long enough to need a round trip is left to acquire().
    auto at = std::find_if(idle_.rbegin(), idle_.rend(), [home](const auto& c) { return c->home == home; });
    auto chosen = at == idle_.rend() ? std::prev(idle_.end()) : std::prev(at.base());
    if (Clock::now() - (*chosen)->last_used > round_trip_after) return nullptr;
    connection = std::move(*chosen);
    idle_.erase(chosen);
    ++busy_;
    ++counters_.acquires;
  }
  auto verdict = quick_check(*connection, round_trip_after);
  if (verdict == IdleVerdict::usable) return connection;
  std::lock_guard lock(mutex_);
  --busy_;
  serve_waiters_locked();
  ++(verdict == IdleVerdict::expired ? counters_.closed_lifetime : counters_.health_check_failures);
  return nullptr;  // closed as it goes out of scope; acquire() goes on from here
}

asio::awaitable<AcquireResult> Pool::acquire(asio::any_io_executor executor) {
  std::shared_ptr<Waiter> waiter;  // none: a connect slot was reserved for this call
  std::shared_ptr<Room> room;  // to arm for this waiter's deadline
  bool paused = false;
  {
    std::lock_guard lock(mutex_);
    ++counters_.acquires;
    if (closed_) co_return closed_result();
    paused = paused_;
  }
  bool probe = false;
  if (!paused && breaker_ && breaker_->state() != CircuitBreaker::State::closed) {
    // Fail fast while the backend is known to be down (DESIGN §3): no connect, no wait.
    auto admission = breaker_->admit();
    if (!admission.may_connect()) co_return circuit_open_result(admission.retry_in);
    probe = admission.is_probe();
  }
  // An idle connection first. On the hot path this is synchronous: only one idle past
  // health_check_after_idle costs a round trip (and a coroutine).
  const void* home = context_key(executor);
  while (!probe) {
    std::unique_ptr<Connection> connection;
    Clock::duration round_trip_after{};
    {
      std::lock_guard lock(mutex_);
      if (idle_.empty() || !waiters_.empty() || closed_ || paused_) break;
      // The most recently used one on the caller's worker, else the most recently used.
      auto at = std::find_if(idle_.rbegin(), idle_.rend(), [home](const auto& c) { return c->home == home; });
      auto chosen = at == idle_.rend() ? std::prev(idle_.end()) : std::prev(at.base());
      connection = std::move(*chosen);
      idle_.erase(chosen);
      ++busy_;  // counted while checked, so the slot is not given away meanwhile
      round_trip_after = round_trip_after_locked();
    }
    auto verdict = quick_check(*connection, round_trip_after);
    if (verdict == IdleVerdict::needs_round_trip) verdict = co_await round_trip_check(*connection);
    if (verdict == IdleVerdict::usable) co_return AcquireResult{std::move(connection), {}, {}};
    std::lock_guard lock(mutex_);
    --busy_;
    // The slot is free again; a waiter queued meanwhile may use it.
    serve_waiters_locked();
    ++(verdict == IdleVerdict::expired ? counters_.closed_lifetime : counters_.health_check_failures);
    // `connection` is closed as it goes out of scope; the lease goes on with the next one.
  }
  {
    std::lock_guard lock(mutex_);
    if (closed_) {
      if (probe) breaker_->record_failure();  // the probe must report; this one never ran
      co_return closed_result();
    }
    if (probe) {
      ++connecting_;  // the probe connects even at max: the pool holds nothing while the circuit is open
      begin_connect_locked();
    } else if (!paused_ && total_locked() < settings_.max_connections && waiters_.empty() &&
               in_flight_ < kMaxConcurrentConnects) {
      ++connecting_;
      begin_connect_locked();
    } else if (settings_.max_waiting_clients > 0 &&
               static_cast<int>(waiters_.size()) >= settings_.max_waiting_clients) {
      ++counters_.too_many_waiting;
      co_return AcquireResult{nullptr, AcquireError::too_many_waiting,
                              fmt::format("pgsluice: too many clients waiting for service \"{}\" ({}; "
                                          "max_waiting_clients {})",
                                          settings_.service, state_text_locked(), settings_.max_waiting_clients)};
    } else {
      waiter = join_line_locked(executor, room);
    }
  }

  if (waiter) {
    if (room) watch(std::move(room), waiter->deadline);  // on this worker, the room's
    co_await asio::async_initiate<const asio::use_awaitable_t<>&, void()>(
        [&waiter](auto handler) { waiter->resume.emplace(std::move(handler)); }, asio::use_awaitable);
    if (auto done = end_wait(*waiter)) co_return std::move(*done);
    co_return co_await finish_wait(std::move(waiter));
  }
  co_return co_await connect_reserved();
}

std::shared_ptr<Pool::Waiter> Pool::enqueue_now(const asio::any_io_executor& executor) {
  std::shared_ptr<Waiter> waiter;
  std::shared_ptr<Room> room;
  {
    std::lock_guard lock(mutex_);
    // What acquire() would do at once (an idle connection, a connect, a refusal) is left to it.
    if (closed_ || (!idle_.empty() && waiters_.empty() && !paused_)) return nullptr;
    if (breaker_ && breaker_->state() != CircuitBreaker::State::closed) return nullptr;
    if (!paused_ && total_locked() < settings_.max_connections && waiters_.empty() &&
        in_flight_ < kMaxConcurrentConnects) {
      return nullptr;
    }
    if (settings_.max_waiting_clients > 0 && static_cast<int>(waiters_.size()) >= settings_.max_waiting_clients) {
      return nullptr;
    }
    ++counters_.acquires;
    waiter = join_line_locked(executor, room);
  }
  if (room) watch(std::move(room), waiter->deadline);
  return waiter;
}

void Pool::when_ready(const std::shared_ptr<Waiter>& waiter, asio::any_completion_handler<void()> on_ready) {
  waiter->resume.emplace(std::move(on_ready));
}

std::optional<AcquireResult> Pool::end_wait(Waiter& waiter) {
  disarm_if_unused(*waiter.room);
  // Handed over from the idle list (after RESUME or a reload): checked like any idle one. Or given
  // a connect slot. Both are finish_wait()'s.
  if ((waiter.connection && waiter.from_idle) || (!waiter.connection && waiter.may_connect)) return std::nullopt;
  std::lock_guard lock(mutex_);
  if (waiter.connection) {
    waiter.connection->last_used = Clock::now();
    return AcquireResult{std::move(waiter.connection), {}, {}};
  }
  if (waiter.circuit_open) return circuit_open_result(breaker_->retry_in());
  if (waiter.resolved) return closed_result();
  // Timed out: the room's sweep took it out of waiters_.
  ++counters_.acquire_timeouts;
  const auto text = paused_ ? fmt::format("pgsluice: service \"{}\" is paused; no server connection", settings_.service)
                            : fmt::format("pgsluice: no server connection for service \"{}\"", settings_.service);
  return AcquireResult{nullptr, paused_ ? AcquireError::paused : AcquireError::timeout,
                       fmt::format("{} within acquire_timeout {}ms ({})", text, settings_.acquire_timeout.count(),
                                   state_text_locked())};
}

asio::awaitable<AcquireResult> Pool::finish_wait(std::shared_ptr<Waiter> waiter) {
  if (waiter->connection) {
    auto connection = std::move(waiter->connection);
    Clock::duration round_trip_after{};
    {
      std::lock_guard lock(mutex_);
      round_trip_after = round_trip_after_locked();
    }
    auto verdict = quick_check(*connection, round_trip_after);
    if (verdict == IdleVerdict::needs_round_trip) verdict = co_await round_trip_check(*connection);
    if (verdict == IdleVerdict::usable) co_return AcquireResult{std::move(connection), {}, {}};
    std::lock_guard lock(mutex_);
    ++(verdict == IdleVerdict::expired ? counters_.closed_lifetime : counters_.health_check_failures);
    --busy_;
    ++connecting_;  // its slot becomes this waiter's connect slot
    begin_connect_locked();
  }
  co_return co_await connect_reserved();
}

asio::awaitable<AcquireResult> Pool::connect_reserved() {
  // A slot is reserved in connecting_ for this connect.
  std::string error;
  auto connection = co_await connect_one(error);
  std::lock_guard lock(mutex_);
  --connecting_;
  --in_flight_;
  if (connection) {
    ++counters_.connects;
    connect_progress_at_ = Clock::now();
    ++busy_;
    serve_waiters_locked();  // a connect slot is free: the next waiter in line may use it
    co_return AcquireResult{std::move(connection), {}, {}};
  }
  ++counters_.connect_failures;
  // The slot is free again: let the next waiter try its own connect rather than time out.
  serve_waiters_locked();
  co_return AcquireResult{nullptr, AcquireError::connect_failed,
                          fmt::format("pgsluice: cannot connect to the database for service \"{}\": {}",
                                      settings_.service, error)};
}

void Pool::release(std::unique_ptr<Connection> connection, bool reusable) {
  std::vector<std::unique_ptr<Connection>> doomed;  // destroyed outside the lock
  std::lock_guard lock(mutex_);
  const auto now = Clock::now();
  if (reusable && now >= connection->expires_at) {
    reusable = false;
    ++counters_.closed_lifetime;
  }
  // Opened for an address or credentials a reload replaced, or above a max a reload lowered.
  if (connection->generation != generation_ || total_locked() > settings_.max_connections) reusable = false;
  if (reusable && !closed_) {
    connection->last_used = now;
    if (!waiters_.empty() && !paused_) {
      wake_locked(hand_over_locked(std::move(connection), false));  // stays busy: the lease passes on
    } else {
      --busy_;
      idle_.push_back(std::move(connection));
    }
  } else {
    --busy_;
    doomed.push_back(std::move(connection));
    serve_waiters_locked();
  }
}

void Pool::serve_waiters_locked() {
  if (closed_ || paused_) return;
  while (!waiters_.empty() && !idle_.empty()) {
    auto connection = std::move(idle_.back());
    idle_.pop_back();
    ++busy_;
    wake_locked(hand_over_locked(std::move(connection), true));
  }
  while (!waiters_.empty() && total_locked() < settings_.max_connections && in_flight_ < kMaxConcurrentConnects) {
    auto next = waiters_.front();
    waiters_.pop_front();
    left_line_locked(*next);
    next->may_connect = true;
    ++connecting_;
    begin_connect_locked();
    wake_locked(next);
  }
}

void Pool::reconfigure(PoolSettings settings, Connector connector, HealthCheck health_check) {
  std::vector<std::unique_ptr<Connection>> doomed;  // destroyed outside the lock
  std::lock_guard lock(mutex_);
  // The service name is the pool's identity and never changes; everything else may.
  settings_.max_connections = settings.max_connections;
  settings_.min_connections = settings.min_connections;
  settings_.acquire_timeout = settings.acquire_timeout;
  settings_.max_waiting_clients = settings.max_waiting_clients;
  settings_.idle_timeout = settings.idle_timeout;
  settings_.max_lifetime = settings.max_lifetime;
  settings_.health_check_after_idle = settings.health_check_after_idle;
  settings_.connect_timeout = settings.connect_timeout;
  if (health_check) health_check_ = std::make_shared<const HealthCheck>(std::move(health_check));
  if (connector) {
    connector_ = std::move(connector);
    ++generation_;
    doomed.swap(idle_);
  }
  // Above a lowered max: the least recently used idle connections go first.
  while (!idle_.empty() && total_locked() > settings_.max_connections) {
    doomed.push_back(std::move(idle_.front()));
    idle_.erase(idle_.begin());
  }
  serve_waiters_locked();
}

void Pool::pause() {
  std::lock_guard lock(mutex_);
  paused_ = true;
}

void Pool::resume() {
  std::lock_guard lock(mutex_);
  paused_ = false;
  serve_waiters_locked();
}

PoolSettings Pool::settings() const {
  std::lock_guard lock(mutex_);
  return settings_;
}

asio::awaitable<void> Pool::maintain() {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (;;) {
    std::vector<std::unique_ptr<Connection>> doomed;
    int to_open = 0;
    {
      std::lock_guard lock(mutex_);
      if (closed_) co_return;
      const auto now = Clock::now();
      // Oldest-used first: idle_ keeps the most recently used at the back.
      for (auto it = idle_.begin(); it != idle_.end();) {
        const bool expired = now >= (*it)->expires_at;
        const bool surplus = total_locked() - static_cast<int>(doomed.size()) > settings_.min_connections &&
                             now - (*it)->last_used >= settings_.idle_timeout;
        if (expired || surplus) {
          ++(expired ? counters_.closed_lifetime : counters_.closed_idle);
          doomed.push_back(std::move(*it));
          it = idle_.erase(it);
        } else {
          ++it;
        }
      }
      const bool breaker_closed = !breaker_ || breaker_->state() == CircuitBreaker::State::closed;
      to_open = breaker_closed ? std::max(0, settings_.min_connections - total_locked()) : 0;
      connecting_ += to_open;
    }
    doomed.clear();
    for (int i = 0; i < to_open; ++i) {
      std::string error;
      {
        std::lock_guard lock(mutex_);
        begin_connect_locked();
      }
      auto connection = co_await connect_one(error);
      std::lock_guard lock(mutex_);
      --connecting_;
      --in_flight_;
      if (!connection) {
        ++counters_.connect_failures;
        connecting_ -= to_open - i - 1;  // give back the slots of the connects not tried
        break;
      }
      ++counters_.connects;
      connect_progress_at_ = Clock::now();
      if (closed_) break;
      if (!waiters_.empty() && !paused_) {
        ++busy_;
        wake_locked(hand_over_locked(std::move(connection), false));
      } else {
        idle_.push_back(std::move(connection));
      }
    }
    timer.expires_after(std::chrono::seconds(1));
    co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
  }
}

PoolStats Pool::stats() const {
  std::lock_guard lock(mutex_);
  PoolStats out = counters_;
  out.idle = static_cast<int>(idle_.size());
  out.busy = busy_;
  out.connecting = connecting_;
  out.waiting = static_cast<int>(waiters_.size());
  out.paused = paused_;
  out.circuit_open = circuit_open_refusals_.load(std::memory_order_relaxed);
  return out;
}

std::vector<Pool::IdleConnection> Pool::idle_connections() const {
  std::lock_guard lock(mutex_);
  std::vector<IdleConnection> out;
  out.reserve(idle_.size());
  for (const auto& connection : idle_) out.push_back({connection->server_id(), connection->created_at, connection->last_used});
  return out;
}

void Pool::close(std::string why) {
  std::vector<std::unique_ptr<Connection>> doomed;
  std::lock_guard lock(mutex_);
  closed_ = true;
  closed_why_ = std::move(why);
  doomed.swap(idle_);
  for (auto& waiter : waiters_) {
    left_line_locked(*waiter);
    wake_locked(waiter);
  }
  waiters_.clear();
}

}  // namespace pgsluice::pool
