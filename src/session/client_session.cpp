// The relay half of a client session (see client_session.hpp for the two-coroutine design).
#include "pgsluice/session/client_session.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/recycling_allocator.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstring>

#include "pgsluice/net/socket_reserve.hpp"
#include "pgsluice/protocol/backend_messages.hpp"
#include "pgsluice/session/listener_hub.hpp"
#include "pgsluice/sql/statement_shape.hpp"

namespace pgsluice::session {

namespace asio = net::asio;
using namespace asio::experimental::awaitable_operators;
using protocol::Buffer;

namespace {

// Whether trace logging is on. spdlog::should_log looks the default logger up in spdlog's registry
// on every call, and the relay asks for every message; the logger is set up before any session
// starts and stays (a reload changes its level, which this reads).
bool tracing() {
  static spdlog::logger* const logger = spdlog::default_logger_raw();
  return logger->should_log(spdlog::level::trace);
}

// "address:port" for logs and SHOW CLIENTS. An IPv4 address is written here: Asio's to_string goes
// through inet_ntop, which formats with sprintf, a measurable part of a login's CPU in a storm.
std::string peer_text(const net::tcp::endpoint& peer) {
  const auto address = peer.address();
  if (address.is_v4()) {
    const auto b = address.to_v4().to_bytes();
    return fmt::format("{}.{}.{}.{}:{}", b[0], b[1], b[2], b[3], peer.port());
  }
  return address.to_string() + ":" + std::to_string(peer.port());
}

}  // namespace

ClientSession::ClientSession(net::tcp::socket socket, const net::tcp::endpoint& peer,
                             std::shared_ptr<SessionContext> context)
    : stream_(std::move(socket)),
      worker_(pool::context_key(stream_.get_executor())),
      context_(std::move(context)),
      snapshot_(context_->current()),
      config_(snapshot_->config),
      max_message_size_(config_->max_message_size),
      timer_(stream_.get_executor()) {
  peer_ = peer_text(peer);
  ++context_->clients;
  ++net::t_open_client_sockets;
}

ClientSession::~ClientSession() {
  end_streak();
  if (cancel_key_) context_->cancels.remove(*cancel_key_);
  if (listen_id_ != 0 && service_ && service_->listeners) service_->listeners->forget(listen_id_);
  if (counted_in_service_) service_->counters->client_left();
  --context_->clients;
  --net::t_open_client_sockets;
}

net::awaitable<void> ClientSession::serve_admin() {
  const auto& admins = config_->admin_users;
  auto user = snapshot_->users.find(user_);
  if (!context_->admin || std::find(admins.begin(), admins.end(), user_) == admins.end()) {
    spdlog::warn("session {}: user {} refused by the admin console (not in admin.users)", peer_, user_);
    co_await send_fatal("28000", "pgsluice: user \"" + user_ + "\" may not use the admin console (admin.users)");
    co_return;
  }
  if (user == snapshot_->users.end() || user->second.method != config::AuthMethod::scram_sha_256) {
    co_await send_fatal("28000", "pgsluice: the admin console needs scram-sha-256 authentication; user \"" + user_ +
                                     "\" has another method");
    co_return;
  }
  spdlog::info("session {}: admin console login by {}", peer_, user_);
  cancel_key_ = context_->cancels.add(shared_from_this());  // SIGTERM reaches it like any client
  Buffer out = take_login_reply();
  protocol::append_authentication_ok(out);
  const std::pair<const char*, std::string> status[] = {
      {"server_version", "15.0 (pgsluice " PGSLUICE_VERSION " admin console)"},
      {"server_encoding", "UTF8"},
      {"client_encoding", "UTF8"},
      {"DateStyle", "ISO, MDY"},
      {"integer_datetimes", "on"},
      {"standard_conforming_strings", "on"},
      {"application_name", parameters_.contains("application_name") ? parameters_.at("application_name") : ""},
  };
  for (const auto& [name, value] : status) protocol::append_parameter_status(out, name, value);
  protocol::append_backend_key_data(out, cancel_key_->process_id, cancel_key_->secret_key);
  protocol::append_ready_for_query(out, 'I');
  if (!co_await write_client(out)) co_return;
  bool skipping = false;  // after an extended-protocol message: until its Sync
  while (!closing_) {
    auto message = co_await net::read_message(stream_, buffer_, max_message_size_);
    if (!message) break;
    const char type = message->type;
    Buffer reply;
    if (type == 'X') break;
    if (type == 'Q') {
      auto text = std::string(protocol::as_string_view(message->payload));
      if (!text.empty() && text.back() == '\0') text.pop_back();
      buffer_.consume(message->frame.size());
      spdlog::info("session {}: admin {}: {}", peer_, user_, text.substr(0, 200));
      admin_busy_ = true;  // a SHUTDOWN's SIGTERM waits for its own reply (begin_shutdown)
      reply = co_await context_->admin->execute(std::move(text));
      admin_busy_ = false;
      protocol::append_ready_for_query(reply, 'I');
    } else {
      buffer_.consume(message->frame.size());
      if (type == 'S') {
        skipping = false;
        protocol::append_ready_for_query(reply, 'I');
      } else if (!skipping && type != 'H') {
        skipping = true;
        protocol::append_error_response(reply, protocol::Severity::error, "0A000",
                                        "pgsluice admin: the admin console takes simple queries only (as psql sends)");
      }
    }
    if (!reply.empty() && !co_await write_client(reply)) break;
    if (draining_ && !closing_) co_return co_await close_with("57P01", "pgsluice: shutting down; connect again");
  }
}

bool ClientSession::send_client(Outgoing& out, bool borrowed) {
  if (client_write_failed_) return false;
  if (out.empty()) return true;
  const auto& pieces = out.pieces();
  std::size_t written = 0;
  if (!client_flushing_) {
    net::error_code ec;
    if (net::try_write_all(stream_, pieces, written, ec)) {
      client_write_failed_ = static_cast<bool>(ec);
      return !ec;
    }
  }
  // The socket did not take it all, or is busy: the rest goes after what is queued already.
  for (auto piece : pieces) {
    const auto skip = std::min(written, piece.size());
    written -= skip;
    if (skip == piece.size()) continue;
    if (borrowed && !client_flushing_) {
      client_borrowed_.emplace_back(piece.data() + skip, piece.size() - skip);
    } else {
      client_backlog_.insert(client_backlog_.end(), piece.begin() + static_cast<std::ptrdiff_t>(skip), piece.end());
    }
  }
  if (!client_flushing_) {
    client_flushing_ = true;
    flush_client(shared_from_this());
  }
  return true;
}

void ClientSession::flush_client(std::shared_ptr<ClientSession> self) {
  auto done = [self = std::move(self)](net::error_code ec, std::size_t) mutable {
    auto* session = self.get();
    session->on_client_flushed(std::move(self), ec);
  };
  if (!client_borrowed_.empty()) {
    stream_.async_write_all(client_borrowed_, std::move(done));
    return;
  }
  client_in_flight_.swap(client_backlog_);  // what producers queue meanwhile waits for the next round
  client_in_flight_buffer_ = asio::buffer(client_in_flight_);
  stream_.async_write_all(client_in_flight_buffer_, std::move(done));
}

void ClientSession::on_client_flushed(std::shared_ptr<ClientSession> self, net::error_code ec) {
  if (!client_borrowed_.empty()) {
    client_borrowed_.clear();
  } else {
    client_in_flight_.clear();
  }
  if (ec) client_write_failed_ = true;
  if (!client_write_failed_ && !client_backlog_.empty()) return flush_client(std::move(self));
  // Drained (or the client is gone): an idle client keeps no write memory.
  Buffer().swap(client_backlog_);
  Buffer().swap(client_in_flight_);
  std::vector<asio::const_buffer>().swap(client_borrowed_);
  client_flushing_ = false;
  client_drained_.notify();  // posted: the waiters run after this handler
  if (std::exchange(server_waits_for_client_, false)) {
    if (client_write_failed_) {
      server_->buffer().consume(server_run_offset_);
      closing_ = true;  // the client is gone; the client side will notice too
      return end_server_reader();
    }
    after_server_write(std::move(self), server_run_offset_, server_run_ready_seen_);
  }
}

net::awaitable<bool> ClientSession::client_drained() {
  while (client_flushing_) co_await client_drained_.wait();
  co_return !client_write_failed_;
}

net::awaitable<bool> ClientSession::write_client(const Buffer& bytes) {
  if (!queue_client(bytes)) co_return false;
  co_return co_await client_drained();
}

net::awaitable<bool> ClientSession::send_due_replies() {
  Outgoing out;
  tracker().take_due_replies(out);
  if (!out.empty() && !send_client(out)) co_return false;
  co_return co_await client_drained();
}

net::awaitable<void> ClientSession::send_fatal(std::string_view sqlstate, std::string_view message) {
  Buffer out = take_login_reply();
  protocol::append_error_response(out, protocol::Severity::fatal, sqlstate, message);
  co_await write_client(out);
}

void ClientSession::log_close() const {
  if (service_) {
    spdlog::info("session {}: closed (user {}, service {}, after {} s)", peer_, user_, service_->config.name,
                 std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - connected_at_)
                     .count());
  }
}

