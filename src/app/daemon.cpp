#include "daemon.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <spdlog/spdlog.h>
#include <functional>
#include <thread>
#include <vector>

#include "pgsluice/net/io.hpp"
#include "pgsluice/pool/circuit_breaker.hpp"
#include "pgsluice/protocol/scram.hpp"
#include "pgsluice/server/server_connection.hpp"
#include "pgsluice/session/client_session.hpp"

namespace pgsluice::app {

namespace asio = boost::asio;
using net::tcp;
using namespace asio::experimental::awaitable_operators;

namespace {

std::shared_ptr<session::Service> make_service(const config::Config& config, const config::ServiceConfig& service) {
  const auto& backend = config.backends.at(service.backend);
  auto target = std::make_shared<server::ServerTarget>();
  target->host = backend.host;
  target->port = backend.port;
  target->user = service.server_user;
  target->password = service.server_password;
  target->database = service.server_database;
  target->connect_timeout = backend.connect_timeout;
  target->max_message_size = config.max_message_size;

  pool::PoolSettings settings{
      .service = service.name,
      .max_connections = service.max_connections,
      .min_connections = service.min_connections,
      .acquire_timeout = service.acquire_timeout,
      .max_waiting_clients = service.max_waiting_clients,
      .idle_timeout = service.idle_timeout,
      .max_lifetime = service.max_lifetime,
      .health_check_after_idle = service.health_check_after_idle,
  };
  std::shared_ptr<const server::ServerTarget> shared_target = target;
  auto connector = [shared_target](std::string& error) -> asio::awaitable<std::unique_ptr<pool::Connection>> {
    auto executor = co_await asio::this_coro::executor;
    auto connection = co_await server::ServerConnection::connect(executor, shared_target, error);
    co_return std::unique_ptr<pool::Connection>(std::move(connection));
  };
  // An empty query is the cheapest round trip that proves the backend still answers (DESIGN §3).
  auto health_check = [shared_target](pool::Connection& connection, bool thorough) -> asio::awaitable<bool> {
    auto& server = static_cast<server::ServerConnection&>(connection);
    if (!server.idle_and_open()) co_return false;
    if (!thorough) co_return true;
    asio::steady_timer timer(co_await asio::this_coro::executor, shared_target->connect_timeout);
    auto outcome = co_await (server.run_discarding("") || timer.async_wait(net::use_nothrow));
    co_return outcome.index() == 0 && std::get<0>(outcome);
  };
  auto out = std::make_shared<session::Service>();
  out->config = service;
  out->target = shared_target;
  out->pool = std::make_shared<pool::Pool>(std::move(settings), std::move(connector), std::move(health_check));
  return out;
}

asio::awaitable<void> accept_loop(tcp::acceptor& acceptor, std::shared_ptr<session::SessionContext> context) {
  auto& io = static_cast<asio::io_context&>(acceptor.get_executor().context());
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(asio::make_strand(io), net::use_nothrow);
    if (ec == asio::error::operation_aborted) co_return;
    if (ec) {
      // EMFILE and friends: log, back off briefly, keep serving the clients we have.
      spdlog::warn("listener: accept failed: {}", ec.message());
      asio::steady_timer pause(acceptor.get_executor(), std::chrono::milliseconds(50));
      co_await pause.async_wait(net::use_nothrow);
      continue;
    }
    net::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    auto executor = socket.get_executor();
    asio::co_spawn(executor, session::run_client_session(std::move(socket), context), asio::detached);
  }
}

// Waits for the clients to leave, forces the rest out at shutdown_timeout, then stops the loop.
asio::awaitable<void> drain(std::shared_ptr<session::SessionContext> context, std::chrono::milliseconds timeout,
                            asio::io_context& io) {
  asio::steady_timer tick(co_await asio::this_coro::executor);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool forced = false;
  while (context->clients.load() > 0) {
    if (!forced && std::chrono::steady_clock::now() >= deadline) {
      forced = true;
      spdlog::warn("shutdown_timeout expired with {} client(s) left: closing them", context->clients.load());
      for (auto& session : context->cancels.sessions()) session->force_shutdown();
    }
    if (forced && std::chrono::steady_clock::now() >= deadline + std::chrono::seconds(2)) break;
    tick.expires_after(std::chrono::milliseconds(20));
    co_await tick.async_wait(net::use_nothrow);
  }
  for (auto& [name, service] : context->services) service->pool->close();
  spdlog::info("all clients gone: stopping");
  io.stop();
}

}  // namespace

