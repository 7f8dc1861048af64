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

// -- The login's steps without I/O (shared by the handlers and the coroutine) --------------------

void ClientSession::arm_login_timer() {
  logging_in_ = true;
  timer_.expires_after(config_->client_login_timeout);
  timer_.async_wait([weak = weak_from_this()](const net::error_code& ec) {
    auto self = weak.lock();
    if (ec || !self || !self->logging_in_) return;
    self->login_timed_out_ = true;
    self->stream_.cancel();
  });
}

// What a login step sends is built here: send_client copies what the socket does not take at once,
// so one buffer per worker thread serves every login (no allocation for a challenge or the reply).
Buffer& ClientSession::login_scratch() {
  thread_local Buffer scratch;
  scratch.clear();
  return scratch;
}

bool ClientSession::queue_client(const Buffer& bytes) {
  // One run per worker thread, reused (no allocation per write): send_client writes the bytes or
  // copies what the socket did not take before it returns.
  thread_local Outgoing out;
  out.clear();
  out.append(bytes);
  const bool sent = send_client(out);
  out.clear();
  return sent;
}

void ClientSession::queue_fatal(std::string_view sqlstate, std::string_view message) {
  Buffer out = take_login_reply();
  protocol::append_error_response(out, protocol::Severity::fatal, sqlstate, message);
  queue_client(out);
}