net::awaitable<void> ClientSession::end_session(std::shared_ptr<ClientSession> self) {
  closing_ = true;
  log_close();
  disarm_timer();
  co_await finish_server();
  co_await finish();  // the server reader lets go of the session
  (void)self;
}

StatementTracker& ClientSession::tracker() {
  if (!tracker_) {
    tracker_ = make_recycled<StatementTracker>();
    // Pooled modes keep the session state Postgres would keep per connection per client instead.
    tracker_->follow_session_state(&context_->analyzer, &startup_parameters_, &parameters_);
    tracker_->set_statement_limits(static_cast<std::size_t>(config_->max_prepared_statements_per_client),
                                   config_->max_prepared_statement_bytes_per_client);
  }
  return *tracker_;
}

bool ClientSession::between_transactions() const {
  return transaction_status_ == 'I' && expected_ready_ == 0 && !in_extended_batch_ && (!tracker_ || tracker_->idle());
}

void ClientSession::arm_timer(TimerPurpose purpose, std::chrono::milliseconds after) {
  ++timer_generation_;
  timer_purpose_ = purpose;
  timer_.expires_after(after);  // cancels the previous watch, which sees a stale generation and ends
  asio::co_spawn(stream_.get_executor(), watch_timer(timer_generation_), asio::detached);
}

void ClientSession::disarm_timer() {
  if (timer_purpose_ == TimerPurpose::none) return;
  ++timer_generation_;
  timer_purpose_ = TimerPurpose::none;
  timer_.cancel();
}

net::awaitable<void> ClientSession::watch_timer(std::uint64_t generation) {
  auto self = shared_from_this();
  auto [ec] = co_await timer_.async_wait(net::use_nothrow);
  if (ec || generation != timer_generation_ || closing_) co_return;
  const auto purpose = timer_purpose_;
  timer_purpose_ = TimerPurpose::none;
  if (purpose == TimerPurpose::query && server_ && expected_ready_ > 0) {
    // Cancel on the server like a client's own cancel would; the 57014 that comes back is rewritten
    // to say which limit fired (server_reader).
    spdlog::info("session {}: query_timeout {}ms of service {} expired; cancelling the statement", peer_,
                 service_->config.query_timeout.count(), service_->config.name);
    timeout_cancel_pending_ = true;
    forward_cancel();
    // A hung server answers neither the statement nor the cancel: give it connect_timeout (what the
    // cancel connection may take), then give up on the server connection.
    arm_timer(TimerPurpose::cancel_answer, server_->target().connect_timeout);
  } else if (purpose == TimerPurpose::cancel_answer && server_ && expected_ready_ > 0 && timeout_cancel_pending_) {
    spdlog::warn("session {}: the server did not answer the query_timeout cancel within {}ms; closing the client",
                 peer_, server_->target().connect_timeout.count());
    co_await close_with("57014", "pgsluice: query_timeout (" + std::to_string(service_->config.query_timeout.count()) +
                                     "ms) of service \"" + service_->config.name +
                                     "\" expired and the database did not answer the cancel; the connection was closed");
  } else if (purpose == TimerPurpose::idle_in_transaction && server_ && transaction_status_ != 'I' &&
             expected_ready_ == 0) {
    spdlog::info("session {}: idle_in_transaction_timeout {}ms of service {} expired; closing the client", peer_,
                 service_->config.idle_in_transaction_timeout.count(), service_->config.name);
    co_await close_with("25P03", "pgsluice: idle_in_transaction_timeout (" +
                                     std::to_string(service_->config.idle_in_transaction_timeout.count()) +
                                     "ms) of service \"" + service_->config.name +
                                     "\" expired; the transaction was rolled back and the connection closed");
  }
}

net::awaitable<void> ClientSession::close_with(std::string sqlstate, std::string message) {
  auto self = shared_from_this();
  if (closing_) co_return;
  closing_ = true;
  spdlog::info("session {}: closing the client: {} {}", peer_, sqlstate, message);
  co_await stop_server_reader();
  co_await send_fatal(sqlstate, message);
  // Half-close and keep reading (the relay discards input once closing_): a client that writes
  // before it reads still gets the FATAL instead of a reset that would lose it. Bounded.
  stream_.shutdown_send();
  asio::steady_timer linger(stream_.get_executor(), std::chrono::seconds(2));
  co_await linger.async_wait(net::use_nothrow);
  stream_.cancel();  // the relay's read ends; it then gives the server connection back
}

void ClientSession::describe(std::function<void(ClientDescription)> done) {
  asio::post(stream_.get_executor(), [self = shared_from_this(), done = std::move(done)] {
    ClientDescription out;
    const auto now = std::chrono::steady_clock::now();
    out.peer = self->peer_;
    out.user = self->user_;
    out.database = self->database_;
    out.service = self->service_ ? self->service_->config.name : std::string();
    out.state = !self->service_        ? "admin"
                : self->server_         ? "active"
                : self->lease_wait_ || self->expected_ready_ > 0 ? "waiting"
                                                                 : "idle";
    out.transaction_status = self->transaction_status_;
    out.connected_seconds = std::chrono::duration_cast<std::chrono::seconds>(now - self->connected_at_).count();
    if (self->server_) {
      out.server_pid = self->server_->backend_key().process_id;
      out.server_connected_seconds =
          std::chrono::duration_cast<std::chrono::seconds>(now - self->server_->created_at).count();
    }
    out.pinned = self->tracker_ && self->tracker_->pinned();
    out.listening = self->hub_channels_.size();
    done(std::move(out));
  });
}

void ClientSession::remember_slow_text() {
  slow_text_.clear();
  auto data = buffer_.readable().first(std::min(run_.offset, buffer_.readable().size()));
  for (std::size_t at = 0; at < data.size();) {
    auto frame = protocol::next_frame(data.subspan(at), max_message_size_);
    if (frame.status != protocol::FrameStatus::complete) break;
    at += frame.message.frame.size();
    if (frame.message.type == 'Q') {
      slow_text_ = protocol::as_string_view(frame.message.payload);
      return;
    }
    if (frame.message.type == 'P') {
      if (auto parse = protocol::parse_parse(frame.message.payload)) slow_text_ = parse->query;
      return;
    }
    if (frame.message.type == 'B') {
      if (auto bind = protocol::parse_bind(frame.message.payload)) {
        slow_text_ = "(a Bind of prepared statement \"" + std::string(bind->statement) + "\")";
      }
      return;
    }
  }
}

void ClientSession::log_slow_statement(std::chrono::steady_clock::duration took) {
  const auto ms = std::chrono::duration<double, std::milli>(took).count();
  std::string shape = "(no statement text in the batch)";
  std::string fingerprint = "-";
  if (slow_text_.starts_with("(")) {
    shape = slow_text_;
  } else if (!slow_text_.empty()) {
    if (auto parsed = sql::statement_shape(slow_text_)) {
      fingerprint = parsed->fingerprint;
      shape = parsed->normalized.size() > 500 ? parsed->normalized.substr(0, 500) + "..." : parsed->normalized;
    } else {
      shape = "(not SQL the parser reads)";
    }
  }
  spdlog::warn("session {}: slow statement: {:.1f} ms (service {}, user {}, fingerprint {}): {}", peer_, ms,
               service_->config.name, user_, fingerprint, shape);
  slow_text_.clear();
}

