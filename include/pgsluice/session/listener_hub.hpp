#pragma once
// The per-service listener of the pooled modes (DESIGN §2): one server connection pgsluice owns
// LISTENs to the union of the channels its clients listen on, and each NotificationResponse it
// receives goes to the clients listening on that channel, whatever they are doing (they queue it
// behind their own replies). A client's LISTEN / UNLISTEN outside a transaction is served here
// instead of on a pooled server connection, which would otherwise stay pinned to it.
//
// Thread-safe: everything runs on the hub's strand; clients call from their own workers.
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "pgsluice/net/io.hpp"
#include "pgsluice/pool/circuit_breaker.hpp"
#include "pgsluice/protocol/message.hpp"
#include "pgsluice/server/server_connection.hpp"
#include "pgsluice/sql/session_effects.hpp"

namespace pgsluice::session {

class ListenerHub : public std::enable_shared_from_this<ListenerHub> {
 public:
  // Takes one NotificationResponse frame (shared by every client it goes to). Called on the hub's
  // strand: it must only post to the client's own worker. A null frame: the listener connection
  // was lost, and with it every subscription (the client may have missed notifications).
  using Deliver = std::function<void(std::shared_ptr<const protocol::Buffer> frame)>;
  // Why a LISTEN could not be served: what the client's ErrorResponse says.
  struct Failure {
    std::string sqlstate;
    std::string message;
  };

  // `breaker`: the backend's circuit breaker (may be null): while it is not closed, a LISTEN that
  // needs the listener connection opened fails at once (57P03) instead of waiting for a dead server.
  ListenerHub(net::asio::any_io_executor executor, std::shared_ptr<const server::ServerTarget> target,
              std::string service, std::shared_ptr<pool::CircuitBreaker> breaker = nullptr);
  ~ListenerHub();

  // A number no other subscriber of any hub has.
  static std::uint64_t new_subscriber();

  // Applies `changes` for `subscriber` in order (an empty channel in an UNLISTEN: all of them).
  // Done once the listener connection listens to every channel a LISTEN named, so a notification
  // committed after this returns reaches `deliver`. Returns the error when the listener connection
  // could not be opened or refused a LISTEN (the changes before it stay made).
  net::awaitable<std::optional<Failure>> apply(std::uint64_t subscriber, std::vector<sql::ListenChange> changes,
                                                   Deliver deliver);
  // Calls `done` (on the hub's strand) after a round trip on the listener connection that began
  // after this call: every notification committed before it has been routed by then. At once when
  // there is no connection. Concurrent callers share a round trip.
  void barrier(std::function<void()> done);
  // The subscriber is gone (any thread; nothing to wait for).
  void forget(std::uint64_t subscriber);
  // The service was removed or moved: the connection closes, subscribers are told as for a loss.
  void close();

  // close() has run and no command is under way (any thread).
  bool closed() const { return closed_done_.load(); }

  // For tests and metrics: channels listened to now (on the strand's view, approximately).
  std::size_t channel_count() const;

 private:
  struct Subscriber {
    Deliver deliver;
    std::set<std::string> channels;
  };

  net::awaitable<std::optional<Failure>> apply_here(std::uint64_t subscriber, std::vector<sql::ListenChange> changes,
                                                        Deliver deliver);
  void forget_here(std::uint64_t subscriber);
  // Opens the listener connection if there is none; an error text on failure.
  net::awaitable<std::optional<Failure>> connect();
  // Sends one simple query (LISTEN / UNLISTEN) and waits for its ReadyForQuery: one at a time.
  // `open`: open the connection if there is none (else there is nothing to do without one).
  net::awaitable<std::optional<Failure>> command(std::string sql, bool open = true);
  net::awaitable<void> run_barriers();
  net::awaitable<void> read_loop(std::uint64_t generation);
  void route(const protocol::MessageView& notification);
  // The connection broke (or timed out, or close()): every subscriber is told and forgotten.
  void lose(const std::string& reason);
  // UNLISTENs channels nobody listens to any more (spawned after a client left).
  net::awaitable<void> prune();

  net::asio::any_io_executor executor_;  // a strand
  std::shared_ptr<const server::ServerTarget> target_;
  std::string service_;
  std::shared_ptr<pool::CircuitBreaker> breaker_;
  std::shared_ptr<server::ServerConnection> connection_;  // shared with the reader while it reads
  std::uint64_t generation_ = 0;  // of connection_: a reader of an older one ends quietly
  bool connecting_ = false;
  bool busy_ = false;           // a command (or connect) is under way
  net::Event idle_;             // ... and it ended
  bool awaiting_ = false;       // the command's ReadyForQuery has not come yet
  std::optional<Failure> command_error_;
  net::Event answered_;
  bool closed_ = false;
  bool prune_pending_ = false;
  std::vector<std::function<void()>> barrier_waiters_;  // barrier(): waiting for the next round trip
  bool barrier_running_ = false;
  std::map<std::string, std::set<std::uint64_t>> channels_;  // what the connection listens to
  std::unordered_map<std::uint64_t, Subscriber> subscribers_;
  std::set<std::string> unlistening_;  // channels an UNLISTEN is under way for
  std::atomic<std::size_t> channel_count_{0};
  std::atomic<bool> closed_done_{false};
};

}  // namespace pgsluice::session
