#include "daemon.hpp"

#include <fmt/ranges.h>
#include <malloc.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/this_coro.hpp>
#include <csignal>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "pgsluice/admin/console.hpp"
#include "pgsluice/metrics/counters.hpp"
#include "pgsluice/metrics/http_endpoint.hpp"
#include "pgsluice/net/io.hpp"
#include "pgsluice/net/socket_reserve.hpp"
#include "pgsluice/protocol/scram.hpp"
#include "pgsluice/session/client_session.hpp"
#include "runtime.hpp"

namespace pgsluice::app {

namespace asio = boost::asio;
using net::tcp;
using namespace asio::experimental::awaitable_operators;

namespace {

// One io_context per worker thread (DESIGN §1): a session lives on one of them, round robin, so its
// coroutines never run at once and never hop threads; no strand, no contended scheduler.
class Worker : public asio::io_context {
 public:
  using io_context::io_context;
  // Destroys every pending handler (coroutine frames, with the sessions and connections they hold)
  // while all workers' services still exist: a server socket may belong to another worker than the
  // session that holds it, so no worker may be destroyed before all of them are shut down.
  void shut_down() { shutdown(); }
};
using Workers = std::vector<std::unique_ptr<Worker>>;

// With more than one worker, each listens on its own socket of one SO_REUSEPORT group and the
// kernel spreads new connections over them: an arriving client wakes one worker. (Workers sharing
// one socket, dup()ed, were all woken by each connection, and all but one found nothing to accept:
// a wake-up and a failed accept per login and worker.) A group can be joined by any socket of the
// same user that asks for SO_REUSEPORT, so first a plain socket is bound to the address and closed
// again: it fails if anything listens there, and a second pgsluice, which does the same against
// this group, refuses to start instead of quietly taking a share of the clients.
using ReusePort = asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>;

void refuse_if_in_use(const tcp::endpoint& endpoint) {
  asio::io_context scratch;
  tcp::acceptor probe(scratch);
  probe.open(endpoint.protocol());
  probe.set_option(tcp::acceptor::reuse_address(true));
  probe.bind(endpoint);  // throws "Address already in use"
}

void listen_on(tcp::acceptor& acceptor, const tcp::endpoint& endpoint, bool group) {
  acceptor.open(endpoint.protocol());
  acceptor.set_option(tcp::acceptor::reuse_address(true));
  if (group) acceptor.set_option(ReusePort(true));
  acceptor.bind(endpoint);
  acceptor.listen(asio::socket_base::max_listen_connections);
}

// One per worker, on the worker's own listening socket: the session starts and stays on the worker
// that accepted it (no hand-over to another thread, no wake-up of it). The peer address comes with
// accept(): no getpeername per login. A chain of handlers (one accept's handler starts the next), as
// the sessions are: a coroutine cost each login a resume through Asio's awaitable machinery.
// Each accepted socket takes a state of the worker's reactor: the reserve makes them ahead, many at a
// time (net/socket_reserve.hpp), so that a burst's do not pin its sessions' heap pages once it left.
class AcceptLoop : public std::enable_shared_from_this<AcceptLoop> {
 public:
  AcceptLoop(Worker& worker, tcp::acceptor& acceptor, std::shared_ptr<session::SessionContext> context)
      : acceptor_(acceptor),
        context_(std::move(context)),
        pause_(acceptor.get_executor()),
        reserve_(worker) {}

  void accept_next() {
    reserve_.ensure(net::t_open_client_sockets + 1);
    acceptor_.async_accept(peer_, [self = shared_from_this()](net::error_code ec, tcp::socket socket) {
      self->on_accept(ec, std::move(socket));
    });
  }

 private:
  void on_accept(net::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
    if (ec) {
      // EMFILE and friends: log, back off briefly, keep serving the clients we have.
      spdlog::warn("listener: accept failed: {}", ec.message());
      pause_.expires_after(std::chrono::milliseconds(50));
      pause_.async_wait([self = shared_from_this()](net::error_code) { self->accept_next(); });
      return;
    }
    net::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    session::start_client_session(std::move(socket), peer_, context_);
    accept_next();
  }

