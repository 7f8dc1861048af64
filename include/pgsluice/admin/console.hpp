#pragma once
// The admin console (DESIGN §6): `psql -p 6432 -U admin pgsluice`, PgBouncer's habits. Commands
// are simple queries: SHOW POOLS | STATS | BREAKERS | CONFIG | VERSION | CLIENTS | SERVERS,
// RELOAD, PAUSE [service], RESUME [service], SHUTDOWN. Each SHOW is an ordinary row set, so psql
// prints it as a table. What the console reads and does goes through Operations, which the daemon
// implements on its first worker (where the runtime lives); the console hops there and back.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pgsluice/config/config.hpp"
#include "pgsluice/metrics/exposition.hpp"
#include "pgsluice/session/session_context.hpp"

namespace pgsluice::admin {

class Operations {
 public:
  virtual ~Operations() = default;
  // Where the others must be called.
  virtual net::asio::any_io_executor executor() const = 0;
  virtual metrics::Sample sample() const = 0;
  virtual std::shared_ptr<const config::Config> config() const = 0;
  // Empty on success, else why not (a reload: the file's errors).
  virtual std::string reload() = 0;
  virtual std::string pause(const std::string& service) = 0;   // empty name: every service
  virtual std::string resume(const std::string& service) = 0;  // empty name: every service
  virtual void shutdown() = 0;                                  // as SIGTERM
  // Every logged-in client (those that do not answer within a second are left out).
  virtual net::awaitable<std::vector<session::ClientDescription>> clients() = 0;
  struct IdleServer {
    std::string service;
    std::string backend;
    std::uint32_t pid = 0;
    std::int64_t connected_seconds = 0;
    std::int64_t idle_seconds = 0;
  };
  virtual std::vector<IdleServer> idle_servers() const = 0;
};

class Console : public session::AdminConsole {
 public:
  explicit Console(std::shared_ptr<Operations> operations) : operations_(std::move(operations)) {}
  net::awaitable<protocol::Buffer> execute(std::string query) override;

  // The reply to one command, run where Operations live (for tests: no hop).
  protocol::Buffer answer(std::string_view query);

 private:
  std::shared_ptr<Operations> operations_;
};

}  // namespace pgsluice::admin