void ClientSession::begin_shutdown() {
  asio::post(stream_.get_executor(), [self = shared_from_this()] {
    self->draining_ = true;
    if (self->between_transactions() && !self->client_writing_ && !self->admin_busy_) {
      asio::co_spawn(self->stream_.get_executor(),
                     self->close_with("57P01", "pgsluice: shutting down; connect again"), asio::detached);
    }
  });
}

void ClientSession::force_shutdown() {
  asio::post(stream_.get_executor(), [self = shared_from_this()] {
    asio::co_spawn(self->stream_.get_executor(),
                   self->close_with("57P01", "pgsluice: shutting down (shutdown_timeout expired)"),
                   asio::detached);
  });
}

bool ClientSession::attach_server_now() {
  auto connection = service_->pool->try_acquire_now(worker_);
  if (!connection) return false;
  server_.reset(static_cast<server::ServerConnection*>(connection.release()));
  if (!server_->move_to(stream_.get_executor(), worker_)) {
    release_server(false);
    return false;  // attach_server leases another
  }
  return parameters_in_place();
}

bool ClientSession::parameters_in_place() {
  if (parameters_fingerprint_.empty()) parameters_fingerprint_ = server::parameter_fingerprint(parameters_);
  if (server_->applied_fingerprint() != parameters_fingerprint_) return false;  // attach_server applies them
  note_cancel_target();
  return true;
}

void ClientSession::note_cancel_target() {
  std::lock_guard lock(cancel_mutex_);
  cancel_server_ = server_.get();  // its own server, even after a reload
}

net::awaitable<bool> ClientSession::attach_server(std::string& sqlstate, std::string& error) {
  if (!server_ && !take_lease(co_await service_->pool->acquire(stream_.get_executor()), sqlstate, error)) {
    co_return false;
  }
  if (parameters_in_place()) co_return true;
  if (service_->config.mode != config::PoolMode::session) service_->counters->count_replay();
  if (!co_await server_->apply_parameters(parameters_, server_->target().connect_timeout)) {
    release_server(false);
    sqlstate = "08006";
    error = "pgsluice: server connection failed while applying session parameters";
    co_return false;
  }
  // Take the server's spelling of what was applied ("ISO" comes back as "ISO, MDY"), so the next
  // lease compares equal and sends nothing.
  for (auto& [name, value] : parameters_) {
    if (auto reported = server_->parameters().find(name); reported != server_->parameters().end()) {
      value = reported->second;
    }
  }
  parameters_fingerprint_ = server::parameter_fingerprint(parameters_);
  server_->set_applied_fingerprint(parameters_fingerprint_);
  note_cancel_target();
  co_return true;
}

bool ClientSession::take_lease(pool::AcquireResult lease, std::string& sqlstate, std::string& error) {
  if (!lease) {
    switch (lease.error) {
      case pool::AcquireError::timeout:
        if (std::uint64_t happened = 0; service_->counters->exhausted_report_due(happened)) {
          spdlog::warn("service {}: pool exhausted: {} ({} such in the last 10 s or since the last report)",
                       service_->config.name, lease.message, happened);
        }
        [[fallthrough]];
      case pool::AcquireError::too_many_waiting:
      case pool::AcquireError::paused: sqlstate = "53300"; break;
      case pool::AcquireError::connect_failed:
      case pool::AcquireError::circuit_open: sqlstate = "57P03"; break;
      case pool::AcquireError::closed: sqlstate = "57P01"; break;
    }
    error = lease.message;
    return false;
  }
  server_.reset(static_cast<server::ServerConnection*>(lease.connection.release()));
  if (!server_->move_to(stream_.get_executor(), worker_)) {
    release_server(false);
    sqlstate = "08006";
    error = "pgsluice: server connection failed while moving it to the client's worker";
    return false;
  }
  return true;
}

void ClientSession::release_server(bool reusable) {
  query_started_ = {};  // a statement the server did not answer is not timed
  {
    std::lock_guard lock(cancel_mutex_);
    cancel_server_ = nullptr;
  }
  if (!server_) return;
  server_->buffer().release_if_empty();  // an idle pooled connection holds no buffer
  // Decided before the call: the order in which arguments are evaluated is unspecified, and the
  // unique_ptr parameter empties server_.
  const bool clean = reusable && server_->buffer().empty();
  service_->pool->release(std::move(server_), clean);
}

void ClientSession::record_settled_state() {
  auto settled = tracker().take_settled();
  confirm_literals(settled);
  for (auto& setting : settled) {
    if (setting.value) {
      parameters_[setting.name] = *setting.value;
    } else {
      parameters_.erase(setting.name);
    }
    if (server_) server_->note_applied(setting.name, setting.value);
  }
  parameters_fingerprint_ = server::parameter_fingerprint(parameters_);
  // The connection carries exactly what this client wants now: what it was given at the lease
  // plus the changes the client made itself.
  if (server_) server_->set_applied_fingerprint(parameters_fingerprint_);
  note_pin();
}

void ClientSession::note_pin() {
  if (tracker_ && tracker_->pinned() && !pin_logged_) {
    pin_logged_ = true;
    service_->counters->count_pin();
    spdlog::info("session {}: pinned to its server connection (LISTEN, a session advisory lock, a temporary table "
                 "or a WITH HOLD cursor) until it releases them",
                 peer_);
  }
}

void ClientSession::confirm_literals(const std::vector<StatementTracker::SettledSetting>& settled) {
  // Settings whose SET may fail later for a reason the text does not show (the role's rights, the
  // catalog), and those the server reports with ParameterStatus: never answered here.
  static constexpr std::string_view kNotHere[] = {"role", "session_authorization", "default_tablespace",
                                                  "temp_tablespaces", "default_text_search_config"};
  std::shared_ptr<const server::ParameterMap> reported;
  for (const auto& setting : settled) {
    if (!setting.literal) {
      // Something else changed (a SET ROLE, a RESET ALL, a value read back by a probe): what held
      // before may not hold now, so the server confirms each literal SET again.
      confirmed_literals_.clear();
      break;
    }
  }
  for (const auto& setting : settled) {
    if (!setting.literal || !setting.value) continue;
    if (std::find(confirmed_literals_.begin(), confirmed_literals_.end(), setting.literal) !=
        confirmed_literals_.end()) {
      continue;
    }
    if (server::is_tracked_parameter(setting.name) ||
        std::any_of(std::begin(kNotHere), std::end(kNotHere),
                    [&](std::string_view name) { return server::same_guc_name(name, setting.name); })) {
      continue;
    }
    if (!reported) reported = service_->reported_parameters();
    if (!reported || reported->contains(setting.name)) continue;
    constexpr std::size_t kMaxConfirmed = 16;
    if (confirmed_literals_.size() >= kMaxConfirmed) confirmed_literals_.erase(confirmed_literals_.begin());
    confirmed_literals_.push_back(setting.literal);
  }
}

std::optional<ClientSession::SingleStatement> ClientSession::single_statement() const {
  auto data = buffer_.readable();
  if (data.empty() || (data[0] != 'Q' && data[0] != 'P')) return std::nullopt;
  std::size_t at = 0;
  auto next = [&](char type) -> std::optional<protocol::MessageView> {
    if (at >= data.size() || data[at] != type) return std::nullopt;
    auto frame = protocol::next_frame(data.subspan(at), max_message_size_);
    if (frame.status != protocol::FrameStatus::complete) return std::nullopt;
    at += frame.message.frame.size();
    return frame.message;
  };
  SingleStatement statement;
  if (data[0] == 'Q') {
    auto query = next('Q');
    if (!query) return std::nullopt;
    statement.text = protocol::as_string_view(query->payload);
    statement.size = at;
    return statement;
  }
  statement.extended = true;
  auto parse_message = next('P');
  if (!parse_message) return std::nullopt;
  auto parse = protocol::parse_parse(parse_message->payload);
  if (!parse || !parse->statement.empty() || parse->parameter_types.size() != 2 || parse->parameter_types[0] != 0 ||
      parse->parameter_types[1] != 0) {
    return std::nullopt;
  }
  statement.text = parse->query;
  auto bind_message = next('B');
  if (!bind_message) return std::nullopt;
  auto bind = protocol::parse_bind(bind_message->payload);
  // No parameters: Int16 format count (and its codes), then Int16 parameter count 0.
  if (!bind || !bind->portal.empty() || !bind->statement.empty() || bind->rest.size() < 4) return std::nullopt;
  const auto formats = static_cast<std::size_t>((static_cast<unsigned>(bind->rest[0]) << 8) | bind->rest[1]);
  const std::size_t count_at = 2 + 2 * formats;
  if (count_at + 2 > bind->rest.size() || bind->rest[count_at] != 0 || bind->rest[count_at + 1] != 0) {
    return std::nullopt;
  }
  if (auto describe_message = next('D')) {
    auto target = protocol::parse_describe_or_close(describe_message->payload);
    if (!target || !target->name.empty()) return std::nullopt;
    statement.describe = target->kind;
  }
  auto execute_message = next('E');
  if (!execute_message) return std::nullopt;
  auto execute = protocol::parse_execute(execute_message->payload);
  if (!execute || !execute->portal.empty() || !next('S')) return std::nullopt;
  statement.size = at;
  return statement;
}