  tcp::acceptor& acceptor_;
  std::shared_ptr<session::SessionContext> context_;
  tcp::endpoint peer_;
  asio::steady_timer pause_;
  net::SocketStateReserve reserve_;
};

void accept_loop(Worker& worker, tcp::acceptor& acceptor, std::shared_ptr<session::SessionContext> context) {
  asio::post(acceptor.get_executor(), [loop = std::make_shared<AcceptLoop>(
                                           worker, acceptor, std::move(context))] { loop->accept_next(); });
}

// After a storm of clients has left, gives the memory they used back to the system: glibc keeps
// freed heap in its arenas (the high-water mark would stay), so once the client count has fallen
// well below the peak since the last look, malloc_trim returns the free pages of every arena; and
// first each worker lets go of the blocks it keeps for reuse (up to 4 MiB of message buffers and
// 0.7 MiB of sessions per worker), beyond a few.
asio::awaitable<void> return_memory(std::shared_ptr<session::SessionContext> context,
                                    std::vector<asio::any_io_executor> workers) {
  // What each worker keeps for reuse afterwards: message buffer blocks (16 KiB each) and sessions'
  // memory, enough for the next few logins.
  constexpr std::size_t kKeepAfterStorm = 16;
  asio::steady_timer tick(co_await asio::this_coro::executor);
  int peak = 0;
  for (;;) {
    tick.expires_after(std::chrono::seconds(2));
    auto [ec] = co_await tick.async_wait(net::use_nothrow);
    if (ec) co_return;
    const int now = context->clients.load();
    peak = std::max(peak, now);
    if (peak - now >= 500 && now < peak / 2) {
      // On each worker, since the caches are per thread: what it keeps beyond a few, then free heap.
      for (const auto& worker : workers) {
        asio::post(worker, [left = peak - now] {
          const auto started = std::chrono::steady_clock::now();
          net::trim_block_cache(kKeepAfterStorm);
          session::trim_recycled(kKeepAfterStorm);
          ::malloc_trim(0);
          spdlog::debug("memory: returned free heap after {} clients left ({} us)", left,
                        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() -
                                                                              started)
                            .count());
        });
      }
      peak = now;
    }
  }
}

// Waits for the clients to leave, forces the rest out at shutdown_timeout, then stops the loop.
asio::awaitable<void> drain(std::shared_ptr<session::SessionContext> context, Runtime& runtime,
                            std::chrono::milliseconds timeout, std::function<void()> stop) {
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
  runtime.close_all();
  // The listener connections close on their own strands: their last steps run before the loop stops
  // (a coroutine left waiting on a hub would hold it at exit).
  for (int i = 0; i < 50 && !runtime.listeners_closed(); ++i) {
    tick.expires_after(std::chrono::milliseconds(20));
    co_await tick.async_wait(net::use_nothrow);
  }
  spdlog::info("all clients gone: stopping");
  stop();
}

// What the admin console reads and does (admin/console.hpp), on the first worker.
class DaemonOperations : public admin::Operations {
 public:
  DaemonOperations(asio::io_context& io, Runtime& runtime, std::shared_ptr<session::SessionContext> context,
                   std::function<std::string()> reload)
      : io_(io), runtime_(runtime), context_(std::move(context)), reload_(std::move(reload)) {}

  asio::any_io_executor executor() const override { return io_.get_executor(); }
  metrics::Sample sample() const override { return runtime_.sample(); }
  std::shared_ptr<const config::Config> config() const override { return context_->current()->config; }
  std::string reload() override { return reload_(); }
  std::string pause(const std::string& service) override { return each_pool(service, true); }
  std::string resume(const std::string& service) override { return each_pool(service, false); }
  void shutdown() override {
    spdlog::info("admin console: SHUTDOWN");
    ::kill(::getpid(), SIGTERM);  // the signal's own path: drain, then exit
  }

