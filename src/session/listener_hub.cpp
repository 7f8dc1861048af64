// The per-service listener connection (see listener_hub.hpp).
#include "pgsluice/session/listener_hub.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include <atomic>

#include "pgsluice/protocol/backend_messages.hpp"
#include "pgsluice/protocol/builder.hpp"

namespace pgsluice::session {

namespace asio = net::asio;

namespace {

std::atomic<std::uint64_t> g_next_subscriber{1};

// An identifier as Postgres reads it in any context: double-quoted, quotes doubled.
std::string quote_identifier(std::string_view name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

}  // namespace

ListenerHub::ListenerHub(asio::any_io_executor executor, std::shared_ptr<const server::ServerTarget> target,
                         std::string service, std::shared_ptr<pool::CircuitBreaker> breaker)
    : executor_(std::move(executor)),
      target_(std::move(target)),
      service_(std::move(service)),
      breaker_(std::move(breaker)) {}

ListenerHub::~ListenerHub() = default;

std::uint64_t ListenerHub::new_subscriber() { return g_next_subscriber.fetch_add(1); }

std::size_t ListenerHub::channel_count() const { return channel_count_.load(); }

net::awaitable<std::optional<ListenerHub::Failure>> ListenerHub::apply(std::uint64_t subscriber,
                                                              std::vector<sql::ListenChange> changes, Deliver deliver) {
  // On the hub's strand, and back to the caller's executor at the end. Named, not temporaries of the
  // co_await expression: g++ 12 destroyed such a temporary twice (GCC PR 99576).
  auto self = shared_from_this();
  auto operation = asio::co_spawn(executor_, apply_here(subscriber, std::move(changes), std::move(deliver)),
                                  asio::use_awaitable);
  auto error = co_await std::move(operation);
  co_return error;
}

void ListenerHub::forget(std::uint64_t subscriber) {
  asio::post(executor_, [self = shared_from_this(), subscriber] { self->forget_here(subscriber); });
}

void ListenerHub::barrier(std::function<void()> done) {
  asio::post(executor_, [self = shared_from_this(), done = std::move(done)]() mutable {
    self->barrier_waiters_.push_back(std::move(done));
    if (self->barrier_running_) return;
    self->barrier_running_ = true;
    asio::co_spawn(self->executor_, self->run_barriers(), asio::detached);
  });
}

net::awaitable<void> ListenerHub::run_barriers() {
  auto self = shared_from_this();
  while (!barrier_waiters_.empty()) {
    // Those that asked before this round trip is sent; later ones wait for the next.
    auto batch = std::move(barrier_waiters_);
    barrier_waiters_.clear();
    if (connection_ && !closed_) {
      // An empty query: the listener's backend sends the notifications it was signalled for
      // before its ReadyForQuery (a committing backend signals before its client hears of it).
      std::string empty;
      co_await command(std::move(empty), false);
    }
    for (auto& done : batch) done();
  }
  barrier_running_ = false;
}

void ListenerHub::close() {
  asio::post(executor_, [self = shared_from_this()] {
    self->closed_ = true;
    self->lose("pgsluice is stopping, or the service was removed or moved by a configuration reload");
    self->closed_done_ = !self->busy_;
  });
}

net::awaitable<std::optional<ListenerHub::Failure>> ListenerHub::apply_here(std::uint64_t subscriber,
                                                                   std::vector<sql::ListenChange> changes,
                                                                   Deliver deliver) {
  auto self = shared_from_this();
  if (closed_) co_return Failure{"08006", "pgsluice: the service's listener connection is closed"};
  for (const auto& change : changes) {
    if (change.listen) {
      if (auto it = subscribers_.find(subscriber); it != subscribers_.end() && it->second.channels.contains(change.channel)) {
        continue;
      }
      auto listeners = channels_.find(change.channel);
      if (listeners == channels_.end() || listeners->second.empty() || unlistening_.contains(change.channel)) {
        // A new channel for the connection: listened to before the client is told it is done.
        // Named, as every argument of a co_await here: g++ 12 destroys a temporary of a co_await
        // expression twice (GCC PR 99576).
        std::string sql = "LISTEN " + quote_identifier(change.channel);
        if (auto error = co_await command(std::move(sql))) {
          // The connection may have been lost meanwhile (then everything was forgotten).
          if (auto it = channels_.find(change.channel); it != channels_.end() && it->second.empty()) channels_.erase(it);
          co_return error;
        }
      }
      // Re-read: a lost connection forgets every subscriber while the command waits.
      channels_[change.channel].insert(subscriber);
      auto& now = subscribers_[subscriber];
      if (!now.deliver) now.deliver = deliver;
      now.channels.insert(change.channel);
    } else {
      auto it = subscribers_.find(subscriber);
      if (it == subscribers_.end()) continue;
      std::vector<std::string> dropped;
      if (change.channel.empty()) {
        dropped.assign(it->second.channels.begin(), it->second.channels.end());
      } else if (it->second.channels.contains(change.channel)) {
        dropped.push_back(change.channel);
      }
      if (dropped.empty()) continue;
      // The subscription ends after a round trip on the listener connection: a notification
      // committed before the UNLISTEN (the client's own NOTIFY just before it, say) is on that
      // connection before the answer, and still reaches the client, as it would from Postgres.
      // Channels nobody else listens to are UNLISTENed by the same round trip.
      std::string sql;
      for (const auto& channel : dropped) {
        auto listeners = channels_.find(channel);
        if (listeners != channels_.end() && listeners->second.size() == 1) {
          sql += "UNLISTEN " + quote_identifier(channel) + ";";
          unlistening_.insert(channel);  // a LISTEN meanwhile must go to the server again
        }
      }
      std::string round_trip = sql.empty() ? std::string(";") : sql;
      co_await command(std::move(round_trip));
      for (const auto& channel : dropped) unlistening_.erase(channel);
      it = subscribers_.find(subscriber);  // the connection may have been lost meanwhile
      if (it == subscribers_.end()) continue;
      for (const auto& channel : dropped) {
        it->second.channels.erase(channel);
        auto listeners = channels_.find(channel);
        if (listeners == channels_.end()) continue;
        listeners->second.erase(subscriber);
        if (listeners->second.empty()) {
          channels_.erase(listeners);
          // Joined meanwhile and left again, or UNLISTENed above: make sure it is not listened to.
          if (sql.find(quote_identifier(channel)) == std::string::npos) {
            std::string unlisten = "UNLISTEN " + quote_identifier(channel);
            co_await command(std::move(unlisten));
          }
        }
      }
      it = subscribers_.find(subscriber);
      if (it != subscribers_.end() && it->second.channels.empty()) subscribers_.erase(it);
    }
  }
  channel_count_ = channels_.size();
  co_return std::nullopt;
}

void ListenerHub::forget_here(std::uint64_t subscriber) {
  auto it = subscribers_.find(subscriber);
  if (it == subscribers_.end()) return;
  for (const auto& channel : it->second.channels) {
    if (auto listeners = channels_.find(channel); listeners != channels_.end()) listeners->second.erase(subscriber);
  }
  subscribers_.erase(it);
  if (!prune_pending_ && connection_) {
    prune_pending_ = true;
    asio::co_spawn(executor_, prune(), asio::detached);
  }
}

net::awaitable<void> ListenerHub::prune() {
  auto self = shared_from_this();
  prune_pending_ = false;
  std::vector<std::string> unused;
  for (const auto& [channel, listeners] : channels_) {
    if (listeners.empty()) unused.push_back(channel);
  }
  for (const auto& channel : unused) {
    auto it = channels_.find(channel);
    if (it == channels_.end() || !it->second.empty()) continue;
    channels_.erase(it);
    std::string unlisten = "UNLISTEN " + quote_identifier(channel);
    co_await command(std::move(unlisten));
  }
  channel_count_ = channels_.size();
}

net::awaitable<std::optional<ListenerHub::Failure>> ListenerHub::connect() {
  if (connection_) co_return std::nullopt;
  if (breaker_ && breaker_->state() != pool::CircuitBreaker::State::closed) {
    co_return Failure{"57P03", "pgsluice: the database of service \"" + service_ +
                                   "\" is unavailable (circuit breaker open); LISTEN cannot be served"};
  }
  std::string error;
  auto connection = co_await server::ServerConnection::connect(executor_, target_, error);
  if (!connection) {
    spdlog::warn("service {}: listener connection failed: {}", service_, error);
    if (breaker_) breaker_->record_failure();
    co_return Failure{"08006", "pgsluice: could not open the listener connection of service \"" + service_ +
                                   "\": " + error};
  }
  if (breaker_) breaker_->record_success();
  connection_ = std::shared_ptr<server::ServerConnection>(std::move(connection));
  const auto generation = ++generation_;
  spdlog::info("service {}: listener connection opened (LISTEN of the pooled clients)", service_);
  asio::co_spawn(executor_, read_loop(generation), asio::detached);
  co_return std::nullopt;
}

net::awaitable<std::optional<ListenerHub::Failure>> ListenerHub::command(std::string sql, bool open) {
  auto self = shared_from_this();
  while (busy_) co_await idle_.wait();
  busy_ = true;
  std::optional<ListenerHub::Failure> error;
  if (closed_) {
    error = Failure{"08006", "pgsluice: the service's listener connection is closed"};
  } else if (open) {
    error = co_await connect();
  }
  if (!error && connection_) {
    protocol::Buffer out;
    protocol::append_query(out, sql);
    awaiting_ = true;
    command_error_.reset();
    const auto generation = generation_;
    // A server that does not answer in connect_timeout loses the connection (fail fast, DESIGN §3).
    auto timer = std::make_shared<asio::steady_timer>(executor_, target_->connect_timeout);
    timer->async_wait([weak = weak_from_this(), generation](net::error_code ec) {
      auto hub = weak.lock();
      if (ec || !hub || hub->generation_ != generation || !hub->awaiting_) return;
      hub->lose("the server did not answer in connect_timeout");
    });
    auto connection = connection_;  // alive until the write ends, whatever happens meanwhile
    if (auto ec = co_await net::write_all(connection->stream(), out); ec && generation_ == generation) {
      lose("write failed: " + ec.message());
    }
    while (awaiting_) co_await answered_.wait();
    timer->cancel();
    error = std::move(command_error_);
  }
  busy_ = false;
  idle_.notify();
  if (closed_) closed_done_ = true;
  co_return error;
}

net::awaitable<void> ListenerHub::read_loop(std::uint64_t generation) {
  auto self = shared_from_this();
  auto connection = connection_;  // alive until the read ends, even after lose()
  while (connection && generation_ == generation) {
    auto message = co_await net::read_message(connection->stream(), connection->buffer(), target_->max_message_size);
    if (generation_ != generation) co_return;  // lost or replaced meanwhile
    if (!message) {
      lose(message.error().message);
      co_return;
    }
    switch (message->type) {
      case 'A': route(*message); break;
      case 'E':
        if (awaiting_ && !command_error_) {
          auto fields = protocol::parse_error_response(message->payload);
          command_error_ = fields ? Failure{fields->sqlstate, "pgsluice: the listener connection refused it: " +
                                                                  fields->message}
                                  : Failure{"08P01", "pgsluice: the listener connection refused it"};
        }
        break;
      case 'Z':
        if (awaiting_) {
          awaiting_ = false;
          answered_.notify();
        }
        break;
      default: break;  // CommandComplete, notices, ParameterStatus
    }
    connection->buffer().consume(message->frame.size());
  }
}

void ListenerHub::route(const protocol::MessageView& notification) {
  protocol::PayloadReader reader(notification.payload);
  reader.int32();  // the notifying backend
  const auto channel = std::string(reader.cstring());
  auto it = channels_.find(channel);
  if (it == channels_.end() || it->second.empty()) return;
  auto frame = std::make_shared<const protocol::Buffer>(notification.frame.begin(), notification.frame.end());
  for (auto subscriber : it->second) {
    if (auto found = subscribers_.find(subscriber); found != subscribers_.end() && found->second.deliver) {
      found->second.deliver(frame);
    }
  }
}

void ListenerHub::lose(const std::string& reason) {
  if (connection_) {
    spdlog::warn("service {}: listener connection lost ({}); {} listening clients are told", service_, reason,
                 subscribers_.size());
    net::error_code ignored;
    connection_->stream().socket().close(ignored);
    connection_.reset();
  }
  ++generation_;
  if (awaiting_) {
    awaiting_ = false;
    command_error_ = Failure{"08006", "pgsluice: the listener connection of service \"" + service_ + "\" was lost (" +
                                          reason + ")"};
    answered_.notify();
  }
  auto subscribers = std::move(subscribers_);
  subscribers_.clear();
  channels_.clear();
  unlistening_.clear();
  channel_count_ = 0;
  for (auto& [id, subscriber] : subscribers) {
    if (subscriber.deliver) subscriber.deliver(nullptr);
  }
}

}  // namespace pgsluice::session