void ClientSession::append_extended_preamble(const SingleStatement& statement, Buffer& out) {
  if (!statement.extended) return;
  protocol::append_parse_complete(out);
  protocol::MessageBuilder(out).begin('2').end();
  if (statement.describe == 'S') protocol::MessageBuilder(out).begin('t').int16(0).end();
  if (statement.describe != 0) protocol::MessageBuilder(out).begin('n').end();
}

void ClientSession::answered_here(const SingleStatement& statement, std::shared_ptr<const sql::SessionEffects> effects) {
  if (statement.extended) {
    tracker().unnamed_parsed_here(std::string(statement.text), std::move(effects));
  } else if (tracker_) {
    tracker_->simple_query_answered_here();
  }
}

ClientSession::SetAnswer ClientSession::try_answer_set() {
  if (transaction_status_ != 'I' || expected_ready_ != 0 || in_extended_batch_ || skip_until_sync_ || draining_ ||
      closing_ || !rewrite_statements_ || (tracker_ && (!tracker_->idle() || tracker_->pinned()))) {
    return SetAnswer::no;
  }
  auto statement = single_statement();
  if (!statement) return SetAnswer::no;
  auto effects = context_->analyzer.effects_of(statement->text);
  if (!effects || !effects->literal || effects->settings.size() != 1 || !effects->resets.empty() ||
      std::find(confirmed_literals_.begin(), confirmed_literals_.end(), effects->literal) == confirmed_literals_.end()) {
    return SetAnswer::no;
  }
  std::optional<std::string> value;
  {
    std::lock_guard lock(effects->literal->mutex);
    value = effects->literal->value;
  }
  if (!value) return SetAnswer::no;
  // What Postgres answers: the SET's replies, no ParameterStatus (not a reported setting).
  Outgoing out;
  auto& reply = out.build();
  append_extended_preamble(*statement, reply);
  protocol::MessageBuilder(reply).begin('C').cstring("SET").end();
  protocol::append_ready_for_query(reply, 'I');
  parameters_[effects->settings.front()] = std::move(*value);
  parameters_fingerprint_ = server::parameter_fingerprint(parameters_);
  answered_here(*statement, effects);
  buffer_.consume(statement->size);
  return send_client(out) ? SetAnswer::answered : SetAnswer::client_gone;
}

void ClientSession::forward_cancel() {
  std::shared_ptr<const server::ServerTarget> target;
  protocol::BackendKeyData key;
  {
    std::lock_guard lock(cancel_mutex_);
    if (cancel_server_ != nullptr) {
      target = cancel_server_->shared_target();
      key = cancel_server_->backend_key();
    }
  }
  if (!target) return cancel_coalesced();  // nothing running on a server for this client
  asio::co_spawn(stream_.get_executor(), server::send_cancel(stream_.get_executor(), *target, key), asio::detached);
}

void ClientSession::fail_run(protocol::Bytes run, const std::string& sqlstate, const std::string& error,
                             Buffer& out) {
  bool error_sent = skip_until_sync_;
  std::size_t offset = 0;
  while (offset < run.size()) {
    auto frame = protocol::next_frame(run.subspan(offset), max_message_size_);
    offset += frame.message.frame.size();
    switch (frame.message.type) {
      case 'Q':
      case 'F':
        protocol::append_error_response(out, protocol::Severity::error, sqlstate, error);
        protocol::append_ready_for_query(out, transaction_status_);
        break;
      case 'S':
        if (!error_sent) protocol::append_error_response(out, protocol::Severity::error, sqlstate, error);
        protocol::append_ready_for_query(out, transaction_status_);
        error_sent = false;
        break;
      case 'P': case 'B': case 'D': case 'E': case 'C':
        if (!error_sent) protocol::append_error_response(out, protocol::Severity::error, sqlstate, error);
        error_sent = true;
        break;
      default:  // Flush, COPY messages with no COPY in progress: nothing to answer
        break;
    }
  }
  skip_until_sync_ = error_sent;
}

// The client side. Each read's handler takes the run of whole messages at the front of buffer_ and
// forwards it at once when it can (the server connection is held or leased now, or the lease waits
// in the pool's line without a coroutine, and the server takes the bytes at once); anything slower
// goes on in a spawned coroutine, which reads the client again at its end.
struct ClientSession::ClientRead {
  std::shared_ptr<ClientSession> self;
  void operator()(const net::error_code& ec, std::size_t count) {
    auto* session = self.get();
    session->on_client_read(std::move(self), ec, count);
  }
};

// Run by the pool on the session's worker when the lease in line was served, failed or timed out.
struct ClientSession::LeaseReady {
  std::shared_ptr<ClientSession> self;
  using allocator_type = asio::recycling_allocator<void>;
  allocator_type get_allocator() const noexcept { return {}; }
  void operator()() {
    auto* session = self.get();
    session->on_lease_ready(std::move(self));
  }
};

// Between messages an idle client holds no buffer (DESIGN §8: an idle client costs little): the
// session reads into a small array of its own (idle_read_) and takes a buffer from the worker's
// cache only once bytes came. A read rather than a wait for readability: Asio tries the socket at
// once and otherwise leaves the read in the reactor, whose wake-up brings the bytes; a wait would
// cost a peek first (Asio registers sockets edge-triggered) and an epoll_ctl to re-arm, each time.
struct ClientSession::ClientIdleRead {
  std::shared_ptr<ClientSession> self;
  void operator()(const net::error_code& ec, std::size_t count) {
    auto* session = self.get();
    session->on_client_idle_read(std::move(self), ec, count);
  }
};

void ClientSession::read_client(std::shared_ptr<ClientSession> self) {
  constexpr std::size_t kMaxClientBacklog = 1024 * 1024;
  if (client_flushing_ && client_backlog_.size() >= kMaxClientBacklog) {
    asio::co_spawn(stream_.get_executor(), read_after_drain(std::move(self)), asio::detached);
    return;
  }
  if (expected_ready_ >= kMaxStatementsInFlight && server_ && server_reader_running_ && !closing_) {
    client_read_paused_ = true;  // resume_client_read, as the server side answers
    return;
  }
  if (buffer_.empty()) {
    buffer_.release_if_empty();
    stream_.async_read_some(idle_read_, ClientIdleRead{std::move(self)});
    return;
  }
  net::async_read_into(stream_, buffer_, net::read_size_for(run_.want, buffer_.size()), ClientRead{std::move(self)});
}

void ClientSession::resume_client_read(std::shared_ptr<ClientSession> self) {
  if (client_read_paused_ && (expected_ready_ < kMaxStatementsInFlight / 2 || !server_reader_running_)) {
    client_read_paused_ = false;
    read_client(std::move(self));
  }
}

net::awaitable<void> ClientSession::read_after_drain(std::shared_ptr<ClientSession> self) {
  if (!co_await client_drained()) co_return end_client();
  read_client(std::move(self));
}

void ClientSession::on_client_idle_read(std::shared_ptr<ClientSession> self, net::error_code ec, std::size_t count) {
  if (count > 0) {
    auto space = buffer_.writable(net::read_size_for(run_.want, count));
    std::memcpy(space.data(), idle_read_.data(), count);
  }
  on_client_read(std::move(self), ec, count);
}

void ClientSession::on_client_read(std::shared_ptr<ClientSession> self, net::error_code ec, std::size_t count) {
  if (net::finish_read(buffer_, ec, count)) return end_client();
  on_client_data(std::move(self));
}