  net::awaitable<std::vector<session::ClientDescription>> clients() override {
    struct Gather {
      explicit Gather(asio::io_context& io) : timer(io) {}
      std::mutex mutex;
      std::vector<session::ClientDescription> got;
      std::size_t left = 0;
      asio::steady_timer timer;
    };
    auto sessions = context_->cancels.sessions();
    if (sessions.empty()) co_return std::vector<session::ClientDescription>{};
    auto gather = std::make_shared<Gather>(io_);
    gather->left = sessions.size();
    gather->timer.expires_after(std::chrono::seconds(1));
    for (auto& session : sessions) {
      session->describe([gather, io = io_.get_executor()](session::ClientDescription description) {
        bool last = false;
        {
          std::lock_guard lock(gather->mutex);
          gather->got.push_back(std::move(description));
          last = --gather->left == 0;
        }
        if (last) asio::post(io, [gather] { gather->timer.cancel(); });
      });
    }
    co_await gather->timer.async_wait(net::use_nothrow);
    std::lock_guard lock(gather->mutex);
    auto out = gather->got;
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.connected_seconds > b.connected_seconds; });
    co_return out;
  }

  std::vector<IdleServer> idle_servers() const override {
    std::vector<IdleServer> out;
    const auto now = std::chrono::steady_clock::now();
    for (const auto& [name, service] : context_->current()->services) {
      for (const auto& idle : service->pool->idle_connections()) {
        out.push_back({name, service->config.backend, idle.server_id,
                       std::chrono::duration_cast<std::chrono::seconds>(now - idle.created_at).count(),
                       std::chrono::duration_cast<std::chrono::seconds>(now - idle.last_used).count()});
      }
    }
    return out;
  }

 private:
  std::string each_pool(const std::string& name, bool pause) {
    const auto snapshot = context_->current();
    bool found = false;
    for (const auto& [service_name, service] : snapshot->services) {
      if (!name.empty() && service_name != name) continue;
      found = true;
      if (pause) {
        service->pool->pause();
      } else {
        service->pool->resume();
      }
      spdlog::info("admin console: {} service {}", pause ? "PAUSE" : "RESUME", service_name);
    }
    return found || name.empty() ? std::string() : "no service \"" + name + "\"";
  }

  asio::io_context& io_;
  Runtime& runtime_;
  std::shared_ptr<session::SessionContext> context_;
  std::function<std::string()> reload_;
};

}  // namespace

