#include "pgsluice/server/server_connection.hpp"

#include <algorithm>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <spdlog/spdlog.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <span>
#include <vector>

#include "pgsluice/protocol/builder.hpp"
#include "pgsluice/protocol/md5.hpp"
#include "pgsluice/protocol/scram.hpp"

namespace pgsluice::server {

namespace asio = net::asio;
using namespace asio::experimental::awaitable_operators;
using protocol::Buffer;

namespace {

// The reported parameters a client gets restored to the connection's startup value when it did not
// ask for its own (DESIGN §2, session parameters).
constexpr std::string_view kTrackedParameters[] = {"application_name", "client_encoding", "DateStyle", "TimeZone",
                                                   "IntervalStyle", "standard_conforming_strings"};

const std::vector<std::string>& tracked_parameter_names() {
  static const std::vector<std::string> names(std::begin(kTrackedParameters), std::end(kTrackedParameters));
  return names;
}

std::string describe_error(protocol::Bytes payload) {
  auto fields = protocol::parse_error_response(payload);
  if (!fields) return "malformed error from server";
  return fields->sqlstate + " " + fields->message;
}

std::uint64_t next_connection_id() {
  static std::atomic<std::uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

bool same_guc_name(std::string_view a, std::string_view b) {
  return a.size() == b.size() && ::strncasecmp(a.data(), b.data(), a.size()) == 0;
}

bool is_tracked_parameter(std::string_view name) {
  for (auto tracked : kTrackedParameters) {
    if (tracked.size() == name.size() && ::strncasecmp(tracked.data(), name.data(), name.size()) == 0) return true;
  }
  return false;
}

std::string parameter_fingerprint(const ParameterMap& parameters) {
  std::string out;
  for (const auto& [name, value] : parameters) {
    out += name;
    out += '=';
    out += value;
    out += '\0';
  }
  return out;
}

bool GucNameLess::operator()(const std::string& a, const std::string& b) const {
  return ::strcasecmp(a.c_str(), b.c_str()) < 0;
}

ServerConnection::ServerConnection(net::tcp::socket socket, std::shared_ptr<const ServerTarget> target)
    : stream_(std::move(socket)), target_(std::move(target)), id_(next_connection_id()) {}

ServerConnection::~ServerConnection() { close(); }

void ServerConnection::close() {
  if (!stream_.is_open()) return;
  // Best effort Terminate so the backend exits at once instead of logging an unexpected EOF.
  static const std::uint8_t kTerminate[] = {'X', 0, 0, 0, 4};
  const std::array<std::span<const std::uint8_t>, 1> pieces{std::span<const std::uint8_t>(kTerminate)};
  std::size_t written = 0;
  net::error_code ec;
  stream_.try_write_all(pieces, written, ec);
  stream_.close();
}

bool ServerConnection::looks_usable() { return buffer_.empty() && stream_.quiet(); }

bool ServerConnection::move_to(const net::asio::any_io_executor& executor, const void* worker) {
  // `home`, once set, is the socket's worker: no query through the type-erased executors.
  if (home == worker) return true;
  if (pool::context_key(stream_.get_executor()) == worker) {
    home = worker;
    return true;
  }
  if (!stream_.move_to(executor)) return false;
  home = worker;
  return true;
}

namespace {

// The backend's addresses. A numeric host is not looked up: Asio's resolver runs getaddrinfo on a
// thread of its own, and once a process has a second thread glibc wraps every recv, sendmsg and
// epoll_wait in cancellation bookkeeping and takes locking paths a single-threaded process skips
// (1 µs of the proxy's CPU per transaction at `pgbench -S -c 50` with `workers: 1`).
net::awaitable<net::error_code> resolve(const asio::any_io_executor& executor, const std::string& host,
                                        unsigned short port, std::vector<net::tcp::endpoint>& out) {
  net::error_code ec;
  if (auto address = asio::ip::make_address(host, ec); !ec) {
    out.emplace_back(address, port);
    co_return net::error_code{};
  }
  net::tcp::resolver resolver(executor);
  auto [rec, results] = co_await resolver.async_resolve(host, std::to_string(port), net::use_nothrow);
  for (const auto& entry : results) out.push_back(entry.endpoint());
  co_return rec;
}

}  // namespace

net::awaitable<bool> negotiate_tls(net::Stream& stream, const ServerTarget& target, std::string& error) {
  if (target.tls_mode == net::ServerTlsMode::disable) co_return true;
  auto context = target.tls_source ? target.tls_source->get() : nullptr;
  if (!context) {
    error = "no TLS context for the backend";
    co_return false;
  }
  Buffer out;
  protocol::append_ssl_request(out);
  if (auto ec = co_await net::write_all(stream, out)) {
    error = "write failed: " + ec.message();
    co_return false;
  }
  // Exactly one byte: what follows 'S' is the server's TLS handshake.
  std::uint8_t answer = 0;
  auto [ec, n] = co_await stream.socket().async_read_some(asio::buffer(&answer, 1), net::use_nothrow);
  if (ec || n != 1) {
    error = "connection lost after SSLRequest";
    co_return false;
  }
  if (answer == 'N') {
    if (target.tls_mode == net::ServerTlsMode::prefer) co_return true;
    error = std::string("the server does not accept TLS (tls.mode ") + net::to_string(target.tls_mode) + ")";
    co_return false;
  }
  if (answer != 'S') {
    error = answer == 'E' ? "the server refused SSLRequest with an error" : "unexpected answer to SSLRequest";
    co_return false;
  }
  if (!co_await stream.connect_tls(*context, target.host, error)) {
    error = "TLS to " + target.host + ":" + std::to_string(target.port) + ": " + error;
    co_return false;
  }
  co_return true;
}

net::awaitable<std::unique_ptr<ServerConnection>> ServerConnection::connect(
    asio::any_io_executor executor, std::shared_ptr<const ServerTarget> target, std::string& error) {
  auto attempt = [executor, target, &error]() -> net::awaitable<std::unique_ptr<ServerConnection>> {
    std::vector<net::tcp::endpoint> endpoints;
    if (auto rec = co_await resolve(executor, target->host, target->port, endpoints)) {
      error = "cannot resolve " + target->host + ": " + rec.message();
      co_return nullptr;
    }
    net::tcp::socket socket(executor);
    auto [cec, endpoint] = co_await asio::async_connect(socket, endpoints, net::use_nothrow);
    if (cec) {
      error = "connect to " + target->host + ":" + std::to_string(target->port) + " failed: " + cec.message();
      co_return nullptr;
    }
    (void)endpoint;
    net::error_code ignored;
    socket.set_option(net::tcp::no_delay(true), ignored);
    socket.set_option(asio::socket_base::keep_alive(true), ignored);
    std::unique_ptr<ServerConnection> connection(new ServerConnection(std::move(socket), target));
    if (!co_await connection->negotiate_tls(error)) co_return nullptr;
    if (!co_await connection->startup(error)) co_return nullptr;
    co_return connection;
  };

  asio::steady_timer timer(executor);
  timer.expires_after(target->connect_timeout);
  auto outcome = co_await (attempt() || timer.async_wait(net::use_nothrow));
  if (outcome.index() == 1) {
    error = "connect_timeout " + std::to_string(target->connect_timeout.count()) + "ms expired connecting to " +
            target->host + ":" + std::to_string(target->port);
    co_return nullptr;
  }
  co_return std::move(std::get<0>(outcome));
}

net::awaitable<bool> ServerConnection::negotiate_tls(std::string& error) {
  return server::negotiate_tls(stream_, *target_, error);
}

net::awaitable<bool> ServerConnection::startup(std::string& error) {
  Buffer out;
  protocol::append_startup_message(out, {{"user", target_->user}, {"database", target_->database}});
  if (auto ec = co_await net::write_all(stream_, out)) {
    error = "write failed: " + ec.message();
    co_return false;
  }
  for (;;) {
    auto message = co_await net::read_message(stream_, buffer_, target_->max_message_size);
    if (!message) {
      error = message.error().message;
      co_return false;
    }
    const auto type = message->type;
    const auto payload = message->payload;
    bool ok = true;
    switch (type) {
      case 'R': {
        auto request = protocol::parse_authentication(payload);
        if (!request) {
          error = request.error().message;
          co_return false;
        }
        if (request->code == 0 && target_->channel_binding == ServerTarget::ChannelBinding::require &&
            !channel_bound_) {
          // libpq's channel_binding=require: a server that lets us in without a bound SCRAM exchange
          // (trust, or an impostor that does not check) is not the one the setting trusts.
          error =
              "the server authenticated pgsluice without SCRAM channel binding (tls.channel_binding require)";
          co_return false;
        }
        if (request->code != 0) {
          // Copy what the request carries: authenticate() reads more into the same buffer.
          std::string data = std::string(protocol::as_string_view(request->data));
          protocol::Authentication copy{request->code, {}};
          buffer_.consume(message->frame.size());
          copy.data = protocol::Bytes(reinterpret_cast<const std::uint8_t*>(data.data()), data.size());
          if (!co_await authenticate(copy, error)) co_return false;
          continue;
        }
        break;
      }
      case 'S': {
        auto status = protocol::parse_parameter_status(payload);
        if (status) parameters_[std::string(status->name)] = std::string(status->value);
        break;
      }
      case 'K': {
        auto key = protocol::parse_backend_key_data(payload);
        if (key) key_ = *key;
        break;
      }
      case 'E':
        error = "server refused the connection: " + describe_error(payload);
        ok = false;
        break;
      case 'N':
      case 'v':  // NegotiateProtocolVersion: we asked for 3.0 with no options, nothing to do
        break;
      case 'Z':
        buffer_.consume(message->frame.size());
        initial_parameters_ = parameters_;
        co_return true;
      default:
        error = std::string("unexpected message '") + type + "' during server startup";
        ok = false;
    }
    buffer_.consume(message->frame.size());
    if (!ok) co_return false;
  }
}

net::awaitable<bool> ServerConnection::authenticate(const protocol::Authentication& request, std::string& error) {
  using protocol::AuthRequest;
  const auto code = static_cast<AuthRequest>(request.code);
  Buffer out;
  auto need_password = [&]() -> bool {
    if (code != AuthRequest::sasl && target_->channel_binding == ServerTarget::ChannelBinding::require) {
      // The password in the clear or as MD5 would go to whoever answers; with channel binding
      // required, it goes nowhere but into a bound SCRAM exchange.
      error = std::string("the server asks for ") + (code == AuthRequest::md5 ? "an MD5" : "a cleartext") +
              " password, but tls.channel_binding require allows only SCRAM-SHA-256-PLUS";
      return false;
    }
    if (target_->password) return true;
    error = "the server asks for a password but the service has no server_password";
    return false;
  };
  switch (code) {
    case AuthRequest::cleartext:
      if (!need_password()) co_return false;
      protocol::append_password_message(out, *target_->password);
      break;
    case AuthRequest::md5: {
      if (!need_password()) co_return false;
      protocol::md5::Salt salt{};
      std::copy(request.data.begin(), request.data.end(), salt.begin());
      protocol::append_password_message(out, protocol::md5::salted_response(target_->user, *target_->password, salt));
      break;
    }
    case AuthRequest::sasl: {
      if (!need_password()) co_return false;
      bool offered = false;
      bool offered_plus = false;
      for (auto mechanism : protocol::sasl_mechanisms(request.data)) {
        offered |= mechanism == protocol::scram::kMechanism;
        offered_plus |= mechanism == protocol::scram::kMechanismPlus;
      }
      // Over TLS, channel binding when the server offers it, as libpq's channel_binding=prefer: the
      // server proves it holds the certificate this TLS session saw, so a man in the middle (with
      // tls.mode require, which checks no certificate) cannot relay the login. A certificate whose
      // hash cannot be named (Ed25519) logs in without binding ("n"; libpq fails there).
      protocol::scram::ClientExchange exchange(*target_->password);
      std::string_view mechanism = protocol::scram::kMechanism;
      const auto binding = target_->channel_binding;
      if (stream_.tls() && binding != ServerTarget::ChannelBinding::disable) {
        std::string end_point = offered_plus ? stream_.tls_server_end_point() : std::string();
        if (!end_point.empty()) {
          exchange.bind_channel(std::move(end_point));
          mechanism = protocol::scram::kMechanismPlus;
        } else if (!offered_plus) {
          exchange.could_bind();
        }
      }
      if (binding == ServerTarget::ChannelBinding::require && mechanism != protocol::scram::kMechanismPlus) {
        error =
            stream_.tls()
                ? "the server does not offer SCRAM-SHA-256-PLUS (tls.channel_binding require)"
                : "channel binding needs TLS, and the server answered without (tls.channel_binding require)";
        co_return false;
      }
      if (!offered && mechanism != protocol::scram::kMechanismPlus) {
        error = "the server offers no SASL mechanism pgsluice supports";
        co_return false;
      }
      spdlog::debug("server {}:{}: SCRAM login as {} with {}", target_->host, target_->port, target_->user,
                    mechanism);
      protocol::append_sasl_initial_response(out, mechanism, exchange.client_first());
      if (auto ec = co_await net::write_all(stream_, out)) {
        error = "write failed: " + ec.message();
        co_return false;
      }
      // AuthenticationSASLContinue, then AuthenticationSASLFinal.
      for (int step = 0; step < 2; ++step) {
        auto message = co_await net::read_message(stream_, buffer_, target_->max_message_size);
        if (!message) {
          error = message.error().message;
          co_return false;
        }
        if (message->type == 'E') {
          error = "server authentication failed: " + describe_error(message->payload);
          co_return false;
        }
        auto reply = protocol::parse_authentication(message->payload);
        const auto expected = step == 0 ? AuthRequest::sasl_continue : AuthRequest::sasl_final;
        if (message->type != 'R' || !reply || reply->code != static_cast<std::int32_t>(expected)) {
          error = "unexpected message during SCRAM authentication";
          co_return false;
        }
        const std::string data(protocol::as_string_view(reply->data));
        buffer_.consume(message->frame.size());
        if (step == 0) {
          auto final_message = exchange.handle_server_first(data);
          if (!final_message) {
            error = "SCRAM: " + final_message.error().message;
            co_return false;
          }
          out.clear();
          protocol::append_sasl_response(out, *final_message);
          if (auto ec = co_await net::write_all(stream_, out)) {
            error = "write failed: " + ec.message();
            co_return false;
          }
        } else if (auto verified = exchange.verify_server_final(data); !verified) {
          error = "SCRAM: the server's signature is wrong: " + verified.error().message;
          co_return false;
        }
      }
      channel_bound_ = mechanism == protocol::scram::kMechanismPlus;
      co_return true;
    }
    default:
      error = "unsupported authentication request " + std::to_string(request.code) + " from the server";
      co_return false;
  }
  if (auto ec = co_await net::write_all(stream_, out)) {
    error = "write failed: " + ec.message();
    co_return false;
  }
  co_return true;
}

net::awaitable<bool> ServerConnection::drain_until_ready(int ready_count, int& errors, char& status) {
  while (ready_count > 0) {
    auto message = co_await net::read_message(stream_, buffer_, target_->max_message_size);
    if (!message) co_return false;
    switch (message->type) {
      case 'Z': {
        auto ready = protocol::parse_ready_for_query(message->payload);
        if (!ready) co_return false;
        status = *ready;
        --ready_count;
        break;
      }
      case 'S': {
        auto parameter = protocol::parse_parameter_status(message->payload);
        if (parameter) parameters_[std::string(parameter->name)] = std::string(parameter->value);
        break;
      }
      case 'E':
        ++errors;
        spdlog::debug("server: injected statement failed: {}", describe_error(message->payload));
        break;
      default:
        break;
    }
    buffer_.consume(message->frame.size());
  }
  co_return true;
}

net::awaitable<bool> ServerConnection::apply_parameters(const ParameterMap& wanted, std::chrono::milliseconds timeout) {
  // Called on every lease in transaction mode: compare in place, build nothing unless a value differs.
  Buffer out;
  int statements = 0;
  std::vector<std::pair<std::string, std::string>> unreported;
  auto apply = [&](const std::string& name, const std::string& value) {
    auto reported = parameters_.find(name);
    if (reported != parameters_.end()) {
      if (reported->second == value) return;
    } else {
      auto applied = applied_.find(name);
      if (applied != applied_.end() && applied->second == value) return;
      unreported.emplace_back(name, value);
    }
    // set_config takes the value as the startup packet would (lists such as search_path included)
    // and needs no quoting: parameters travel out of band.
    protocol::append_parse(out, "", "SELECT pg_catalog.set_config($1, $2, false)");
    protocol::append_bind_text(out, "", "", {name, value});
    protocol::append_execute(out, "");
    protocol::append_sync(out);
    ++statements;
  };
  for (const auto& key : tracked_parameter_names()) {
    if (wanted.contains(key)) continue;
    // Not asked for by this client: the value this connection started with, whoever used it since.
    if (auto initial = initial_parameters_.find(key); initial != initial_parameters_.end()) {
      apply(initial->first, initial->second);
    }
  }
  for (const auto& [name, value] : wanted) apply(name, value);
  // What pgsluice set here for an earlier client and this one did not ask for goes back to the
  // server's default (a startup option such as search_path or app.tenant must not outlive its
  // client on a shared connection). RESET takes the name as one quoted identifier.
  std::vector<std::string> reset;
  for (const auto& [name, value] : applied_) {
    if (wanted.contains(name)) continue;
    std::string quoted = "RESET \"";
    for (char c : name) {
      if (c == '"') quoted += '"';
      quoted += c;
    }
    quoted += '"';
    protocol::append_query(out, quoted);
    ++statements;
    reset.push_back(name);
  }
  if (statements == 0) co_return true;
  statements_.set_unnamed_owner(ServerStatements::kUnknownUnnamed);  // the Parses above replace the unnamed statement
  int errors = 0;
  char status = 'I';
  auto exchange = [&]() -> net::awaitable<bool> {
    if (auto ec = co_await net::write_all(stream_, out)) co_return false;
    co_return co_await drain_until_ready(statements, errors, status);
  };
  // A hung server must not hold the client forever (DESIGN §3): the exchange is bounded.
  asio::steady_timer timer(stream_.get_executor(), timeout);
  auto outcome = co_await (exchange() || timer.async_wait(net::use_nothrow));
  if (outcome.index() != 0 || !std::get<0>(outcome)) co_return false;
  for (auto& [name, value] : unreported) applied_[name] = value;
  for (const auto& name : reset) applied_.erase(name);
  if (errors > 0) spdlog::debug("server: {} of {} session parameters were refused", errors, statements);
  co_return status == 'I';
}

void ServerConnection::note_applied(const std::string& name, const std::optional<std::string>& value) {
  if (parameters_.contains(name)) return;  // reported: ParameterStatus keeps parameters_ current
  if (value) {
    applied_[name] = *value;
  } else {
    applied_.erase(name);
  }
}

net::awaitable<bool> ServerConnection::run_discarding(std::string_view sql) {
  statements_.set_unnamed_owner(ServerStatements::kNoUnnamed);  // a simple Query drops the unnamed statement
  Buffer out;
  protocol::append_query(out, sql);
  if (auto ec = co_await net::write_all(stream_, out)) co_return false;
  int errors = 0;
  char status = 'I';
  if (!co_await drain_until_ready(1, errors, status)) co_return false;
  co_return errors == 0 && status == 'I';
}

net::awaitable<bool> ServerConnection::run_discarding(std::string_view sql, std::chrono::milliseconds timeout) {
  asio::steady_timer timer(stream_.get_executor(), timeout);
  auto outcome = co_await (run_discarding(sql) || timer.async_wait(net::use_nothrow));
  co_return outcome.index() == 0 && std::get<0>(outcome);
}

net::awaitable<void> send_cancel(asio::any_io_executor executor, ServerTarget target, protocol::BackendKeyData key) {
  auto attempt = [&]() -> net::awaitable<void> {
    std::vector<net::tcp::endpoint> endpoints;
    if (co_await resolve(executor, target.host, target.port, endpoints)) co_return;
    net::tcp::socket socket(executor);
    auto [cec, endpoint] = co_await asio::async_connect(socket, endpoints, net::use_nothrow);
    (void)endpoint;
    if (cec) co_return;
    net::Stream stream(std::move(socket));
    std::string error;
    if (!co_await negotiate_tls(stream, target, error)) {
      spdlog::info("cancel request to {}:{} not sent: {}", target.host, target.port, error);
      co_return;
    }
    Buffer out;
    protocol::append_cancel_request(out, key.process_id, key.secret_key);
    co_await net::write_all(stream, out);
    // Postgres closes the connection after reading the request; wait for that so it was read.
    net::MessageBuffer scratch(64);
    co_await net::read_some(stream, scratch, 64);
  };
  asio::steady_timer timer(executor);
  timer.expires_after(target.connect_timeout);
  co_await (attempt() || timer.async_wait(net::use_nothrow));
}

}  // namespace pgsluice::server