void ClientSession::end_client() {
  // Closing from now on, as when relay() returned and run() went on at once: close_with (SIGTERM
  // and timeouts) must not start a second shutdown of the server side meanwhile.
  closing_ = true;
  if (std::exchange(client_done_, true)) return;
  if (!server_ && !server_reader_running_) {
    // Nothing to give back or stop (as between transactions in the pooled modes): no coroutine.
    log_close();
    disarm_timer();
    return;
  }
  asio::co_spawn(stream_.get_executor(), end_session(shared_from_this()), asio::detached);
}

net::awaitable<void> ClientSession::refuse_client([[maybe_unused]] std::shared_ptr<ClientSession> self,
                                                  std::string sqlstate,
                                                  std::string message) {
  co_await stop_server_reader();
  co_await send_fatal(sqlstate, message);
  end_client();
}

void ClientSession::on_client_data(std::shared_ptr<ClientSession> self) {
  run_ = {};
  if (closing_) {
    // The session is ending (close_with): what the client still sends is read and dropped.
    buffer_.consume(buffer_.size());
    return read_client(std::move(self));
  }
  if (!server_ && !confirmed_literals_.empty()) {
    for (;;) {
      const auto answered = try_answer_set();
      if (answered == SetAnswer::no) break;
      if (answered == SetAnswer::client_gone) return end_client();
    }
  }
  // Cut every whole message off the buffer; the run of them is forwarded with one write.
  auto data = buffer_.readable();
  while (run_.offset < data.size()) {
    auto frame = protocol::next_frame(data.subspan(run_.offset), max_message_size_);
    if (frame.status == protocol::FrameStatus::incomplete) {
      run_.want = frame.needed;
      break;
    }
    if (frame.status == protocol::FrameStatus::malformed) {
      auto error = frame.error();
      asio::co_spawn(stream_.get_executor(),
                     refuse_client(std::move(self), std::move(error.sqlstate), "pgsluice: " + error.message),
                     asio::detached);
      return;
    }
    const char type = frame.message.type;
    if (!protocol::is_frontend_message_type(type)) {
      asio::co_spawn(stream_.get_executor(),
                     refuse_client(std::move(self), "08P01",
                                   std::string("pgsluice: invalid frontend message type ") +
                                       std::to_string(static_cast<unsigned char>(type))),
                     asio::detached);
      return;
    }
    if (type == 'X') {
      run_.terminate = true;
      break;
    }
    if (type == 'B' && !protocol::bind_is_well_formed(frame.message.payload)) {
      asio::co_spawn(stream_.get_executor(),
                     refuse_client(std::move(self), "08P01",
                                   "pgsluice: malformed Bind message (its counts or lengths disagree with its bytes)"),
                     asio::detached);
      return;
    }
    switch (type) {
      case 'Q': case 'F': ++expected_ready_; ++run_.statements; break;
      case 'S': ++expected_ready_; in_extended_batch_ = false; break;
      case 'E': in_extended_batch_ = true; ++run_.statements; break;
      case 'P': case 'B': case 'D': case 'C': case 'H': in_extended_batch_ = true; break;
      default: break;
    }
    run_.offset += frame.message.frame.size();
  }
  if (run_.offset == 0) return end_run(std::move(self), false);
  if (run_.statements > 0 && service_) service_->counters->count_queries(run_.statements);
  if (timer_purpose_ == TimerPurpose::idle_in_transaction) disarm_timer();
  if (!server_) {
    if (service_->listeners && !skip_until_sync_ && try_serve_listens(self)) return;
    if (service_->coalescer && !std::exchange(coalesce_bypass_, false) && try_coalesce(self)) return;
    acquire_started_ = std::chrono::steady_clock::now();
    bool attached = false;
    if (!skip_until_sync_) {
      attached = attach_server_now();
      // Under load the lease usually waits: in the pool's line, without a coroutine.
      std::shared_ptr<pool::Pool::Waiter> waiter;
      if (!attached && !server_ && (waiter = service_->pool->enqueue_now(stream_.get_executor()))) {
        lease_wait_ = waiter;
        pool::Pool::when_ready(waiter, LeaseReady{std::move(self)});
        return;
      }
    }
    if (!attached) {
      asio::co_spawn(stream_.get_executor(), attach_slowly(std::move(self), nullptr, std::nullopt, {}, {}),
                     asio::detached);
      return;
    }
  }
  forward_run(std::move(self));
}

bool ClientSession::try_serve_listens(std::shared_ptr<ClientSession>& self) {
  // Outside a transaction with nothing in flight (no server connection), a Query of LISTEN /
  // UNLISTEN statements only, or one such statement run alone through the extended protocol
  // (pgjdbc): served without a server connection, which would stay pinned.
  if (transaction_status_ != 'I') return false;
  auto statement = single_statement();
  if (!statement) return false;
  const auto text = statement->text;
  if (text.find("isten") == std::string_view::npos && text.find("ISTEN") == std::string_view::npos) return false;
  auto effects = context_->analyzer.effects_of(text);
  if (!effects || !effects->only_listens() || (statement->extended && effects->statements != 1)) return false;
  for (const auto& change : effects->listens) {
    // Postgres truncates a longer name with a NOTICE: left to it (on a pinned connection).
    if (change.channel.size() >= 64 || (change.listen && change.channel.empty())) return false;
  }
  asio::co_spawn(stream_.get_executor(), serve_listens(std::move(self), std::move(effects), *statement),
                 asio::detached);
  return true;
}

net::awaitable<void> ClientSession::serve_listens(std::shared_ptr<ClientSession> self,
                                                  std::shared_ptr<const sql::SessionEffects> effects,
                                                  SingleStatement statement) {
  // The buffer stays as it is until the answer is written (nothing else reads it meanwhile); the
  // statement's text is copied now, for the tracker.
  const std::string text(statement.text);
  statement.text = text;
  if (listen_id_ == 0) listen_id_ = ListenerHub::new_subscriber();
  std::weak_ptr<ClientSession> weak = self;
  auto deliver = [weak, executor = stream_.get_executor()](std::shared_ptr<const Buffer> frame) {
    asio::post(executor, [weak, frame = std::move(frame)]() mutable {
      if (auto session = weak.lock()) session->deliver_notification(std::move(frame));
    });
  };
  // A notification the listener connection routes once it listens may arrive before apply()
  // returns: the new channels pass the filter in deliver_notification from now on.
  const auto before = hub_channels_;
  for (const auto& change : effects->listens) {
    if (change.listen) follow_hub_channels({change});
  }
  auto changes = effects->listens;
  auto error = co_await service_->listeners->apply(listen_id_, std::move(changes), std::move(deliver));
  if (error) {
    hub_channels_ = before;  // the changes before the failure are made there, but not confirmed
  } else {
    follow_hub_channels(effects->listens);
  }
  Buffer out;
  append_extended_preamble(statement, out);
  if (error) {
    protocol::append_error_response(out, protocol::Severity::error, error->sqlstate, error->message);
  } else {
    for (const auto& change : effects->listens) {
      protocol::MessageBuilder(out).begin('C').cstring(change.listen ? "LISTEN" : "UNLISTEN").end();
    }
  }
  protocol::append_ready_for_query(out, 'I');
  // Only this statement was answered: the rest of the buffer is taken again (and counted again).
  buffer_.consume(statement.size);
  expected_ready_ = 0;
  in_extended_batch_ = false;
  answered_here(statement, effects);
  if (!co_await write_client(out)) co_return end_client();
  flush_notifications();
  on_client_data(std::move(self));
}