ClientSession::StartupStep ClientSession::take_startup_packet(std::size_t size) {
  auto packet = protocol::parse_startup_packet(buffer_.readable().first(size));
  buffer_.consume(size);
  if (!packet) {
    queue_fatal(packet.error().sqlstate, packet.error().message);
    return StartupStep::closed;
  }
  const auto tls_mode = snapshot_->client_tls_mode;
  const bool tls_on = snapshot_->client_tls && tls_mode != net::ClientTlsMode::disable;
  if (std::holds_alternative<protocol::SslRequest>(*packet) ||
      std::holds_alternative<protocol::GssEncRequest>(*packet)) {
    if (stream_.tls()) {
      queue_fatal("08P01", "pgsluice: encryption requested on a connection that is already encrypted");
      return StartupStep::closed;
    }
    if (!buffer_.empty()) {
      // Bytes sent before the answer would be taken as coming through the encrypted channel.
      queue_fatal("08P01", "pgsluice: received unencrypted data after the encryption request");
      return StartupStep::closed;
    }
    if (tls_on && std::holds_alternative<protocol::SslRequest>(*packet)) return StartupStep::ssl_request;
    // No GSS encryption, and TLS only when configured: 'N' and the client goes on in plain text
    // (docs §55.2.10), or gives up.
    static const Buffer kNo{'N'};
    return queue_client(kNo) ? StartupStep::next_packet : StartupStep::closed;
  }
  if (auto* cancel = std::get_if<protocol::CancelRequest>(&*packet)) {
    if (auto session = context_->cancels.find({cancel->process_id, cancel->secret_key})) {
      session->forward_cancel();
    }
    return StartupStep::cancel_request;
  }
  auto& message = std::get<protocol::StartupMessage>(*packet);
  if (tls_mode == net::ClientTlsMode::require && !stream_.tls()) {
    std::string user;
    for (const auto& [name, value] : message.parameters) {
      if (name == "user") user = value;
    }
    spdlog::info("session {}: refused a plain-text login of user {} (tls.mode require)", peer_, user);
    queue_fatal("28000", "pgsluice: TLS is required (tls.mode require); connect with sslmode=require");
    return StartupStep::closed;
  }
  std::vector<std::string> unrecognized;
  for (const auto& [name, value] : message.parameters) {
    if (name == "user") {
      user_ = value;
    } else if (name == "database") {
      database_ = value;
    } else if (name == "replication") {
      if (value != "false" && value != "0" && value != "off" && value != "no") {
        queue_fatal("0A000", "pgsluice: replication connections are not supported");
        return StartupStep::closed;
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
    queue_fatal("28000", "no PostgreSQL user name specified in startup packet");
    return StartupStep::closed;
  }
  if (database_.empty()) database_ = user_;
  if ((message.protocol_version & 0xffff) != 0 || !unrecognized.empty()) {
    // Like Postgres: name the newest minor version we speak and the options we ignore.
    Buffer out;
    protocol::append_negotiate_protocol_version(out, 0, unrecognized);
    if (!queue_client(out)) return StartupStep::closed;
  }
  if (context_->clients.load() > config_->max_client_connections) {
    queue_fatal("53300", "pgsluice: too many client connections (max_client_connections " +
                             std::to_string(config_->max_client_connections) + ")");
    return StartupStep::closed;
  }
  return StartupStep::proceed;
}

ClientSession::AuthStep ClientSession::begin_authentication() {
  auto it = snapshot_->users.find(user_);
  secret_ = it == snapshot_->users.end() ? nullptr : &it->second;
  if (secret_ != nullptr && secret_->method == config::AuthMethod::trust) return AuthStep::done;
  Buffer& out = login_scratch();
  if (secret_ != nullptr && secret_->method == config::AuthMethod::md5) {
    std::uint8_t salt[4];
    protocol::scram::random_fill(salt, sizeof salt);
    std::copy(std::begin(salt), std::end(salt), md5_salt_.begin());
    protocol::append_authentication_md5(out, salt);
    login_step_ = LoginStep::md5;
    return queue_client(out) ? AuthStep::read_message : AuthStep::closed;
  }
  // SCRAM-SHA-256, also for unknown users (with a mock verifier) so they fail at the same step; over
  // TLS SCRAM-SHA-256-PLUS first, as Postgres lists them.
  scram_.emplace(secret_ != nullptr && secret_->verifier ? *secret_->verifier
                                                         : protocol::scram::mock_verifier(user_, context_->mock_secret));
  if (stream_.tls()) scram_->offer_channel_binding(stream_.tls_server_end_point());
  if (scram_->offers_channel_binding()) {
    protocol::append_authentication_sasl(out, {protocol::scram::kMechanismPlus, protocol::scram::kMechanism});
  } else {
    protocol::append_authentication_sasl(out, {protocol::scram::kMechanism});
  }
  login_step_ = LoginStep::scram_first;
  return queue_client(out) ? AuthStep::read_message : AuthStep::closed;
}

ClientSession::AuthStep ClientSession::take_password_message(const protocol::MessageView& message) {
  // Built only when needed: most logins succeed.
  const auto failed = [this] { return "password authentication failed for user \"" + user_ + "\""; };
  if (message.type != 'p') {
    queue_fatal("08P01", "expected password response, got message type '" + std::string(1, message.type) + "'");
    return AuthStep::closed;
  }
  const auto size = message.frame.size();
  switch (login_step_) {
    case LoginStep::md5: {
      const bool matches = protocol::md5::response_matches(*secret_->md5_hash, md5_salt_,
                                                           protocol::password_message_text(message.payload));
      buffer_.consume(size);
      if (!matches) {
        spdlog::warn("session {}: authentication failed for user {}", peer_, user_);
        queue_fatal("28P01", failed());
        return AuthStep::closed;
      }
      return AuthStep::done;
    }
    case LoginStep::scram_first: {
      auto sasl = protocol::parse_sasl_initial_response(message.payload);
      if (!sasl) {
        queue_fatal(sasl.error().sqlstate, sasl.error().message);
        return AuthStep::closed;
      }
      const bool plus =
          sasl->mechanism == protocol::scram::kMechanismPlus && scram_->offers_channel_binding();
      if (sasl->mechanism != protocol::scram::kMechanism && !plus) {
        queue_fatal("28000", "client selected an invalid SASL authentication mechanism");
        return AuthStep::closed;
      }
      scram_->select(plus);
      auto server_first = scram_->handle_client_first(sasl->data);
      buffer_.consume(size);
      if (!server_first) {
        queue_fatal(server_first.error().sqlstate, server_first.error().message);
        return AuthStep::closed;
      }
      Buffer& out = login_scratch();
      protocol::append_authentication_sasl_continue(out, *server_first);
      login_step_ = LoginStep::scram_final;
      return queue_client(out) ? AuthStep::read_message : AuthStep::closed;
    }
    case LoginStep::scram_final: {
      auto server_final = scram_->handle_client_final(protocol::as_string_view(message.payload));
      buffer_.consume(size);
      scram_.reset();
      if (!server_final || secret_ == nullptr) {
        if (!server_final && server_final.error().sqlstate == "08P01") {
          queue_fatal("08P01", server_final.error().message);
        } else {
          spdlog::warn("session {}: authentication failed for user {}", peer_, user_);
          queue_fatal("28P01", failed());
        }
        return AuthStep::closed;
      }
      protocol::append_authentication_sasl_final(login_reply_, *server_final);  // sent with what follows
      return AuthStep::done;
    }
    case LoginStep::startup:
      break;
  }
  queue_fatal("08P01", "pgsluice: unexpected password message");
  return AuthStep::closed;
}

// -- The login as handlers (a client of a TLS listener goes the coroutine's way) -------------------

struct ClientSession::LoginRead {
  std::shared_ptr<ClientSession> self;
  void operator()(const net::error_code& ec, std::size_t count) {
    auto* session = self.get();
    session->on_login_read(std::move(self), ec, count);
  }
};

void ClientSession::start(net::tcp::socket socket, const net::tcp::endpoint& peer,
                          std::shared_ptr<SessionContext> context) {
  auto self = std::allocate_shared<ClientSession>(Recycled<ClientSession>{}, std::move(socket), peer, std::move(context));
  auto* session = self.get();
  if (session->snapshot_->client_tls && session->snapshot_->client_tls_mode != net::ClientTlsMode::disable) {
    asio::co_spawn(session->stream_.get_executor(), session->login_coroutine(std::move(self)), asio::detached);
    return;
  }
  session->arm_login_timer();
  session->take_login_bytes(std::move(self));
}

net::awaitable<void> ClientSession::login_coroutine(std::shared_ptr<ClientSession> self) {
  bool authenticated = false;
  try {
    authenticated = co_await run();
  } catch (const std::exception& e) {
    spdlog::error("session {}: unexpected error: {}", peer_, e.what());
  }
  if (authenticated) {
    co_await login_rest(std::move(self));  // logged in, the session goes on in handlers that hold it
  } else {
    co_await finish();
  }
}

// Takes what buffer_ holds for the step the login is at, as far as it goes, then reads on. Returning
// without a read lets go of the session: the FATAL queued, if any, is written first (the write's
// handler holds it).
void ClientSession::take_login_bytes(std::shared_ptr<ClientSession> self) {
  for (;;) {
    AuthStep step = AuthStep::closed;
    if (login_step_ == LoginStep::startup) {
      auto frame = protocol::next_startup_frame(buffer_.readable());
      if (frame.status == protocol::FrameStatus::malformed) return queue_fatal(frame.error.sqlstate, frame.error.message);
      if (frame.status != protocol::FrameStatus::complete) {
        return net::async_read_into(stream_, buffer_, 1024, LoginRead{std::move(self)});
      }
      const auto taken = take_startup_packet(frame.size);
      if (taken == StartupStep::next_packet) continue;
      if (taken != StartupStep::proceed) return;  // closed, a cancel request (ssl_request: not with TLS off)
      step = begin_authentication();
    } else {
      // Before login a message cannot exceed what authentication needs: Postgres caps SASL and
      // password messages at 65 535 bytes (PG_MAX_AUTH_TOKEN_LENGTH), and so does pgsluice, so that
      // a client that has not logged in cannot make it hold max_message_size.
      auto frame =
          protocol::next_frame(buffer_.readable(), std::min<std::size_t>(max_message_size_, kMaxAuthMessageSize));
      if (frame.status == protocol::FrameStatus::malformed) {
        const auto error = frame.error();
        return queue_fatal(error.sqlstate, error.message);
      }
      if (frame.status != protocol::FrameStatus::complete) {
        return net::async_read_into(stream_, buffer_, net::read_size_for(frame.needed, buffer_.size()),
                                    LoginRead{std::move(self)});
      }
      step = take_password_message(frame.message);
    }
    if (step == AuthStep::done) return login_authenticated(std::move(self));
    if (step == AuthStep::closed) return;
  }
}

void ClientSession::on_login_read(std::shared_ptr<ClientSession> self, net::error_code ec, std::size_t count) {
  if (!net::finish_read(buffer_, ec, count)) return take_login_bytes(std::move(self));
  if (login_timed_out_) {
    spdlog::info("session {}: client_login_timeout expired before login finished", peer_);
    queue_fatal("08P01", "pgsluice: client_login_timeout expired before startup and authentication finished");
  }
  // Else the client left (or its connection broke) during the login: nothing to tell it.
}

void ClientSession::login_authenticated(std::shared_ptr<ClientSession> self) {
  logging_in_ = false;
  timer_.cancel();
  if (!login_timed_out_ && !context_->draining && database_ != kAdminDatabase && finish_login_now()) {
    return enter_relay(std::move(self));
  }
  asio::co_spawn(stream_.get_executor(), login_rest(std::move(self)), asio::detached);
}

// -- The login as a coroutine (TLS, and what comes after authentication when it must wait) ---------

net::awaitable<bool> ClientSession::run() {
  arm_login_timer();
  auto outcome = co_await startup();
  if (outcome == LoginOutcome::proceed && !login_timed_out_ && !co_await authenticate()) {
    outcome = LoginOutcome::closed;
  }
  logging_in_ = false;
  timer_.cancel();
  co_return outcome == LoginOutcome::proceed || login_timed_out_;
}

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
    switch (take_startup_packet(*size)) {
      case StartupStep::proceed:
        co_return LoginOutcome::proceed;
      case StartupStep::next_packet:
        if (!co_await client_drained()) co_return LoginOutcome::closed;
        continue;
      case StartupStep::cancel_request:
        co_return LoginOutcome::cancel_request;
      case StartupStep::closed:
        co_await client_drained();
        co_return LoginOutcome::closed;
      case StartupStep::ssl_request:
        break;
    }
    static const std::uint8_t kYes[] = {'S'};
    if (auto ec = co_await net::write_all(stream_, kYes)) co_return LoginOutcome::closed;
    std::string error;
    if (!co_await stream_.accept_tls(*tls, /*require_alpn=*/false, error)) {
      spdlog::info("session {}: TLS handshake failed: {}", peer_, error);
      co_return LoginOutcome::closed;
    }
    spdlog::debug("session {}: TLS: {}", peer_, stream_.tls_description());
  }
}