int run_daemon(std::shared_ptr<const config::Config> config, const std::string& config_path) {
  const int workers = config->workers > 0 ? config->workers : std::max(1u, std::thread::hardware_concurrency());
  asio::io_context io(workers);

  auto context = std::make_shared<session::SessionContext>();
  context->config = config;
  context->users = session::prepare_user_secrets(*config);
  context->mock_secret = protocol::scram::random_bytes(32);
  for (const auto& service : config->services) context->services[service.name] = make_service(*config, service);
  // One circuit breaker per backend, shared by its services' pools: when it opens, all of them drop
  // their idle connections and fail their waiters at once.
  for (const auto& [backend_name, backend] : config->backends) {
    auto breaker = std::make_shared<pool::CircuitBreaker>(pool::CircuitBreakerSettings{
        .failure_threshold = backend.breaker.failure_threshold,
        .open_for = backend.breaker.open_for,
        .max_open_for = backend.breaker.max_open_for,
    });
    std::vector<std::shared_ptr<pool::Pool>> pools;
    for (auto& [name, service] : context->services) {
      if (service->config.backend == backend_name) pools.push_back(service->pool);
    }
    std::vector<std::weak_ptr<pool::Pool>> weak_pools(pools.begin(), pools.end());
    auto on_trip = [weak_pools, backend_name, breaker] {
      spdlog::warn("backend {}: circuit breaker open after {} consecutive failures; failing fast for {} ms",
                   backend_name, breaker->settings().failure_threshold,
                   std::chrono::duration_cast<std::chrono::milliseconds>(breaker->open_for()).count());
      for (auto& weak : weak_pools) {
        if (auto pool = weak.lock()) pool->trip();
      }
    };
    for (auto& pool : pools) pool->set_breaker(breaker, on_trip);
  }

  tcp::acceptor acceptor(io);
  try {
    auto address = asio::ip::make_address(config->listen.host);
    tcp::endpoint endpoint(address, config->listen.port);
    acceptor.open(endpoint.protocol());
    acceptor.set_option(tcp::acceptor::reuse_address(true));
    acceptor.bind(endpoint);
    acceptor.listen(asio::socket_base::max_listen_connections);
  } catch (const std::exception& e) {
    spdlog::critical("cannot listen on {}:{}: {}", config->listen.host, config->listen.port, e.what());
    return 1;
  }
  spdlog::info("pgsluice {} listening on {}:{} with {} worker(s), {} service(s)", PGSLUICE_VERSION,
               config->listen.host, config->listen.port, workers, config->services.size());

  asio::co_spawn(io, accept_loop(acceptor, context), asio::detached);
  for (auto& [name, service] : context->services) {
    asio::co_spawn(asio::make_strand(io), service->pool->maintain(), asio::detached);
  }

  // SIGTERM/SIGINT: stop accepting, let transactions in flight finish (up to shutdown_timeout), tell
  // every client 57P01, exit 0. A second signal exits at once.
  asio::signal_set signals(io, SIGTERM, SIGINT);
  bool stopping = false;
  std::function<void(const net::error_code&, int)> on_signal = [&](const net::error_code& ec, int signal) {
    if (ec) return;
    if (stopping) {
      spdlog::warn("received signal {} again: exiting now", signal);
      io.stop();
      return;
    }
    stopping = true;
    spdlog::info("received signal {}: draining clients (shutdown_timeout {}ms)", signal,
                 config->shutdown_timeout.count());
    net::error_code ignored;
    acceptor.close(ignored);
    context->draining = true;
    for (auto& session : context->cancels.sessions()) session->begin_shutdown();
    asio::co_spawn(io, drain(context, config->shutdown_timeout, io), asio::detached);
    signals.async_wait(on_signal);
  };
  signals.async_wait(on_signal);

  // SIGHUP must never kill the daemon (its default action): the file is re-read and validated, an
  // invalid one is logged and the running config stays. Applying a valid one live is still to come.
  asio::signal_set hangup(io, SIGHUP);
  std::function<void(const net::error_code&, int)> on_hangup = [&](const net::error_code& ec, int) {
    if (ec) return;
    auto reloaded = config::load_from_file(config_path);
    if (!reloaded.config) {
      for (const auto& error : reloaded.errors) {
        spdlog::error("reload: {}:{}: {}", config_path, error.line, error.message);
      }
      spdlog::error("reload: {} error(s); keeping the running configuration", reloaded.errors.size());
    } else {
      spdlog::warn("reload: {} is valid, but applying a new configuration without a restart is not "
                   "implemented yet; restart pgsluice to apply it",
                   config_path);
    }
    hangup.async_wait(on_hangup);
  };
  hangup.async_wait(on_hangup);

  std::vector<std::thread> threads;
  for (int i = 1; i < workers; ++i) threads.emplace_back([&io] { io.run(); });
  io.run();
  for (auto& thread : threads) thread.join();
  spdlog::info("pgsluice stopped");
  return 0;
}

}  // namespace pgsluice::app