int run_daemon(std::shared_ptr<const config::Config> config, const std::string& config_path, DaemonOptions options) {
  // OpenSSL writes TLS records with write(2): a peer that went away must be an EPIPE, not a signal.
  std::signal(SIGPIPE, SIG_IGN);
  const int workers = config->workers > 0 ? config->workers : std::max(1u, std::thread::hardware_concurrency());
  Workers contexts;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> keep_running;
  for (int i = 0; i < workers; ++i) {
    contexts.push_back(std::make_unique<Worker>(1));
    keep_running.push_back(asio::make_work_guard(*contexts.back()));
  }
  // The listener, the signals and the pools' upkeep live on the first; sessions on all of them.
  auto& io = *contexts.front();
  const auto stop_all = [&contexts] {
    for (auto& each : contexts) each->stop();
  };

  auto context = std::make_shared<session::SessionContext>();
  context->mock_secret = protocol::scram::random_bytes(32);
  Runtime runtime(io, context);
  {
    std::vector<std::string> tls_errors;
    auto tls = build_tls(*config, tls_errors);
    if (!tls) {
      for (const auto& error : tls_errors) spdlog::critical("{}", error);
      return 1;
    }
    runtime.apply(config, std::move(*tls));
  }

  tcp::acceptor acceptor(io);
  std::vector<std::unique_ptr<tcp::acceptor>> worker_acceptors;  // the other workers' sockets
  try {
    auto address = asio::ip::make_address(config->listen.host);
    tcp::endpoint endpoint(address, config->listen.port);
    const bool group = contexts.size() > 1;
    if (group && endpoint.port() != 0) refuse_if_in_use(endpoint);
    listen_on(acceptor, endpoint, group);
    endpoint = acceptor.local_endpoint();  // port 0: the others join the port the kernel chose
    for (std::size_t i = 1; i < contexts.size(); ++i) {
      worker_acceptors.push_back(std::make_unique<tcp::acceptor>(*contexts[i]));
      listen_on(*worker_acceptors.back(), endpoint, group);
    }
  } catch (const std::exception& e) {
    spdlog::critical("cannot listen on {}:{}: {}", config->listen.host, config->listen.port, e.what());
    return 1;
  }
  spdlog::info("pgsluice {} listening on {}:{} with {} worker(s), {} service(s)", PGSLUICE_VERSION,
               config->listen.host, config->listen.port, workers, config->services.size());

  accept_loop(io, acceptor, context);
  for (std::size_t i = 0; i < worker_acceptors.size(); ++i)
    accept_loop(*contexts[i + 1], *worker_acceptors[i], context);
  // Stops taking clients; each acceptor is closed on its own worker's thread.
  const auto stop_accepting = [&] {
    net::error_code ignored;
    acceptor.close(ignored);
    for (auto& each : worker_acceptors) {
      asio::post(each->get_executor(), [&each] {
        net::error_code ignored;
        each->close(ignored);
      });
    }
  };
  std::vector<asio::any_io_executor> worker_executors;
  for (auto& each : contexts) worker_executors.push_back(each->get_executor());
  asio::co_spawn(io, return_memory(context, std::move(worker_executors)), asio::detached);

  // /metrics, /healthz, /readyz (DESIGN §6) on the first worker, beside the listener.
  tcp::acceptor metrics_acceptor(io);
  if (config->metrics_enabled) {
    try {
      tcp::endpoint endpoint(asio::ip::make_address(config->metrics_listen.host), config->metrics_listen.port);
      metrics_acceptor.open(endpoint.protocol());
      metrics_acceptor.set_option(tcp::acceptor::reuse_address(true));
      metrics_acceptor.bind(endpoint);
      metrics_acceptor.listen();
    } catch (const std::exception& e) {
      spdlog::critical("cannot listen for metrics on {}:{}: {} (metrics.enabled: false turns the endpoint off)",
                       config->metrics_listen.host, config->metrics_listen.port, e.what());
      return 1;
    }
    auto handler = [&runtime](std::string_view path) {
      metrics::HttpResponse response;
      if (path == "/metrics") {
        response.content_type = "text/plain; version=0.0.4; charset=utf-8";
        response.body = metrics::render_text(runtime.sample());
      } else if (path == "/healthz") {
        response.body = "ok\n";
      } else if (path == "/readyz") {
        if (auto reason = runtime.not_ready_reason(); !reason.empty()) {
          response.status = 503;
          response.body = "not ready: " + reason + "\n";
        } else {
          response.body = "ready\n";
        }
      } else {
        response.status = 404;
        response.body = "not found; try /metrics, /healthz or /readyz\n";
      }
      return response;
    };
    asio::co_spawn(io, metrics::serve_http(metrics_acceptor, std::move(handler)), asio::detached);
    spdlog::info("metrics on http://{}:{}/metrics (/healthz, /readyz)", config->metrics_listen.host,
                 config->metrics_listen.port);
  }

  // SIGTERM/SIGINT: stop accepting, let transactions in flight finish (up to shutdown_timeout), tell
  // every client 57P01, exit 0. A second signal exits at once.
  asio::signal_set signals(io, SIGTERM, SIGINT);
  std::atomic<bool> stopping = false;  // the signal handlers may run on any worker thread
  std::function<void(const net::error_code&, int)> on_signal = [&](const net::error_code& ec, int signal) {
    if (ec) return;
    if (stopping) {
      spdlog::warn("received signal {} again: exiting now", signal);
      stop_all();
      return;
    }
    stopping = true;
    const auto shutdown_timeout = context->current()->config->shutdown_timeout;
    spdlog::info("received signal {}: draining clients (shutdown_timeout {}ms)", signal, shutdown_timeout.count());
    stop_accepting();
    context->draining = true;  // /readyz says 503 from now on; /metrics stays until the exit
    for (auto& session : context->cancels.sessions()) session->begin_shutdown();
    asio::co_spawn(io, drain(context, runtime, shutdown_timeout, stop_all), asio::detached);
    signals.async_wait(on_signal);
  };
  signals.async_wait(on_signal);

  // SIGHUP and the console's RELOAD: re-read the file (DESIGN §5). A valid one is applied live; an
  // invalid one is logged with every error and the running configuration stays (the errors are
  // returned, for the console).
  std::function<std::string()> reload = [&]() -> std::string {
    if (stopping) {
      spdlog::warn("reload: ignored while shutting down");
      return "pgsluice is shutting down";
    }
    auto reloaded = config::load_from_file(config_path);
    if (!reloaded.config) {
      std::string errors;
      for (const auto& error : reloaded.errors) {
        spdlog::error("reload: {}:{}: {}", config_path, error.line, error.message);
        errors += fmt::format("{}{}:{}: {}", errors.empty() ? "" : "; ", config_path, error.line, error.message);
      }
      spdlog::error("reload: {} error(s); keeping the running configuration", reloaded.errors.size());
      runtime.count_reload(false);
      return errors;
    }
    auto next = std::make_shared<const config::Config>(std::move(*reloaded.config));
    // Certificate files are read again (rotated ones reach new connections; existing ones go on).
    std::vector<std::string> tls_errors;
    auto tls = build_tls(*next, tls_errors);
    if (!tls) {
      for (const auto& error : tls_errors) spdlog::error("reload: {}: {}", config_path, error);
      spdlog::error("reload: {} error(s); keeping the running configuration", tls_errors.size());
      runtime.count_reload(false);
      return fmt::format("{}", fmt::join(tls_errors, "; "));
    }
    if (!options.log_level_from_command_line) {
      const auto level = spdlog::level::from_str(next->log_level);
      if (level != spdlog::level::off || next->log_level == "off") spdlog::set_level(level);
    }
    const auto summary = runtime.apply(next, std::move(*tls));
    runtime.count_reload(true);
    const auto names = [](const std::vector<std::string>& list) {
      return list.empty() ? std::string("none") : fmt::format("{}", fmt::join(list, ", "));
    };
    spdlog::info("reload: applied {} (services added: {}; removed: {}; changed: {})", config_path,
                 names(summary.added), names(summary.removed), names(summary.changed));
    if (!summary.needs_restart.empty()) {
      spdlog::warn("reload: {} changed but only take effect after a restart; the running values stay",
                   fmt::join(summary.needs_restart, ", "));
    }
    return std::string();
  };
  asio::signal_set hangup(io, SIGHUP);
  std::function<void(const net::error_code&, int)> on_hangup = [&](const net::error_code& ec, int) {
    if (ec) return;
    hangup.async_wait(on_hangup);
    reload();
  };
  hangup.async_wait(on_hangup);
  context->admin = std::make_shared<admin::Console>(std::make_shared<DaemonOperations>(io, runtime, context, reload));

  std::vector<std::thread> threads;
  for (int i = 1; i < workers; ++i) {
    threads.emplace_back([&contexts, i] {
      metrics::set_worker_index(static_cast<unsigned>(i));
      contexts[i]->run();
    });
  }
  metrics::set_worker_index(0);
  io.run();
  for (auto& thread : threads) thread.join();
  keep_running.clear();
  for (auto& each : contexts) each->shut_down();
  context->admin.reset();  // it refers to this function's locals (and to the context: a cycle)
  spdlog::info("pgsluice stopped");
  return 0;
}

}  // namespace pgsluice::app