net::awaitable<bool> ClientSession::authenticate() {
  auto step = begin_authentication();
  while (step == AuthStep::read_message) {
    // As take_login_bytes: a message before login is at most what authentication needs.
    auto message = co_await net::read_message(stream_, buffer_, std::min<std::size_t>(max_message_size_, kMaxAuthMessageSize));
    if (!message) {
      if (message.error().sqlstate != "08006") co_await send_fatal(message.error().sqlstate, message.error().message);
      co_return false;
    }
    step = take_password_message(*message);
  }
  if (step == AuthStep::closed) {
    co_await client_drained();
    co_return false;
  }
  co_return true;
}

void ClientSession::enter_relay(std::shared_ptr<ClientSession> self) {
  service_->counters->client_joined();
  counted_in_service_ = true;
  spdlog::info("session {}: login user {} database {} service {} ({} mode)", peer_, user_, database_,
               service_->config.name, config::to_string(service_->config.mode));
  // The client side runs as a chain of handlers from here (see the top of client_session.cpp),
  // starting with what the client sent after its login, until end_client(). No coroutine waits
  // meanwhile: an idle client is its socket's pending wait and this object (DESIGN §8).
  on_client_data(std::move(self));
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
  if (!queue_login_reply(*shown, client_values)) co_return false;
  if (server_ && service_->config.mode != config::PoolMode::session) release_server(true);
  co_return co_await client_drained();
}

