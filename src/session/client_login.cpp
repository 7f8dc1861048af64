// The login half of a client session: startup packet, SSL/GSS refusal, cancel requests, client
// authentication (SCRAM-SHA-256, MD5, trust) and the service lookup (DESIGN §2).
#include <sys/socket.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/this_coro.hpp>
#include <spdlog/spdlog.h>

#include "pgsluice/protocol/backend_messages.hpp"
#include "pgsluice/protocol/md5.hpp"
#include "pgsluice/protocol/scram.hpp"
#include "pgsluice/session/client_session.hpp"

namespace pgsluice::session {

namespace asio = net::asio;
using namespace asio::experimental::awaitable_operators;
using protocol::Buffer;

namespace {

// PG_MAX_AUTH_TOKEN_LENGTH, the largest password or SASL message Postgres reads, plus its length field.
constexpr std::size_t kMaxAuthMessageSize = 65535 + 4;


// "-c name=value" and "--name=value" pairs from the startup `options` parameter (libpq's PGOPTIONS).
void parse_options(std::string_view options, server::ParameterMap& out) {
  std::vector<std::string> words;
  std::string word;
  bool escaped = false;
  for (char c : options) {
    if (escaped) {
      word.push_back(c);
      escaped = false;
    } else if (c == '\\') {
      escaped = true;
    } else if (c == ' ' || c == '\t') {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
    } else {
      word.push_back(c);
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  for (std::size_t i = 0; i < words.size(); ++i) {
    std::string_view setting;
    if (words[i] == "-c" && i + 1 < words.size()) {
      setting = words[++i];
    } else if (words[i].starts_with("--")) {
      setting = std::string_view(words[i]).substr(2);
    } else if (words[i].starts_with("-c")) {
      setting = std::string_view(words[i]).substr(2);
    } else {
      continue;
    }
    const auto eq = setting.find('=');
    if (eq == std::string_view::npos || eq == 0) continue;
    std::string name(setting.substr(0, eq));
    for (auto& c : name) if (c == '-') c = '_';
    out[name] = std::string(setting.substr(eq + 1));
  }
}

}  // namespace

net::awaitable<ClientSession::LoginOutcome> ClientSession::startup() {
  const auto tls_mode = snapshot_->client_tls_mode;
  const auto& tls = snapshot_->client_tls;
  const bool tls_on = tls && tls_mode != net::ClientTlsMode::disable;
  if (tls_on) {
    // Postgres 17's direct TLS (sslnegotiation=direct): a ClientHello (a TLS handshake record,
    // 0x16) comes first instead of a startup packet, whose first byte (of its length) is 0.
    auto [ec] = co_await stream_.async_wait_readable(net::use_nothrow);
    if (ec) co_return LoginOutcome::closed;
    std::uint8_t first = 0;
    const auto n = ::recv(stream_.socket().native_handle(), &first, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 1 && first == 0x16) {
      std::string error;
      if (!co_await stream_.accept_tls(*tls, /*require_alpn=*/true, error)) {
        spdlog::info("session {}: direct TLS refused: {}", peer_, error);
        co_return LoginOutcome::closed;
      }
      spdlog::debug("session {}: direct TLS: {}", peer_, stream_.tls_description());
    }
  }
  for (;;) {
    auto size = co_await net::read_startup_packet(stream_, buffer_);
    if (!size) {
      if (size.error().sqlstate != "08006") co_await send_fatal(size.error().sqlstate, size.error().message);
      co_return LoginOutcome::closed;
    }
    auto packet = protocol::parse_startup_packet(buffer_.readable().first(*size));
    buffer_.consume(*size);
    if (!packet) {
      co_await send_fatal(packet.error().sqlstate, packet.error().message);
      co_return LoginOutcome::closed;
    }
    if (std::holds_alternative<protocol::SslRequest>(*packet) ||
        std::holds_alternative<protocol::GssEncRequest>(*packet)) {
      if (stream_.tls()) {
        co_await send_fatal("08P01", "pgsluice: encryption requested on a connection that is already encrypted");
        co_return LoginOutcome::closed;
      }
      if (!buffer_.empty()) {
        // Bytes sent before the answer would be taken as coming through the encrypted channel.
        co_await send_fatal("08P01", "pgsluice: received unencrypted data after the encryption request");
        co_return LoginOutcome::closed;
      }
      if (tls_on && std::holds_alternative<protocol::SslRequest>(*packet)) {
        static const std::uint8_t kYes[] = {'S'};
        if (auto ec = co_await net::write_all(stream_, kYes)) co_return LoginOutcome::closed;
        std::string error;
        if (!co_await stream_.accept_tls(*tls, /*require_alpn=*/false, error)) {
          spdlog::info("session {}: TLS handshake failed: {}", peer_, error);
          co_return LoginOutcome::closed;
        }
        spdlog::debug("session {}: TLS: {}", peer_, stream_.tls_description());
        continue;
      }
      // No GSS encryption, and TLS only when configured: 'N' and the client goes on in plain text
      // (docs §55.2.10), or gives up.
      static const std::uint8_t kNo[] = {'N'};
      if (auto ec = co_await net::write_all(stream_, kNo)) co_return LoginOutcome::closed;
      continue;
    }
    if (auto* cancel = std::get_if<protocol::CancelRequest>(&*packet)) {
      if (auto session = context_->cancels.find({cancel->process_id, cancel->secret_key})) {
        session->forward_cancel();
      }
      co_return LoginOutcome::cancel_request;
    }
    auto& message = std::get<protocol::StartupMessage>(*packet);
    if (tls_mode == net::ClientTlsMode::require && !stream_.tls()) {
      std::string user;
      for (const auto& [name, value] : message.parameters) {
        if (name == "user") user = value;
      }
      spdlog::info("session {}: refused a plain-text login of user {} (tls.mode require)", peer_, user);
      co_await send_fatal("28000", "pgsluice: TLS is required (tls.mode require); connect with sslmode=require");
      co_return LoginOutcome::closed;
    }
    Buffer out;
    std::vector<std::string> unrecognized;
    for (const auto& [name, value] : message.parameters) {
      if (name == "user") {
        user_ = value;
      } else if (name == "database") {
        database_ = value;
      } else if (name == "replication") {
        if (value != "false" && value != "0" && value != "off" && value != "no") {
          co_await send_fatal("0A000", "pgsluice: replication connections are not supported");
          co_return LoginOutcome::closed;
        }
      } else if (name == "options") {
        parse_options(value, parameters_);
      } else if (name.starts_with("_pq_.")) {
        unrecognized.push_back(name);
      } else {
        parameters_[name] = value;
      }
    }
    if (user_.empty()) {
      co_await send_fatal("28000", "no PostgreSQL user name specified in startup packet");
      co_return LoginOutcome::closed;
    }
    if (database_.empty()) database_ = user_;
    if ((message.protocol_version & 0xffff) != 0 || !unrecognized.empty()) {
      // Like Postgres: name the newest minor version we speak and the options we ignore.
      protocol::append_negotiate_protocol_version(out, 0, unrecognized);
      if (!co_await write_client(out)) co_return LoginOutcome::closed;
    }
    if (context_->clients.load() > config_->max_client_connections) {
      co_await send_fatal("53300", "pgsluice: too many client connections (max_client_connections " +
                                       std::to_string(config_->max_client_connections) + ")");
      co_return LoginOutcome::closed;
    }
    co_return LoginOutcome::proceed;
  }
}

net::awaitable<bool> ClientSession::authenticate(const std::string& user) {
  // Built only when needed: most logins succeed.
  const auto failed = [&user] { return "password authentication failed for user \"" + user + "\""; };
  auto it = snapshot_->users.find(user);
  const UserSecret* secret = it == snapshot_->users.end() ? nullptr : &it->second;
  Buffer out;

  if (secret != nullptr && secret->method == config::AuthMethod::trust) co_return true;

  auto read_password_message = [&]() -> net::awaitable<protocol::Result<protocol::MessageView>> {
    // Before login a message cannot exceed what authentication needs: Postgres caps SASL and
    // password messages at 65 535 bytes (PG_MAX_AUTH_TOKEN_LENGTH), and so does pgsluice, so that
    // a client that has not logged in cannot make it hold max_message_size.
    auto message = co_await net::read_message(stream_, buffer_, std::min<std::size_t>(max_message_size_, kMaxAuthMessageSize));
    if (message && message->type != 'p') {
      co_return protocol::protocol_violation("expected password response, got message type '" +
                                             std::string(1, message->type) + "'");
    }
    co_return message;
  };

  if (secret != nullptr && secret->method == config::AuthMethod::md5) {
    std::uint8_t salt[4];
    protocol::scram::random_fill(salt, sizeof salt);
    protocol::md5::Salt md5_salt{};
    for (int i = 0; i < 4; ++i) md5_salt[i] = salt[i];
    protocol::append_authentication_md5(out, salt);
    if (!co_await write_client(out)) co_return false;
    auto message = co_await read_password_message();
    if (!message) {
      if (message.error().sqlstate != "08006") co_await send_fatal(message.error().sqlstate, message.error().message);
      co_return false;
    }
    const bool matches =
        protocol::md5::response_matches(*secret->md5_hash, md5_salt, protocol::password_message_text(message->payload));
    buffer_.consume(message->frame.size());
    if (!matches) {
      spdlog::warn("session {}: authentication failed for user {}", peer_, user);
      co_await send_fatal("28P01", failed());
      co_return false;
    }
    co_return true;
  }

  // SCRAM-SHA-256, also for unknown users (with a mock verifier) so they fail at the same step.
  protocol::scram::Verifier verifier = secret != nullptr && secret->verifier
                                           ? *secret->verifier
                                           : protocol::scram::mock_verifier(user, context_->mock_secret);
  protocol::scram::ServerExchange exchange(verifier);
  protocol::append_authentication_sasl(out, {protocol::scram::kMechanism});
  if (!co_await write_client(out)) co_return false;

  auto initial = co_await read_password_message();
  if (!initial) {
    if (initial.error().sqlstate != "08006") co_await send_fatal(initial.error().sqlstate, initial.error().message);
    co_return false;
  }
  auto sasl = protocol::parse_sasl_initial_response(initial->payload);
  if (!sasl) {
    co_await send_fatal(sasl.error().sqlstate, sasl.error().message);
    co_return false;
  }
  if (sasl->mechanism != protocol::scram::kMechanism) {
    co_await send_fatal("28000", "client selected an invalid SASL authentication mechanism");
    co_return false;
  }
  auto server_first = exchange.handle_client_first(sasl->data);
  buffer_.consume(initial->frame.size());
  if (!server_first) {
    co_await send_fatal(server_first.error().sqlstate, server_first.error().message);
    co_return false;
  }
  out.clear();
  protocol::append_authentication_sasl_continue(out, *server_first);
  if (!co_await write_client(out)) co_return false;

  auto final_message = co_await read_password_message();
  if (!final_message) {
    if (final_message.error().sqlstate != "08006") {
      co_await send_fatal(final_message.error().sqlstate, final_message.error().message);
    }
    co_return false;
  }
  auto server_final = exchange.handle_client_final(protocol::as_string_view(final_message->payload));
  buffer_.consume(final_message->frame.size());
  if (!server_final || secret == nullptr) {
    if (!server_final && server_final.error().sqlstate == "08P01") {
      co_await send_fatal("08P01", server_final.error().message);
    } else {
      spdlog::warn("session {}: authentication failed for user {}", peer_, user);
      co_await send_fatal("28P01", failed());
    }
    co_return false;
  }
  protocol::append_authentication_sasl_final(login_reply_, *server_final);  // sent with what follows
  co_return true;
}

net::awaitable<bool> ClientSession::finish_login() {
  service_ = snapshot_->find_service(user_, database_);
  if (service_) rewrite_statements_ = service_->config.mode != config::PoolMode::session;
  if (!service_) {
    co_await send_fatal("3D000", "database \"" + database_ + "\" does not exist (pgsluice: no service matches user \"" +
                                     user_ + "\" and database \"" + database_ + "\")");
    co_return false;
  }
  // The ParameterStatus set the client must see. Session mode leases its server connection now. The
  // pooled modes learn the server's values from the service's first connection and then log clients
  // in without a lease, so that a burst of new clients does not queue for server connections.
  std::string sqlstate;
  std::string error;
  auto reported = service_->reported_parameters();
  struct FetchTurn {  // held by the login that fetches them; let go however the login ends
    std::shared_ptr<Service> service;
    ~FetchTurn() {
      if (service) service->end_parameter_fetch();
    }
  } turn;
  if (service_->config.mode != config::PoolMode::session && !reported) {
    // A burst of clients at a cold start: without this, every one of them would open a server
    // connection at once (a connect storm that can outlast connect_timeout). They wait for the
    // first, up to acquire_timeout, then lease their own.
    asio::steady_timer tick(stream_.get_executor());
    const auto give_up = std::chrono::steady_clock::now() + service_->config.acquire_timeout;
    while (!(reported = service_->reported_parameters())) {
      if (service_->begin_parameter_fetch()) {
        turn.service = service_;
        break;
      }
      if (std::chrono::steady_clock::now() >= give_up) break;
      tick.expires_after(std::chrono::milliseconds(2));
      co_await tick.async_wait(net::use_nothrow);
    }
  }
  // What the client is shown: the server's values (session mode, or the service's first login),
  // or the service's known ones with the client's own startup values in their place.
  server::ParameterMap from_server;
  const server::ParameterMap* shown = reported.get();
  bool client_values = false;
  if (service_->config.mode == config::PoolMode::session || !reported) {
    if (!co_await attach_server(sqlstate, error)) {
      co_await send_fatal(sqlstate, error);
      co_return false;
    }
    from_server = server_->parameters();
    shown = &from_server;
    service_->remember_reported_parameters(server_->initial_parameters());
  } else {
    // What the server would report once this client's startup parameters are applied, as the
    // server spells them: learned from the first client that asks for a value (a lease that applies
    // it), so that DateStyle=German is reported "German, DMY" as Postgres does.
    bool unknown = false;
    for (const auto& [name, value] : *reported) {
      auto it = parameters_.find(name);
      if (it == parameters_.end() || it->second == value) continue;
      if (auto spelled = service_->reported_spelling(name, it->second)) {
        it->second = *spelled;
      } else {
        unknown = true;
      }
    }
    if (unknown) {
      const auto asked = parameters_;
      if (!co_await attach_server(sqlstate, error)) {
        co_await send_fatal(sqlstate, error);
        co_return false;
      }
      for (const auto& [name, value] : asked) {
        if (auto it = parameters_.find(name); it != parameters_.end() && reported->contains(name)) {
          service_->remember_spelling(name, value, it->second);
        }
      }
    }
    client_values = true;
  }
  cancel_key_ = context_->cancels.add(shared_from_this());
  if (rewrite_statements_) startup_parameters_ = parameters_;  // RESET ALL returns to them (tracker())

  Buffer out = take_login_reply();
  out.reserve(1024);  // the whole reply, about 500 bytes, in one allocation
  protocol::append_authentication_ok(out);
  for (const auto& [name, value] : *shown) {
    auto own = client_values ? parameters_.find(name) : parameters_.end();
    protocol::append_parameter_status(out, name, own != parameters_.end() ? own->second : value);
  }
  protocol::append_backend_key_data(out, cancel_key_->process_id, cancel_key_->secret_key);
  protocol::append_ready_for_query(out, 'I');
  if (server_ && service_->config.mode != config::PoolMode::session) release_server(true);
  co_return co_await write_client(out);
}

}  // namespace pgsluice::session
