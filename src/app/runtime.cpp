#include "runtime.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <spdlog/spdlog.h>

#include "pgsluice/net/io.hpp"
#include "pgsluice/server/server_connection.hpp"
#include "pgsluice/session/listener_hub.hpp"

namespace pgsluice::app {

namespace asio = boost::asio;
using namespace asio::experimental::awaitable_operators;

namespace {

net::ServerTlsMode server_tls_mode(config::ServerTls mode) {
  switch (mode) {
    case config::ServerTls::disable: return net::ServerTlsMode::disable;
    case config::ServerTls::prefer: return net::ServerTlsMode::prefer;
    case config::ServerTls::require: return net::ServerTlsMode::require;
    case config::ServerTls::verify_ca: return net::ServerTlsMode::verify_ca;
    case config::ServerTls::verify_full: return net::ServerTlsMode::verify_full;
  }
  return net::ServerTlsMode::disable;
}

net::TlsFiles tls_files(const config::TlsFilesConfig& files) {
  return net::TlsFiles{files.cert, files.key, files.ca, files.min_version, files.ciphers};
}

std::shared_ptr<const server::ServerTarget> make_target(const config::Config& config,
                                                        const config::ServiceConfig& service,
                                                        std::shared_ptr<net::TlsSource> tls_source) {
  const auto& backend = config.backends.at(service.backend);
  auto target = std::make_shared<server::ServerTarget>();
  target->host = backend.host;
  target->port = backend.port;
  target->user = service.server_user;
  target->password = service.server_password;
  target->database = service.server_database;
  target->connect_timeout = backend.connect_timeout;
  target->max_message_size = config.max_message_size;
  target->tls_mode = server_tls_mode(backend.tls.mode);
  target->tls_files = tls_files(backend.tls.files);
  target->tls_source = std::move(tls_source);
  target->channel_binding = backend.tls.channel_binding == config::ChannelBinding::require
                                ? server::ServerTarget::ChannelBinding::require
                            : backend.tls.channel_binding == config::ChannelBinding::disable
                                ? server::ServerTarget::ChannelBinding::disable
                                : server::ServerTarget::ChannelBinding::prefer;
  return target;
}

pool::PoolSettings pool_settings(const config::ServiceConfig& service, const server::ServerTarget& target) {
  return pool::PoolSettings{
      .service = service.name,
      .max_connections = service.max_connections,
      .min_connections = service.min_connections,
      .acquire_timeout = service.acquire_timeout,
      .max_waiting_clients = service.max_waiting_clients,
      .idle_timeout = service.idle_timeout,
      .max_lifetime = service.max_lifetime,
      .health_check_after_idle = service.health_check_after_idle,
      .connect_timeout = target.connect_timeout,
  };
}

pool::Connector make_connector(std::shared_ptr<const server::ServerTarget> target) {
  return [target](std::string& error) -> asio::awaitable<std::unique_ptr<pool::Connection>> {
    auto executor = co_await asio::this_coro::executor;
    auto connection = co_await server::ServerConnection::connect(executor, target, error);
    co_return std::unique_ptr<pool::Connection>(std::move(connection));
  };
}

// An empty query is the cheapest round trip that proves the backend still answers (DESIGN §3).
pool::HealthCheck make_health_check(std::shared_ptr<const server::ServerTarget> target) {
  return [target](pool::Connection& connection) -> asio::awaitable<bool> {
    auto& server = static_cast<server::ServerConnection&>(connection);
    asio::steady_timer timer(co_await asio::this_coro::executor, target->connect_timeout);
    auto outcome = co_await (server.run_discarding("") || timer.async_wait(net::use_nothrow));
    co_return outcome.index() == 0 && std::get<0>(outcome);
  };
}

pool::CircuitBreakerSettings breaker_settings(const config::BackendConfig& backend) {
  return pool::CircuitBreakerSettings{
      .failure_threshold = backend.breaker.failure_threshold,
      .open_for = backend.breaker.open_for,
      .max_open_for = backend.breaker.max_open_for,
  };
}

// Settings only a restart applies: the listener, the thread count, the metrics endpoint.
std::vector<std::string> restart_only_changes(const config::Config& running, const config::Config& next) {
  std::vector<std::string> out;
  if (running.listen.host != next.listen.host || running.listen.port != next.listen.port) out.push_back("listen");
  if (running.workers != next.workers) out.push_back("workers");
  if (running.metrics_listen.host != next.metrics_listen.host || running.metrics_listen.port != next.metrics_listen.port ||
      running.metrics_enabled != next.metrics_enabled) {
    out.push_back("metrics");
  }
  if (running.log_format != next.log_format) out.push_back("log.format");
  return out;
}

}  // namespace

Runtime::Runtime(asio::io_context& io, std::shared_ptr<session::SessionContext> context)
    : io_(io), context_(std::move(context)) {}

std::shared_ptr<pool::CircuitBreaker> Runtime::breaker_for(const config::BackendConfig& backend) {
  auto& breaker = breakers_[backend.name];
  if (breaker) {
    breaker->reconfigure(breaker_settings(backend));
  } else {
    breaker = std::make_shared<pool::CircuitBreaker>(breaker_settings(backend));
  }
  return breaker;
}

namespace {

// The service's coalescer (DESIGN §4): the pooled modes only, when the config enables it.
// A reload keeps the service's coalescer (its counters go on), with the new settings.
std::shared_ptr<coalesce::Coalescer> make_coalescer(const config::ServiceConfig& service,
                                                   const server::ServerTarget& target,
                                                   std::shared_ptr<pool::Pool> pool,
                                                   std::shared_ptr<coalesce::Coalescer> kept = nullptr) {
  if (!service.coalesce.enabled || service.mode == config::PoolMode::session) return nullptr;
  coalesce::Settings settings;
  settings.service = service.name;
  settings.max_batch = service.coalesce.max_batch;
  settings.window = service.coalesce.window;
  settings.allow_views = service.coalesce.allow_views;
  settings.query_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(service.query_timeout);
  settings.connect_timeout = target.connect_timeout;
  if (kept) {
    kept->reconfigure(std::move(settings));
    return kept;
  }
  return std::make_shared<coalesce::Coalescer>(std::move(settings), std::move(pool));
}

}  // namespace

std::shared_ptr<session::Service> Runtime::start_service(const config::Config& config,
                                                         const config::ServiceConfig& service) {
  auto target = make_target(config, service, backend_tls_.at(service.backend));
  auto out = std::make_shared<session::Service>();
  out->config = service;
  out->target = target;
  out->pool = std::make_shared<pool::Pool>(pool_settings(service, *target), make_connector(target),
                                           make_health_check(target));
  // The backend's breaker is shared by its services' pools: when it opens, all of them drop their
  // idle connections and fail their waiters at once. The pools are looked up when it trips, so
  // services added by a reload are included.
  auto breaker = breakers_.at(service.backend);
  std::weak_ptr<session::SessionContext> weak_context = context_;
  auto on_trip = [weak_context, backend = service.backend, weak_breaker = std::weak_ptr(breaker)] {
    auto context = weak_context.lock();
    auto breaker = weak_breaker.lock();
    if (!context || !breaker) return;
    spdlog::warn("backend {}: circuit breaker open after {} consecutive failures; failing fast for {} ms", backend,
                 breaker->settings().failure_threshold,
                 std::chrono::duration_cast<std::chrono::milliseconds>(breaker->open_for()).count());
    for (const auto& [name, service] : context->current()->services) {
      if (service->config.backend == backend) service->pool->trip();
    }
  };
  out->pool->set_breaker(std::move(breaker), std::move(on_trip));
  asio::co_spawn(asio::make_strand(io_), out->pool->maintain(), asio::detached);
  out->coalescer = make_coalescer(service, *target, out->pool);
  if (service.mode != config::PoolMode::session) {
    out->listeners =
        std::make_shared<session::ListenerHub>(asio::make_strand(io_), target, service.name, breakers_.at(service.backend));
  }
  return out;
}

std::optional<TlsContexts> build_tls(const config::Config& config, std::vector<std::string>& errors) {
  TlsContexts out;
  std::string error;
  if (config.tls.mode != config::ClientTls::disable) {
    out.clients = net::TlsContext::for_clients(tls_files(config.tls.files), error);
    if (!out.clients) errors.push_back("tls: " + error);
  }
  for (const auto& [name, backend] : config.backends) {
    if (backend.tls.mode == config::ServerTls::disable) continue;
    auto context = net::TlsContext::for_servers(server_tls_mode(backend.tls.mode), tls_files(backend.tls.files), error);
    if (!context) {
      errors.push_back("backends." + name + ".tls: " + error);
      continue;
    }
    out.backends[name] = std::move(context);
  }
  if (!errors.empty()) return std::nullopt;
  return out;
}

ReloadSummary Runtime::apply(std::shared_ptr<const config::Config> config, TlsContexts tls) {
  ReloadSummary summary;
  const auto previous = context_->current();
  if (previous) {
    summary.needs_restart = restart_only_changes(*previous->config, *config);
    if (!summary.needs_restart.empty()) {
      // What is installed says what runs: the restart-only settings keep their running values (so
      // the next reload warns again, and what the config shows is true).
      auto adjusted = std::make_shared<config::Config>(*config);
      adjusted->listen = previous->config->listen;
      adjusted->workers = previous->config->workers;
      adjusted->metrics_listen = previous->config->metrics_listen;
      adjusted->metrics_enabled = previous->config->metrics_enabled;
      adjusted->log_format = previous->config->log_format;
      config = std::move(adjusted);
    }
  }

  for (const auto& [name, backend] : config->backends) {
    breaker_for(backend);
    auto& source = backend_tls_[name];
    if (!source) source = std::make_shared<net::TlsSource>();
    auto context = tls.backends.find(name);
    source->set(context == tls.backends.end() ? nullptr : context->second);
  }
  std::erase_if(backend_tls_, [&](const auto& entry) { return !config->backends.contains(entry.first); });

  auto next = std::make_shared<session::Snapshot>();
  next->config = config;
  next->client_tls_mode = config->tls.mode == config::ClientTls::require ? net::ClientTlsMode::require
                          : config->tls.mode == config::ClientTls::allow ? net::ClientTlsMode::allow
                                                                         : net::ClientTlsMode::disable;
  next->client_tls = std::move(tls.clients);
  next->users = session::prepare_user_secrets(*config);
  for (const auto& service : config->services) {
    std::shared_ptr<session::Service> kept;
    if (previous) {
      auto it = previous->services.find(service.name);
      // Moving a service to another backend gives it a new pool (and that backend's breaker).
      if (it != previous->services.end() && it->second->config.backend == service.backend) kept = it->second;
    }
    if (!kept) {
      next->services[service.name] = start_service(*config, service);
      if (previous) summary.added.push_back(service.name);
      continue;
    }
    auto target = make_target(*config, service, backend_tls_.at(service.backend));
    auto out = std::make_shared<session::Service>();
    out->config = service;
    out->target = target;
    out->pool = kept->pool;
    out->counters = kept->counters;
    out->listeners = kept->listeners;
    out->coalescer = make_coalescer(service, *target, out->pool, kept->coalescer);
    if (service.mode != config::PoolMode::session && (!out->listeners || *target != *kept->target)) {
      // New credentials or address: the listener reconnects with them (its clients are told).
      if (out->listeners) out->listeners->close();
      out->listeners = std::make_shared<session::ListenerHub>(asio::make_strand(io_), target, service.name,
                                                              breakers_.at(service.backend));
    }
    if (*target != *kept->target) {
      // Another address or other credentials: connections opened before are retired.
      out->pool->reconfigure(pool_settings(service, *target), make_connector(target),
                             make_health_check(target));
    } else {
      out->pool->reconfigure(pool_settings(service, *target));
      if (auto reported = kept->reported_parameters()) out->remember_reported_parameters(*reported);
    }
    auto before = kept->config;
    before.line = service.line;  // moved in the file is not changed
    if (!(before == service)) summary.changed.push_back(service.name);
    next->services[service.name] = std::move(out);
  }

  context_->install(next);

  if (previous) {
    for (const auto& [name, service] : previous->services) {
      auto it = next->services.find(name);
      if (it != next->services.end() && it->second->pool == service->pool) continue;
      if (service->listeners) service->listeners->close();
      if (it == next->services.end()) {
        service->pool->close("was removed by a configuration reload");
        summary.removed.push_back(name);
      } else {
        service->pool->close("was moved to another backend by a configuration reload; connect again");
      }
    }
  }
  std::erase_if(breakers_, [&](const auto& entry) { return !config->backends.contains(entry.first); });
  return summary;
}

bool Runtime::listeners_closed() const {
  for (const auto& [name, service] : context_->current()->services) {
    if (service->listeners && !service->listeners->closed()) return false;
  }
  return true;
}

metrics::Sample Runtime::sample() const {
  metrics::Sample out;
  out.version = PGSLUICE_VERSION;
  out.clients = context_->clients.load();
  out.reloads_success = reloads_success_;
  out.reloads_failure = reloads_failure_;
  for (const auto& [name, service] : context_->current()->services) {
    auto& s = out.services.emplace_back();
    s.service = name;
    s.backend = service->config.backend;
    s.max_connections = service->config.max_connections;
    s.pool = service->pool->stats();
    s.work = service->counters->totals();
    s.clients = service->counters->clients();
    if (service->coalescer) s.coalesce = service->coalescer->stats();
  }
  for (const auto& [name, breaker] : breakers_) {
    auto& b = out.backends.emplace_back();
    b.backend = name;
    b.state = breaker->state();
    b.trips = breaker->trips();
    b.probes = breaker->probes();
    b.consecutive_failures = breaker->consecutive_failures();
    b.open_for_ms = std::chrono::duration_cast<std::chrono::milliseconds>(breaker->open_for()).count();
    b.retry_in_ms = std::chrono::duration_cast<std::chrono::milliseconds>(breaker->retry_in()).count();
  }
  return out;
}

std::string Runtime::not_ready_reason() const {
  if (context_->draining) return "draining: pgsluice is shutting down";
  for (const auto& [name, breaker] : breakers_) {
    if (breaker->state() == pool::CircuitBreaker::State::open) {
      return "circuit breaker open for backend " + name;
    }
  }
  return {};
}

void Runtime::close_all() {
  for (const auto& [name, service] : context_->current()->services) {
    service->pool->close();
    if (service->listeners) service->listeners->close();
  }
}

}  // namespace pgsluice::app