bool ClientSession::finish_login_now() {
  auto service = snapshot_->find_service(user_, database_);
  if (!service || service->config.mode == config::PoolMode::session) return false;
  const auto [reported, status_messages] = service->reported_parameters_and_messages();
  if (!reported) return false;
  // Every value of the client's that the server reports must be known as the server spells it.
  bool own_values = false;
  for (const auto& [name, value] : *reported) {
    auto it = parameters_.find(name);
    if (it == parameters_.end() || it->second == value) continue;
    if (!service->reported_spelling(name, it->second)) return false;
    own_values = true;
  }
  if (own_values) {
    for (const auto& [name, value] : *reported) {
      auto it = parameters_.find(name);
      if (it == parameters_.end() || it->second == value) continue;
      if (auto spelled = service->reported_spelling(name, it->second)) it->second = *spelled;
    }
  }
  service_ = std::move(service);
  rewrite_statements_ = true;
  return queue_login_reply(*reported, /*client_values=*/true, own_values ? nullptr : status_messages.get());
}

bool ClientSession::queue_login_reply(const server::ParameterMap& shown, bool client_values,
                                      const Buffer* status_messages) {
  cancel_key_ = context_->cancels.add(shared_from_this());
  if (rewrite_statements_) startup_parameters_ = parameters_;  // RESET ALL returns to them (tracker())
  Buffer& out = login_scratch();  // after SCRAM's SASLFinal, if any
  out.insert(out.end(), login_reply_.begin(), login_reply_.end());
  Buffer().swap(login_reply_);
  protocol::append_authentication_ok(out);
  if (status_messages != nullptr) {
    out.insert(out.end(), status_messages->begin(), status_messages->end());
  } else {
    for (const auto& [name, value] : shown) {
      auto own = client_values ? parameters_.find(name) : parameters_.end();
      protocol::append_parameter_status(out, name, own != parameters_.end() ? own->second : value);
    }
  }
  protocol::append_backend_key_data(out, cancel_key_->process_id, cancel_key_->secret_key);
  protocol::append_ready_for_query(out, 'I');
  return queue_client(out);
}

// One coroutine, not a bool-returning one awaited here: that form (a member coroutine with these
// steps, awaited from a coroutine spawned from a handler) was miscompiled by g++ 12 (the callee read
// `this` 8 bytes off the slot its ramp had stored it in), and both login paths end here anyway.
net::awaitable<void> ClientSession::login_rest(std::shared_ptr<ClientSession> self) {
  try {
    if (login_timed_out_) {
      spdlog::info("session {}: client_login_timeout expired before login finished", peer_);
      co_await send_fatal("08P01", "pgsluice: client_login_timeout expired before startup and authentication finished");
    } else if (context_->draining) {
      co_await send_fatal("57P01", "pgsluice: shutting down; connect again to another instance");
    } else if (database_ == kAdminDatabase) {
      co_await serve_admin();
    } else if (co_await finish_login()) {
      enter_relay(std::move(self));
      co_return;
    } else {
      co_await finish_server();
    }
  } catch (const std::exception& e) {
    spdlog::error("session {}: unexpected error: {}", peer_, e.what());
  }
  co_await finish();  // the server reader lets go of the session
}

}  // namespace pgsluice::session