void ClientSession::deliver_notification(std::shared_ptr<const Buffer> frame) {
  if (closing_ || client_done_) return;
  if (!frame) {
    // The listener connection went, and every subscription with it: like a lost server connection,
    // the client must know it may have missed notifications.
    listen_id_ = 0;
    hub_channels_.clear();
    asio::co_spawn(stream_.get_executor(),
                   close_with("08006", "pgsluice: the listener connection of service \"" + service_->config.name +
                                           "\" was lost; notifications may have been missed; connect again"),
                   asio::detached);
    return;
  }
  // Only channels it listens to now: an UNLISTEN that ran on its server connection ends delivery at
  // once here, while the listener connection learns of it a little later.
  if (frame->size() > 9) {
    const auto channel = protocol::as_string_view(protocol::Bytes(frame->data() + 9, frame->size() - 9));
    if (std::find(hub_channels_.begin(), hub_channels_.end(), channel.substr(0, channel.find('\0'))) ==
        hub_channels_.end()) {
      return;
    }
  }
  constexpr std::size_t kMaxUnread = 16u * 1024u * 1024u;
  if (pending_notifications_.size() + client_backlog_.size() + frame->size() > kMaxUnread) {
    spdlog::warn("session {}: more than {} bytes of notifications the client does not read; closing it", peer_,
                 kMaxUnread);
    pending_notifications_.clear();
    asio::co_spawn(stream_.get_executor(),
                   close_with("53200", "pgsluice: the client does not read its notifications (16 MiB waiting)"),
                   asio::detached);
    return;
  }
  pending_notifications_.insert(pending_notifications_.end(), frame->begin(), frame->end());
  flush_notifications();
}

void ClientSession::flush_notifications() {
  // Between transactions only, as Postgres sends them; else after the transaction's ReadyForQuery.
  if (pending_notifications_.empty() || !between_transactions() || closing_) return;
  Outgoing out;
  out.append(pending_notifications_);
  send_client(out);  // what the socket does not take now is copied into the writer's queue
  Buffer().swap(pending_notifications_);
}

void ClientSession::follow_hub_channels(const std::vector<sql::ListenChange>& changes) {
  for (const auto& change : changes) {
    if (change.listen) {
      if (std::find(hub_channels_.begin(), hub_channels_.end(), change.channel) == hub_channels_.end()) {
        hub_channels_.push_back(change.channel);
      }
    } else if (change.channel.empty()) {
      hub_channels_.clear();
    } else {
      std::erase(hub_channels_, change.channel);
    }
  }
  if (hub_channels_.empty()) std::vector<std::string>().swap(hub_channels_);
}

void ClientSession::pass_on_unlistens() {
  auto changes = tracker_->take_passed_unlistens();
  if (listen_id_ == 0 || !service_->listeners) return;
  follow_hub_channels(changes);
  asio::co_spawn(
      stream_.get_executor(),
      [hub = service_->listeners, id = listen_id_, changes = std::move(changes)]() mutable -> net::awaitable<void> {
        ListenerHub::Deliver none;  // not a temporary of the co_await expression (GCC PR 99576)
        auto error = co_await hub->apply(id, std::move(changes), std::move(none));
        (void)error;
      },
      asio::detached);
}

void ClientSession::on_lease_ready(std::shared_ptr<ClientSession> self) {
  auto waiter = std::move(lease_wait_);
  auto lease = service_->pool->end_wait(*waiter);
  std::string sqlstate;
  std::string error;
  if (lease && lease->connection) {
    if (take_lease(std::move(*lease), sqlstate, error) && parameters_in_place()) return forward_run(std::move(self));
    lease.reset();  // taken (parameters to apply), or failed with sqlstate set
    waiter.reset();
  }
  asio::co_spawn(stream_.get_executor(),
                 attach_slowly(std::move(self), std::move(waiter), std::move(lease), std::move(sqlstate),
                               std::move(error)),
                 asio::detached);
}

net::awaitable<void> ClientSession::attach_slowly(std::shared_ptr<ClientSession> self,
                                                  std::shared_ptr<pool::Pool::Waiter> waited,
                                                  std::optional<pool::AcquireResult> lease, std::string sqlstate,
                                                  std::string error) {
  bool attached = false;
  if (!skip_until_sync_ && sqlstate.empty()) {
    if (!server_) {
      if (lease) {
        take_lease(std::move(*lease), sqlstate, error);
      } else if (waited) {
        take_lease(co_await service_->pool->finish_wait(std::move(waited)), sqlstate, error);
      } else {
        take_lease(co_await service_->pool->acquire(stream_.get_executor()), sqlstate, error);
      }
    }
    if (server_) attached = parameters_in_place() || co_await attach_server(sqlstate, error);
  }
  if (attached) co_return forward_run(std::move(self));
  if (acquire_started_ != std::chrono::steady_clock::time_point{}) {
    service_->counters->observe_acquire(std::chrono::steady_clock::now() - acquire_started_);
    acquire_started_ = {};
  }
  if (sqlstate == "57P01") {
    // The service is gone (removed by a reload, or shutting down): nothing will serve this client
    // again, so it is told why and closed rather than failing every statement.
    asio::co_spawn(stream_.get_executor(), close_with(sqlstate, error), asio::detached);
    buffer_.consume(run_.offset);
    co_return on_client_data(std::move(self));  // from now on it discards input until close_with ends it
  }
  // Nothing was sent: undo the accounting and answer every message here.
  expected_ready_ = 0;
  in_extended_batch_ = false;
  Buffer out;
  fail_run(buffer_.readable().first(run_.offset), sqlstate, error, out);
  buffer_.consume(run_.offset);
  disarm_timer();
  if (!out.empty() && !co_await write_client(out)) co_return end_client();
  on_client_data(std::move(self));  // what is left of the buffer, then reads on
}

namespace {

// What goes to the server, one line a message (trace level: the differential test's debugging).
void trace_sent(const std::string& peer, Outgoing& out, std::size_t max_size) {
  for (auto piece : out.pieces()) {
    std::size_t offset = 0;
    while (offset < piece.size()) {
      auto frame = protocol::next_frame(piece.subspan(offset), max_size);
      if (frame.status != protocol::FrameStatus::complete) break;
      std::string detail;
      if (frame.message.type == 'P' || frame.message.type == 'B' || frame.message.type == 'D' ||
          frame.message.type == 'C' || frame.message.type == 'Q') {
        auto text = protocol::as_string_view(frame.message.payload);
        detail = std::string(text.substr(0, std::min<std::size_t>(text.size(), 80)));
        std::replace(detail.begin(), detail.end(), '\0', '|');
      }
      spdlog::trace("session {}: to server '{}' {}", peer, frame.message.type, detail);
      offset += frame.message.frame.size();
    }
  }
}

}  // namespace

bool ClientSession::build_chunk(std::size_t& at, Outgoing& out) {
  auto run = buffer_.readable().first(run_.offset);
  out.clear();
  if (!rewrite_statements_) {
    out.append(run.subspan(at));
    at = run_.offset;
    return false;
  }
  // A Bind waits for the shape of the statement it binds (StatementTracker): the chunk ends before it.
  while (at < run_.offset) {
    auto frame = protocol::next_frame(run.subspan(at), max_message_size_);
    const bool taken = tracker().client_message(frame.message, server_->statements(), out);
    if (tracing()) {
      spdlog::trace("session {}: client '{}' ({} bytes){}", peer_, frame.message.type, frame.message.frame.size(),
                    taken ? "" : ", held");
    }
    expected_ready_ -= tracker_->take_ignored_queries();
    if (!taken) {
      if (tracing()) trace_sent(peer_, out, max_message_size_);
      return true;
    }
    at += frame.message.frame.size();
  }
  if (tracing()) trace_sent(peer_, out, max_message_size_);
  return false;
}

void ClientSession::forward_run(std::shared_ptr<ClientSession> self) {
  if (acquire_started_ != std::chrono::steady_clock::time_point{} ||
      query_started_ == std::chrono::steady_clock::time_point{}) {
    const auto now = std::chrono::steady_clock::now();
    if (acquire_started_ != std::chrono::steady_clock::time_point{}) {
      service_->counters->observe_acquire(now - acquire_started_);
      acquire_started_ = {};
    }
    if (query_started_ == std::chrono::steady_clock::time_point{}) {
      query_started_ = now;
      if (config_->log_slow_statements.count() > 0) remember_slow_text();
    }
  }
  // query_timeout counts from when the statement goes to the server: waiting for a connection is
  // bounded by acquire_timeout instead.
  if (expected_ready_ > 0 && timer_purpose_ == TimerPurpose::none && service_->config.query_timeout.count() > 0) {
    arm_timer(TimerPurpose::query, service_->config.query_timeout);
  }
  // The server side starts reading once the run is written (or, for a long run, before the rest
  // of it, so that a server answering while it still receives is read meanwhile).
  const bool start_reader = !server_reader_running_;
  if (start_reader) {
    stop_server_reader_ = false;
    listener_barrier_passed_ = false;
    server_reader_running_ = true;
  }
  Outgoing& out = to_server_;
  std::size_t at = 0;
  const bool held = build_chunk(at, out);
  net::error_code ec;
  std::size_t written = 0;
  const bool sent = out.empty() || net::try_write_all(server_->stream(), out.pieces(), written, ec);
  if (!sent) client_writing_ = true;
  if (start_reader) read_server(self);
  if (sent && (ec || (!held && !(tracker_ && tracker_->has_due_replies())))) {
    return end_run(std::move(self), static_cast<bool>(ec));  // the server reader sees a failure and tells the client
  }
  asio::co_spawn(stream_.get_executor(), forward_slowly(std::move(self), at, written, sent, held), asio::detached);
}

