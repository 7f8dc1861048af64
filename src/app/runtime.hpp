#pragma once
// Turns a configuration into running services: pools with their connectors and health checks, and
// one circuit breaker per backend. The first apply() starts them; later ones are reloads (SIGHUP,
// DESIGN §5), applied live: pools of kept services are resized in place (clients are not dropped),
// new services are started, removed ones are closed once their leases come back.
#include <boost/asio/io_context.hpp>
#include <map>
#include <optional>
#include <vector>
#include <memory>
#include <string>

#include "pgsluice/config/config.hpp"
#include "pgsluice/metrics/exposition.hpp"
#include "pgsluice/pool/circuit_breaker.hpp"
#include "pgsluice/session/session_context.hpp"

namespace pgsluice::app {

// What a reload did, for its log line.
struct ReloadSummary {
  std::vector<std::string> added, removed, changed;
  std::vector<std::string> needs_restart;  // settings that only a restart applies (listen, workers, ...)
};

// The TLS contexts a configuration names, built from their files (DESIGN §2).
struct TlsContexts {
  std::shared_ptr<const net::TlsContext> clients;  // null: tls.mode disable
  std::map<std::string, std::shared_ptr<const net::TlsContext>> backends;  // by name; absent: disable
};
// Builds them; on failure returns nullopt and one message per problem (file and OpenSSL's reason,
// never a key's content).
std::optional<TlsContexts> build_tls(const config::Config& config, std::vector<std::string>& errors);

class Runtime {
 public:
  Runtime(boost::asio::io_context& io, std::shared_ptr<session::SessionContext> context);

  // Installs `config` as the snapshot sessions see from now on. Call on the io_context's threads.
  // `tls` comes from build_tls(*config).
  ReloadSummary apply(std::shared_ptr<const config::Config> config, TlsContexts tls);

  // SIGTERM: closes every pool (idle connections now, leases when they come back).
  // Every service's listener connection has closed and its last command ended (after close_all).
  bool listeners_closed() const;
  void close_all();

  // Observability (DESIGN §6): what /metrics shows now, and why /readyz says not ready (empty:
  // ready). On the io_context's threads, like apply().
  metrics::Sample sample() const;
  std::string not_ready_reason() const;
  void count_reload(bool success) { ++(success ? reloads_success_ : reloads_failure_); }

 private:
  std::shared_ptr<pool::CircuitBreaker> breaker_for(const config::BackendConfig& backend);
  std::shared_ptr<session::Service> start_service(const config::Config& config, const config::ServiceConfig& service);

  boost::asio::io_context& io_;
  std::shared_ptr<session::SessionContext> context_;
  std::map<std::string, std::shared_ptr<pool::CircuitBreaker>> breakers_;  // by backend name
  // The TLS context new server connections of each backend use, replaced by every reload.
  std::map<std::string, std::shared_ptr<net::TlsSource>> backend_tls_;
  std::uint64_t reloads_success_ = 0;
  std::uint64_t reloads_failure_ = 0;
};

}  // namespace pgsluice::app