net::awaitable<void> ClientSession::forward_slowly(std::shared_ptr<ClientSession> self, std::size_t at,
                                                   std::size_t written, bool sent, bool held) {
  Outgoing& out = to_server_;
  bool failed = false;
  for (;;) {
    net::error_code ec;
    if (!sent) {
      ec = co_await net::write_rest(server_->stream(), out.pieces(), written);
      client_writing_ = false;
    }
    // The server reader sees a failure and tells the client.
    failed = ec || (tracker_ && tracker_->has_due_replies() && !co_await send_due_replies());
    if (failed || !held) break;
    while (tracker_ && tracker_->awaiting_server() && server_reader_running_ && !closing_) co_await answer_known_.wait();
    if ((tracker_ && tracker_->awaiting_server()) || closing_ || !server_) {
      failed = true;  // the server connection went away meanwhile: the session is ending
      break;
    }
    held = build_chunk(at, out);
    written = 0;
    sent = out.empty() || net::try_write_all(server_->stream(), out.pieces(), written, ec);
    if (!sent) client_writing_ = true;
    if (sent && ec) {
      failed = true;
      break;
    }
  }
  end_run(std::move(self), failed);
}

void ClientSession::end_run(std::shared_ptr<ClientSession> self, bool failed) {
  buffer_.consume(run_.offset);
  run_.offset = 0;
  if (failed || run_.terminate || closing_) return end_client();
  read_client(std::move(self));
}

struct ClientSession::ServerRead {
  std::shared_ptr<ClientSession> self;
  void operator()(const net::error_code& ec, std::size_t count) {
    auto* session = self.get();
    session->on_server_read(std::move(self), ec, count);
  }
};

void ClientSession::read_server(std::shared_ptr<ClientSession> self) {
  net::async_read_into(server_->stream(), server_->buffer(), 4096, ServerRead{std::move(self)});
}

void ClientSession::hold_for_listener(std::shared_ptr<ClientSession> self) {
  if (stop_server_reader_ || !service_->listeners) {
    server_held_for_listener_ = false;
    if (stop_server_reader_) return end_server_reader();
    listener_barrier_passed_ = true;
    return relay_server_buffer(std::move(self));
  }
  const auto generation = ++listener_hold_generation_;
  std::weak_ptr<ClientSession> weak = self;
  service_->listeners->barrier([weak, generation, executor = stream_.get_executor()] {
    asio::post(executor, [weak, generation] {
      auto session = weak.lock();
      if (!session || generation != session->listener_hold_generation_ || !session->server_held_for_listener_) {
        return;
      }
      session->server_held_for_listener_ = false;
      if (session->stop_server_reader_ || !session->server_) return session->end_server_reader();
      session->listener_barrier_passed_ = true;
      session->relay_server_buffer(session);
    });
  });
}

void ClientSession::end_server_reader() {
  server_reader_running_ = false;
  if (client_read_paused_) resume_client_read(shared_from_this());
  server_reader_done_.notify();
  answer_known_.notify();
}

void ClientSession::on_server_read(std::shared_ptr<ClientSession> self, net::error_code read_ec, std::size_t count) {
  auto& buffer = server_->buffer();
  if (auto ec = net::finish_read(buffer, read_ec, count)) {
    if (stop_server_reader_) return end_server_reader();
    asio::co_spawn(stream_.get_executor(), lose_server(std::move(self), ec.message()), asio::detached);
    return;
  }
  if (stop_server_reader_) return end_server_reader();
  relay_server_buffer(std::move(self));
}

void ClientSession::relay_server_buffer(std::shared_ptr<ClientSession> self) {
  auto& buffer = server_->buffer();
  const std::size_t max_size = server_->target().max_message_size;
  auto data = buffer.readable();
  std::size_t offset = 0;
  bool ready_seen = false;
  bool notification_seen = false;
  bool notifications_before_ready = false;  // the held ReadyForQuery: what the listener sent goes first
  const char* malformed = nullptr;
  while (offset < data.size()) {
    auto frame = protocol::next_frame(data.subspan(offset), max_size);
    if (frame.status == protocol::FrameStatus::incomplete) break;
    if (frame.status == protocol::FrameStatus::malformed || !protocol::is_backend_message_type(frame.message.type)) {
      malformed = "malformed message from server";
      break;
    }
    const auto& message = frame.message;
    if (message.type == 'Z') {
      auto status = protocol::parse_ready_for_query(message.payload);
      if (!status) {
        malformed = "malformed ReadyForQuery from server";
        break;
      }
      if (*status == 'I' && !hub_channels_.empty()) {
        if (!std::exchange(listener_barrier_passed_, false)) {
          // The relay stops before it until the listener connection's round trip (hold_for_listener).
          server_held_for_listener_ = true;
          break;
        }
        notifications_before_ready = !pending_notifications_.empty();
      }
      transaction_status_ = *status;
      // In the pooled modes some are answers to what pgsluice sent (a probe): the tracker says which.
      if (!rewrite_statements_ && expected_ready_ > 0) --expected_ready_;
      ready_seen = true;
    } else if (message.type == 'A') {
      notification_seen = true;
    } else if (message.type == 'S') {
      if (auto parameter = protocol::parse_parameter_status(message.payload)) {
        std::string name(parameter->name);
        std::string value(parameter->value);
        // A value the client caused (SET TimeZone ...) follows it to its next server connection.
        if (server::is_tracked_parameter(name) || parameters_.contains(name)) {
          parameters_[name] = value;
          parameters_fingerprint_.clear();
        }
        server_->parameters()[std::move(name)] = std::move(value);
        server_->set_applied_fingerprint({});  // the server's state moved: compare in full next time
      }
    }
    offset += message.frame.size();
  }
  if (malformed) {
    asio::co_spawn(stream_.get_executor(), lose_server(std::move(self), malformed), asio::detached);
    return;
  }
  if (offset > 0) {
    Outgoing& out = to_client_;
    out.clear();
    if (rewrite_statements_ || timeout_cancel_pending_ || notification_seen || notifications_before_ready) {
      const bool awaiting = tracker_ && tracker_->awaiting_server();
      for (std::size_t at = 0; at < offset;) {
        auto frame = protocol::next_frame(data.subspan(at), max_size);
        const auto& message = frame.message;
        at += message.frame.size();
        if (message.type == 'Z' && std::exchange(notifications_before_ready, false)) {
          auto& copy = out.build();  // copied: the held bytes go now
          copy.insert(copy.end(), pending_notifications_.begin(), pending_notifications_.end());
          Buffer().swap(pending_notifications_);
        }
        if (rewrite_statements_) {
          auto& tracker = this->tracker();
          tracker.take_due_replies(out);
          const auto disposition = tracker.server_message(message, server_->statements());
          // Types and sizes only: an error's text can quote a parameter value.
          if (tracing()) {
            spdlog::trace("session {}: server '{}' ({} bytes) {}", peer_, message.type, message.frame.size(),
                          static_cast<int>(disposition));
          }
          if (message.type == 'Z' && disposition != StatementTracker::Disposition::swallow && expected_ready_ > 0) {
            --expected_ready_;
          }
          if (disposition == StatementTracker::Disposition::swallow) continue;
          if (disposition == StatementTracker::Disposition::rewritten) {
            const auto& reply = tracker.rewritten_reply();
            out.build().insert(out.build().end(), reply.begin(), reply.end());
            continue;
          }
          if (disposition == StatementTracker::Disposition::stale_result_type) {
            StatementTracker::append_stale_plan_error(out.build());
            continue;
          }
        }
        if (message.type == 'A' && cancel_key_ && message.payload.size() >= 4) {
          // A notification names the backend that sent it; the client knows pgsluice's key for
          // itself (BackendKeyData), so one from its own server connection carries that pid.
          protocol::PayloadReader reader(message.payload);
          const auto pid = static_cast<std::uint32_t>(reader.int32());
          // A channel the listener connection serves this client already (it listened there first):
          // that copy is the one it gets, this one would be a duplicate.
          if (!hub_channels_.empty() &&
              std::find(hub_channels_.begin(), hub_channels_.end(), reader.cstring()) != hub_channels_.end()) {
            continue;
          }
          if (pid == server_->backend_key().process_id) {
            protocol::MessageBuilder(out.build())
                .begin('A')
                .int32(static_cast<std::int32_t>(cancel_key_->process_id))
                .bytes(protocol::as_string_view(message.payload.subspan(4)))
                .end();
            continue;
          }
        }
        if (timeout_cancel_pending_ && message.type == 'E') {
          auto fields = protocol::parse_error_response(message.payload);
          if (fields && fields->sqlstate == "57014") {
            timeout_cancel_pending_ = false;
            protocol::append_error_response(
                out.build(), protocol::Severity::error, "57014",
                "pgsluice: query_timeout (" + std::to_string(service_->config.query_timeout.count()) +
                    "ms) of service \"" + service_->config.name + "\" expired; the statement was cancelled");
            continue;
          }
        }
        out.append(message.frame);
      }
      if (rewrite_statements_) {
        tracker().take_due_replies(out);
        if (tracker_->has_settled()) record_settled_state();
        if (tracker_->pinned() && !pin_logged_) note_pin();
        if (tracker_->has_passed_unlistens()) pass_on_unlistens();
      }
      if (!send_client(out, true)) {
        buffer.consume(offset);
        closing_ = true;  // the client is gone; the client side will notice too
        return end_server_reader();
      }
      // The held message goes on now: whatever pgsluice answers it is queued behind these replies.
      if (awaiting && !tracker_->awaiting_server()) answer_known_.notify();
    } else {
      out.append(data.first(offset));
      if (!send_client(out, true)) {
        buffer.consume(offset);
        closing_ = true;
        return end_server_reader();
      }
    }
    if (client_flushing_) {
      // The client does not take it all now: the server is read again once it has (the run's bytes
      // are still in the server's buffer).
      server_waits_for_client_ = true;
      server_run_offset_ = offset;
      server_run_ready_seen_ = ready_seen;
      return;
    }
  }
  after_server_write(std::move(self), offset, ready_seen);
}

void ClientSession::after_server_write(std::shared_ptr<ClientSession> self, std::size_t offset, bool ready_seen) {
  auto& buffer = server_->buffer();
  buffer.consume(offset);
  if (client_read_paused_) resume_client_read(self);
  if (server_held_for_listener_) return hold_for_listener(std::move(self));
  if (ready_seen && expected_ready_ == 0 && transaction_status_ != 'I' &&
      service_->config.mode == config::PoolMode::statement) {
    // Statement mode hands the connection back after every statement: a transaction block cannot
    // span statements. Refuse it like PgBouncer does; the server side is rolled back and kept.
    end_server_reader();
    asio::co_spawn(stream_.get_executor(),
                   close_with("0A000", "pgsluice: transaction blocks are not allowed in statement pool mode (service \"" +
                                           service_->config.name +
                                           "\"); use transaction mode for multi-statement transactions"),
                   asio::detached);
    return;
  }
  if (ready_seen && expected_ready_ == 0) {
    if (transaction_status_ == 'I') service_->counters->count_transaction();
    if (query_started_ != std::chrono::steady_clock::time_point{}) {
      const auto took = std::chrono::steady_clock::now() - query_started_;
      service_->counters->observe_query(took);
      query_started_ = {};
      if (config_->log_slow_statements.count() > 0 && took >= config_->log_slow_statements) log_slow_statement(took);
    }
    if (!pending_notifications_.empty()) flush_notifications();
    timeout_cancel_pending_ = false;
    if (timer_purpose_ == TimerPurpose::query || timer_purpose_ == TimerPurpose::cancel_answer) disarm_timer();
    if (transaction_status_ != 'I' && service_->config.idle_in_transaction_timeout.count() > 0) {
      arm_timer(TimerPurpose::idle_in_transaction, service_->config.idle_in_transaction_timeout);
    }
    if (draining_ && between_transactions() && !client_writing_ && buffer.empty()) {
      // SIGTERM and the transaction in flight is done.
      if (service_->config.mode != config::PoolMode::session) release_server(true);
      end_server_reader();
      asio::co_spawn(stream_.get_executor(), close_with("57P01", "pgsluice: shutting down; connect again"),
                     asio::detached);
      return;
    }
  }
  if (ready_seen && service_->config.mode != config::PoolMode::session && transaction_status_ == 'I' &&
      expected_ready_ == 0 && !in_extended_batch_ && !client_writing_ && buffer.empty() && !stop_server_reader_ &&
      (!tracker_ || (tracker_->idle() && !tracker_->pinned()))) {
    if (tracker_ && tracker_->has_unsettled_state()) {
      // A SET whose batch ended inside a transaction, answered after the client's next batch had
      // gone out without a probe (a pipelining client): read it back before anyone else gets the
      // connection. A server that does not take the probe at once loses the connection instead.
      Outgoing probe;
      tracker_->send_probe_now(server_->statements(), probe);
      std::size_t written = 0;
      net::error_code ec;
      if (!probe.empty() && net::try_write_all(server_->stream(), probe.pieces(), written, ec) && !ec) {
        return read_server(std::move(self));
      }
      release_server(false);
      return end_server_reader();
    }
    release_server(true);
    // Between transactions a client that keeps nothing in its tracker costs no tracker (DESIGN §8).
    if (tracker_ && tracker_->carries_nothing()) tracker_.reset();
    return end_server_reader();
  }
  if (stop_server_reader_) return end_server_reader();
  read_server(std::move(self));
}

// `self` keeps the session alive until the client has been told.
net::awaitable<void> ClientSession::lose_server([[maybe_unused]] std::shared_ptr<ClientSession> self,
                                               std::string reason) {
  spdlog::warn("session {}: server connection for service {} lost: {}", peer_, service_->config.name, reason);
  release_server(false);
  closing_ = true;
  Buffer out;
  protocol::append_error_response(out, protocol::Severity::fatal, "08006",
                                  "pgsluice: server connection lost (" + reason + ")");
  co_await write_client(out);
  net::error_code ignored;
  stream_.socket().shutdown(net::tcp::socket::shutdown_both, ignored);
  stream_.cancel();
  end_server_reader();
}

net::awaitable<void> ClientSession::finish() { co_await stop_server_reader(); }

net::awaitable<void> ClientSession::stop_server_reader() {
  if (!server_reader_running_) co_return;
  stop_server_reader_ = true;
  if (server_held_for_listener_) {
    // No read is under way: the relay waits for the listener connection's round trip.
    server_held_for_listener_ = false;
    ++listener_hold_generation_;
    end_server_reader();
  } else if (server_) {
    server_->stream().cancel();
  }
  while (server_reader_running_) co_await server_reader_done_.wait();
}

net::awaitable<void> ClientSession::finish_server() {
  co_await stop_server_reader();
  if (!server_) co_return;
  const auto timeout = server_->target().connect_timeout;
  const bool settled = expected_ready_ == 0 && !in_extended_batch_ && (!tracker_ || tracker_->idle()) && server_->buffer().empty();
  bool reusable = settled;
  if (settled && transaction_status_ != 'I') {
    // The client left inside a transaction: roll it back and keep the connection.
    reusable = co_await server_->run_discarding("ROLLBACK", timeout);
  }
  if (reusable && (service_->config.mode == config::PoolMode::session || (tracker_ && tracker_->pinned()))) {
    // Session mode, or a client pinned to its connection: whatever the client changed is reset
    // before the next client (DESIGN §2): its advisory locks, temporary tables, cursors, LISTENs.
    reusable = co_await server_->run_discarding("DISCARD ALL", timeout);
    server_->forget_applied_parameters();
    server_->statements().clear();
  }
  release_server(reusable);
}

}  // namespace pgsluice::session
